"""Indexes of the Kafka board's view: finished jobs by end time (``purge`` takes the oldest),
the pick of the best claimable jobs from the partitions' ready heaps (``claim_next``), and the
offsets the view skipped (which records of unknown jobs it may accept)."""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Collection, Iterator
from typing import Any

from aioconductor._backends.kafka.limits import Quota
from aioconductor._backends.kafka.records import TIMED
from aioconductor._backends.kafka.records import claimable

__all__ = ["Ended", "Gaps", "Ready", "best_ready", "trim"]

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
    quota: Quota | None = None,
) -> Iterator[dict[str, Any]]:
    """Up to ``limit`` states of ``jobs`` claimable at ``now`` from the ready ``heaps``, best
    first, passing over ``skip``, ``taken`` (each job picked is added to ``taken``) and, with a
    ``quota``, the jobs whose limit key has no slot left (each job picked takes one).

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
                    elif (
                        entry[3] in skip
                        or entry[3] in taken
                        or (quota is not None and not quota.admits(data))
                    ):
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
            if quota is not None:
                quota.take(jobs[entry[3]])
            yield jobs[entry[3]]
    finally:
        for heap, entry in aside:
            heapq.heappush(heap, entry)


def trim(
    ready: dict[int, list[Ready]],
    ready_version: dict[str, int],
    timers: list[tuple[float, str]],
    jobs: dict[str, dict[str, Any]],
) -> list[tuple[float, str]]:
    """Drop the entries of purged and finished jobs from the ``ready`` heaps (in place) and
    the ``timers`` (the timers kept are returned) once they are most of them, so memory
    follows the ``jobs`` held."""
    bound = 2 * len(jobs) + 64
    if sum(len(heap) for heap in ready.values()) > bound:
        for partition, heap in list(ready.items()):
            kept = [e for e in heap if ready_version.get(e[3]) == e[2]]
            if kept:
                heapq.heapify(kept)
                ready[partition] = kept
            else:
                del ready[partition]
    if len(timers) > bound:
        timers = [t for t in timers if jobs.get(t[1], {}).get("state") in TIMED]
        heapq.heapify(timers)
    return timers


class Gaps:
    """The offsets of the state topic a view skipped (compaction removed them), less the post
    records in them of jobs the view has held since (it knows their history from then on).

    The view asks only about post records (a job's ``seq - 1``), so two gaps with no post
    record read between them are kept as one range: the ranges grow with the post records
    read amid gaps, and only while the view replays a compacted log (a live reader skips
    nothing). The forgotten offsets grow with the jobs it started from a compacted record.
    """

    __slots__ = ("_ends", "_forgotten", "_split", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        #: Whether a post record was read since the last gap.
        self._split = False
        self._forgotten: set[int] = set()

    @property
    def end(self) -> int:
        """The offset after the last gap (0 if none)."""
        return self._ends[-1] if self._ends else 0

    def skip(self, start: int, end: int) -> None:
        """Note that the offsets from ``start`` to ``end`` (excluded) were skipped."""
        if self._ends and not self._split:
            self._ends[-1] = end
        else:
            self._starts.append(start)
            self._ends.append(end)
        self._split = False

    def read_post(self) -> None:
        """Note that a post record was read (at the offset after every gap so far)."""
        self._split = True

    def skipped(self, offset: int) -> bool:
        """Whether the post record at ``offset`` lies in a gap, and its job was never held."""
        i = bisect_right(self._starts, offset) - 1
        return i >= 0 and offset < self._ends[i] and offset not in self._forgotten

    def forget(self, offset: int) -> None:
        """Note that the job whose post record is at ``offset`` was held, and is no more."""
        if self.skipped(offset):
            self._forgotten.add(offset)

    def sizes(self) -> tuple[int, int]:
        """How many ranges, and forgotten offsets, this holds."""
        return len(self._starts), len(self._forgotten)
