"""Indexes of the Kafka board's view: finished jobs by end time (``purge`` takes the oldest),
and the pick of the best claimable jobs from the partitions' ready heaps (``claim_next``)."""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterator
from typing import Any

from aioconductor._backends.kafka.records import claimable

__all__ = ["Ended", "Ready", "best_ready"]

#: A ready heap's entry: (-priority, seq, ready version, job id).
Ready = tuple[int, int, int, str]


class Ended:
    """Finished jobs of one final state by end time: a map for membership, a heap for order
    (its entries of purged jobs are dropped lazily, and all at once when they are most)."""

    __slots__ = ("heap", "live")

    def __init__(self) -> None:
        #: job id -> when it ended (``updated_at``).
        self.live: dict[str, float] = {}
        #: (ended, job id), stale entries included.
        self.heap: list[tuple[float, str]] = []

    def add(self, job_id: str, ended: float) -> None:
        """Index the job ``job_id``, which ended at ``ended``."""
        self.live[job_id] = ended
        heapq.heappush(self.heap, (ended, job_id))

    def remove(self, job_id: str) -> None:
        """Forget the job ``job_id`` (purged, or not in this state any more)."""
        if self.live.pop(job_id, None) is not None and len(self.heap) > 2 * len(self.live):
            self.heap = [(ended, job_id) for job_id, ended in self.live.items()]
            heapq.heapify(self.heap)

    def before(self, cutoff: float, limit: int) -> list[tuple[float, str]]:
        """Up to ``limit`` (ended, job id) of jobs that ended at or before ``cutoff``, oldest
        first."""
        heap, found = self.heap, list[tuple[float, str]]()
        while heap and len(found) < limit and heap[0][0] <= cutoff:
            entry = heapq.heappop(heap)
            if self.live.get(entry[1]) == entry[0]:
                found.append(entry)
        for entry in found:
            heapq.heappush(heap, entry)
        return found


def best_ready(
    heaps: list[list[Ready]],
    jobs: dict[str, dict[str, Any]],
    ready_version: dict[str, int],
    now: float,
    limit: int,
    skip: Collection[str],
    taken: set[str],
) -> Iterator[dict[str, Any]]:
    """Up to ``limit`` states of ``jobs`` claimable at ``now`` from the ready ``heaps``, best
    first, passing over ``skip`` and ``taken`` (each job picked is added to ``taken``).

    Stale entries (a job gone, not claimable, or ready again since: its ``ready_version``) are
    dropped on the way; the entries picked or passed over are back on their heaps once the
    iteration ends.
    """
    aside: list[tuple[list[Ready], Ready]] = []
    try:
        while limit > 0:
            best: list[Ready] | None = None
            for heap in heaps:
                while heap:
                    entry = heap[0]
                    data = jobs.get(entry[3])
                    if (
                        data is None
                        or ready_version.get(entry[3]) != entry[2]
                        or not claimable(data, now)
                    ):
                        heapq.heappop(heap)
                    elif entry[3] in skip or entry[3] in taken:
                        aside.append((heap, heapq.heappop(heap)))
                    else:
                        break
                if heap and (best is None or heap[0] < best[0]):
                    best = heap
            if best is None:
                return
            entry = heapq.heappop(best)
            aside.append((best, entry))
            taken.add(entry[3])
            limit -= 1
            yield jobs[entry[3]]
    finally:
        for heap, entry in aside:
            heapq.heappush(heap, entry)
