"""The Kafka board's fold: every board instance replays the state topic into this view.

The state topic is one partition, so every instance reads the same records in the same order.
Each record names a job (its key), the version of the job it was computed from (``base``) and
the job's full resulting state. The fold accepts a record only when its base is the version the
view holds (first writer wins in log order; a claim must also find the job claimable at the
record's timestamp), so every instance accepts and rejects the same records and holds the same
jobs. Nothing here does I/O: ``apply`` is a pure function of the records seen, plus the indexes
(ready heaps per jobs-topic partition, timers) that make ``claim_next`` cheap.

Compaction keeps only the last record of a key. A record that carries the job's whole state is a
correct starting point on its own, so the fold accepts any record for a job it has not seen (a
compacted log starts there). That is only right if the last record of every key was *accepted*:
the view marks a job ``dirty`` when its newest record was rejected, and the board re-publishes
the current state of dirty jobs (a ``restate`` record, which changes nothing) until it is clean.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

from aioconductor._backends.kafka.records import holds
from aioconductor._models import build
from aioconductor.boards._support import lost_message
from aioconductor.errors import ClaimLost
from aioconductor.errors import JobNotFound
from aioconductor.models import Claim
from aioconductor.models import ConductorInfo
from aioconductor.models import Job
from aioconductor.models import JobNotification
from aioconductor.models import JobState
from aioconductor.models import NotificationKind
from aioconductor.models import Outcome
from aioconductor.models import RetryPolicy

__all__ = [
    "CONDUCTOR_PREFIX",
    "SYNC_KEY",
    "Applied",
    "JobView",
    "claimable",
    "to_job",
    "visible_state",
]

#: The key of barrier records (``sync``): compacted to one, never a job.
SYNC_KEY = "~sync"
#: Keys of conductor registrations start with this (a job id is a uuid, never this).
CONDUCTOR_PREFIX = "~conductor:"

_FINAL = ("COMPLETE", "TRASHED")
_TIMED = ("SCHEDULED", "CLAIMED")


def claimable(data: dict[str, Any], now: float) -> bool:
    """Whether the job state ``data`` can be claimed at ``now`` (epoch seconds)."""
    state = data["state"]
    if state == "UNCLAIMED":
        return True
    if state == "SCHEDULED":
        not_before = data["not_before"]
        return not_before is None or not_before <= now
    if state == "CLAIMED":
        return bool(data["expires_at"] <= now)
    return False


def visible_state(data: dict[str, Any], now: float) -> str:
    """The state readers see at ``now``: a scheduled job whose time came is UNCLAIMED."""
    state: str = data["state"]
    if state == "SCHEDULED" and claimable(data, now):
        return "UNCLAIMED"
    return state


def to_job(data: dict[str, Any], now: float | None = None) -> Job:
    """A ``Job`` from a state dict (its state as seen at ``now``, when given).

    The counters, retry policy and failures default to a fresh job's: state records written
    before the board kept them have none.
    """
    owner = data["owner"]
    claim = None
    if owner is not None:
        claim = build(
            Claim,
            job_id=data["id"],
            owner=owner,
            token=data["token"],
            expires_at=data["expires_at"],
        )
    outcome = data["outcome"]
    retry = data.get("retry")
    state = data["state"] if now is None else visible_state(data, now)
    return build(
        Job,
        id=data["id"],
        name=data["name"],
        flow=data["flow"],
        args=data["args"],
        headers=data.get("headers") or {},
        priority=data["priority"],
        seq=data["seq"],
        created_at=data["created_at"],
        updated_at=data["updated_at"],
        not_before=data["not_before"],
        attempts=data["attempts"],
        max_attempts=data["max_attempts"],
        state=JobState(state),
        claim=claim,
        outcome=None if outcome is None else Outcome(outcome),
        result=data["result"],
        trash_reason=data["trash_reason"],
        releases=data.get("releases", 0),
        abandons=data.get("abandons", 0),
        retries=data.get("retries", 0),
        retry=None if retry is None else RetryPolicy.model_validate(retry),
        failures=list(data.get("failures", ())),
    )


class Applied:
    """What the fold made of one of this instance's own records."""

    __slots__ = ("accepted", "data")

    def __init__(self, accepted: bool, data: dict[str, Any] | None) -> None:
        self.accepted = accepted
        #: The job's state after the record (the winner's state when it was rejected).
        self.data = data


class JobView:
    """The jobs and conductors of one namespace, folded from its state topic.

    Args:
        notify: called with a notification when a job becomes claimable.
    """

    def __init__(self, notify: Callable[[JobNotification], None]) -> None:
        self._notify = notify
        #: job id -> state dict (with ``version`` and ``partition``).
        self.jobs: dict[str, dict[str, Any]] = {}
        self.conductors: dict[str, dict[str, Any]] = {}
        #: The offset the next record will have (everything before it is applied).
        self.next_offset = 0
        #: rids of records this instance produced and waits for -> what the fold made of them.
        self.mine: dict[str, Applied | None] = {}
        #: job id -> (monotonic time it turned dirty, whether our own record was rejected).
        self.dirty: dict[str, tuple[float, bool]] = {}
        #: partition -> heap of (-priority, seq, ready version, id) of claimable jobs.
        self._ready: dict[int, list[tuple[int, int, int, str]]] = {}
        self._ready_version: dict[str, int] = {}
        #: (time, id): when a scheduled job falls due or a lease expires.
        self._timers: list[tuple[float, str]] = []

    # -- the fold ------------------------------------------------------------------------------

    def apply(self, offset: int, key: bytes | None, value: bytes | None, ts_ms: int) -> None:
        """Fold one record of the state topic (a malformed one is skipped, on every instance)."""
        self.next_offset = offset + 1
        if key is None or value is None:
            return
        try:
            record = json.loads(value)
            job_key = key.decode("utf-8")
            op = record["op"]
        except (ValueError, KeyError, TypeError):
            return
        if op == "sync":
            return
        if job_key.startswith(CONDUCTOR_PREFIX):
            self._apply_conductor(job_key[len(CONDUCTOR_PREFIX) :], op, record)
            return
        rid = record.get("rid")
        accepted = self._apply_job(job_key, op, record, offset, ts_ms / 1000)
        if accepted:
            self.dirty.pop(job_key, None)
        elif job_key in self.jobs:
            # The newest record of this key lost: after compaction it would be the only one
            # left, so the job must be restated (see the module docstring).
            previous = self.dirty.get(job_key)
            since = previous[0] if previous else time.monotonic()
            self.dirty[job_key] = (since, rid in self.mine or bool(previous and previous[1]))
        if rid in self.mine and self.mine[rid] is None:
            # The first copy counts: a producer retry (without idempotence) can append a
            # record twice, and the copy is rejected because the first one was applied.
            self.mine[rid] = Applied(accepted, self.jobs.get(job_key))

    def _apply_job(
        self, job_id: str, op: str, record: dict[str, Any], offset: int, now: float
    ) -> bool:
        new = record.get("job")
        if not isinstance(new, dict) or new.get("id") != job_id:
            return False
        current = self.jobs.get(job_id)
        if op == "post":
            if current is not None:
                return False
            # Post order is the post record's place in the one-partition log.
            new["seq"] = offset + 1
        elif current is not None:
            if record.get("base") != current["version"]:
                return False
            if op == "restate":
                return True
            if op == "claim" and not claimable(current, now):
                return False
        # else: a compacted log starts with this record, which holds the whole state.
        self.jobs[job_id] = new
        self._index(new, op)
        return True

    def _apply_conductor(self, owner: str, op: str, record: dict[str, Any]) -> None:
        if op == "unregister":
            self.conductors.pop(owner, None)
        elif op == "register" and isinstance(record.get("info"), dict):
            self.conductors[owner] = record["info"]

    # -- indexes -------------------------------------------------------------------------------

    def _index(self, data: dict[str, Any], op: str) -> None:
        state = data["state"]
        if state == "UNCLAIMED":
            self._make_ready(data)
            kind = NotificationKind.POSTED if op == "post" else NotificationKind.ABANDONED
            if op in ("post", "abandon", "release"):
                self._notify(
                    build(JobNotification, job_id=data["id"], kind=kind, priority=data["priority"])
                )
        elif state == "SCHEDULED" and data["not_before"] is not None:
            heapq.heappush(self._timers, (data["not_before"], data["id"]))
        elif state == "CLAIMED":
            heapq.heappush(self._timers, (data["expires_at"], data["id"]))

    def _make_ready(self, data: dict[str, Any]) -> None:
        job_id = data["id"]
        version = self._ready_version.get(job_id, 0) + 1
        self._ready_version[job_id] = version
        heap = self._ready.setdefault(data["partition"], [])
        heapq.heappush(heap, (-data["priority"], data["seq"], version, job_id))

    def promote(self, now: float) -> None:
        """Make jobs whose delay passed or lease expired ready, and announce them."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, job_id = heapq.heappop(timers)
            data = self.jobs.get(job_id)
            if data is None or data["state"] not in _TIMED or not claimable(data, now):
                continue
            deadline = data["expires_at"] if data["state"] == "CLAIMED" else data["not_before"]
            if when != deadline:
                # A timer of an earlier state (the lease of a claim that was retried): the
                # current deadline has a timer of its own, which announces the job once.
                continue
            self._make_ready(data)
            expired = data["state"] == "CLAIMED"
            self._notify(
                build(
                    JobNotification,
                    job_id=job_id,
                    kind=NotificationKind.EXPIRED if expired else NotificationKind.DUE,
                    priority=data["priority"],
                )
            )

    def next_timer(self) -> float | None:
        """When the earliest delay or lease falls due (epoch seconds), if any."""
        return self._timers[0][0] if self._timers else None

    def candidates(
        self,
        now: float,
        limit: int,
        prefer: Collection[int],
        skip: Collection[str],
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` claimable jobs in claim order, from the ``prefer`` partitions first
        (the ones this instance's consumer-group member holds), then from any partition."""
        self.promote(now)
        picked: list[dict[str, Any]] = []
        taken: set[str] = set()
        for partitions in (prefer, None):
            picked.extend(self._best(now, limit - len(picked), partitions, skip, taken))
            if len(picked) >= limit:
                break
        return picked

    def _best(
        self,
        now: float,
        limit: int,
        partitions: Collection[int] | None,
        skip: Collection[str],
        taken: set[str],
    ) -> Iterator[dict[str, Any]]:
        heaps = [
            heap
            for partition, heap in self._ready.items()
            if partitions is None or partition in partitions
        ]
        # Entries set aside (skipped or taken) go back on their heap afterwards.
        aside: list[tuple[list[tuple[int, int, int, str]], tuple[int, int, int, str]]] = []
        try:
            while limit > 0:
                best: list[tuple[int, int, int, str]] | None = None
                for heap in heaps:
                    while heap:
                        entry = heap[0]
                        data = self.jobs.get(entry[3])
                        if (
                            data is None
                            or self._ready_version.get(entry[3]) != entry[2]
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
                yield self.jobs[entry[3]]
        finally:
            for heap, entry in aside:
                heapq.heappush(heap, entry)

    # -- reads ---------------------------------------------------------------------------------

    def select(self, state: JobState | None, now: float) -> list[dict[str, Any]]:
        """Jobs (in ``state`` as readers see it at ``now``) in claim order."""
        wanted = None if state is None else state.value
        found = [
            data
            for data in self.jobs.values()
            if wanted is None or visible_state(data, now) == wanted
        ]
        found.sort(key=lambda data: (-data["priority"], data["seq"]))
        return found

    def waiting(self, now: float) -> list[JobNotification]:
        """A ``WAITING`` notification of every job claimable at ``now``, in claim order."""
        found = [data for data in self.jobs.values() if claimable(data, now)]
        found.sort(key=lambda data: (-data["priority"], data["seq"]))
        kind = NotificationKind.WAITING
        return [
            build(JobNotification, job_id=data["id"], kind=kind, priority=data["priority"])
            for data in found
        ]

    def job(self, job_id: str) -> dict[str, Any]:
        """The job's state.

        Raises:
            JobNotFound: the view does not know it.
        """
        data = self.jobs.get(job_id)
        if data is None:
            raise JobNotFound(f"no job {job_id!r} on this board")
        return data

    def held(self, claim: Claim, verb: str) -> dict[str, Any]:
        """The state of the job ``claim`` holds, for ``verb`` to change.

        Raises:
            JobNotFound: the view does not know the job.
            ClaimLost: ``claim`` is not the job's current claim.
        """
        data = self.job(claim.job_id)
        if not holds(data, claim):
            job = to_job(data)
            raise ClaimLost(lost_message(claim, verb, job.state, job.claim))
        return data

    def is_final(self, job_id: str) -> bool | None:
        """Whether the job is finished (None if this view does not know it)."""
        data = self.jobs.get(job_id)
        return None if data is None else data["state"] in _FINAL

    def alive_conductors(self, now: float) -> list[ConductorInfo]:
        """Conductors whose heartbeat has not expired at ``now``."""
        return [
            ConductorInfo(
                owner=info["owner"],
                name=info["name"],
                started_at=info["started_at"],
                heartbeat_at=info["heartbeat_at"],
                expires_at=info["expires_at"],
                meta=dict(info["meta"]),
            )
            for info in self.conductors.values()
            if info["expires_at"] > now
        ]
