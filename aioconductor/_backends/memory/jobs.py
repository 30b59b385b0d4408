"""The memory board's jobs: a mutable record per job, and a space per namespace with the heaps
that make claims cheap. Boards hand out frozen ``Job`` copies, never these."""

from __future__ import annotations

import heapq
import itertools
import math
import operator
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from aioconductor._models import build
from aioconductor._models import build_from
from aioconductor._models import evolve
from aioconductor.boards._support import Subscription
from aioconductor.models import Claim
from aioconductor.models import ConductorInfo
from aioconductor.models import EndedCount
from aioconductor.models import Job
from aioconductor.models import JobFilter
from aioconductor.models import JobNotification
from aioconductor.models import JobState
from aioconductor.models import LimitInfo
from aioconductor.models import NotificationKind
from aioconductor.models import Outcome
from aioconductor.models import RetryPolicy
from aioconductor.models import claimable

__all__ = ["Record", "Space"]

#: A ``Job`` holds its record's fields of the same names (every field but the record's own).
_JOB_FIELDS = tuple(Job.model_fields)
_job_values = operator.attrgetter(*_JOB_FIELDS)


@dataclass(slots=True)
class Record:
    """A job's mutable state inside the board (``Job`` objects handed out are frozen copies)."""

    id: str
    name: str
    flow: str
    args: dict[str, Any]
    priority: int
    seq: int
    created_at: float
    updated_at: float
    not_before: float | None
    max_attempts: int
    attempts: int = 0
    token: int = 0
    state: JobState = JobState.UNCLAIMED
    claim: Claim | None = None
    outcome: Outcome | None = None
    result: dict[str, Any] | None = None
    trash_reason: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    releases: int = 0
    abandons: int = 0
    retries: int = 0
    retry: RetryPolicy | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    key: str | None = None
    cancel_reason: str | None = None
    limit_key: str | None = None
    #: Which entry of the ready heap is this record's live one (older entries are stale).
    ready_version: int = 0

    def to_job(self) -> Job:
        """The job as it is now, a frozen copy."""
        values = dict(zip(_JOB_FIELDS, _job_values(self), strict=True))
        # The record's own containers change later: the job gets copies.
        values["headers"] = dict(self.headers)
        values["failures"] = list(self.failures)
        return build_from(Job, values)

    def new_claim(self, owner: str, token: int, expires_at: float) -> Claim:
        """A claim of this job (flagged if the job was cancelled)."""
        return build(
            Claim,
            job_id=self.id,
            owner=owner,
            token=token,
            expires_at=expires_at,
            cancel_requested=self.cancel_reason is not None,
        )

    def matches(self, where: JobFilter, now: float) -> bool:
        """Whether the job, as readers see it at ``now``, matches ``where`` (no copy made)."""
        return where.matches(self, self.visible_state(now))

    def visible_job(self, now: float) -> Job:
        """The job as readers see it at ``now`` (a scheduled job whose time came is
        UNCLAIMED), a frozen copy."""
        job = self.to_job()
        visible = self.visible_state(now)
        return job if visible is self.state else evolve(job, state=visible)

    def visible_state(self, now: float) -> JobState:
        """The state readers see at ``now``: a scheduled job whose time came is UNCLAIMED."""
        if self.state is JobState.SCHEDULED and claimable(self, now):
            return JobState.UNCLAIMED
        return self.state


@dataclass
class Space:
    """One namespace's jobs in a memory backend, with the heaps that make claims cheap."""

    jobs: dict[str, Record] = field(default_factory=dict)
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    #: (-priority, seq, ready_version, id) of jobs that are (or were) claimable.
    ready: list[tuple[int, int, int, str]] = field(default_factory=list)
    #: (time, id) of scheduled jobs' not_before and claims' expiry: when each may turn claimable.
    timers: list[tuple[float, str]] = field(default_factory=list)
    conductors: dict[str, ConductorInfo] = field(default_factory=dict)
    subscriptions: set[Subscription] = field(default_factory=set)
    #: key -> id of the job holding it.
    keys: dict[str, str] = field(default_factory=dict)
    #: schedule name -> its last posted tick.
    ticks: dict[str, float] = field(default_factory=dict)
    #: final state -> heap of (updated_at, id) of jobs that ended in it (purged ones go stale).
    ended: dict[JobState, list[tuple[float, str]]] = field(default_factory=dict)
    #: limit key -> its concurrency limit.
    limits: dict[str, int] = field(default_factory=dict)
    #: limit key -> ids of its CLAIMED jobs (live or expired leases).
    holders: dict[str, set[str]] = field(default_factory=dict)

    def hold(self, record: Record) -> None:
        """Note that ``record`` was just claimed (it takes a slot of its limit key, if any)."""
        if record.limit_key is not None:
            self.holders.setdefault(record.limit_key, set()).add(record.id)

    def let_go(self, record: Record) -> bool:
        """Note that ``record``'s claim ended; whether it held a slot of a limit key."""
        key = record.limit_key
        if key is None:
            return False
        held = self.holders.get(key)
        if held is None or record.id not in held:
            return False
        held.discard(record.id)
        if not held:
            del self.holders[key]
        return True

    def set_limit(self, key: str, limit: int | None) -> None:
        """Store (or, with None, drop) the limit of ``key``."""
        if limit is None:
            self.limits.pop(key, None)
        else:
            self.limits[key] = limit

    def limit_infos(self, now: float) -> list[LimitInfo]:
        """Every limit with the live claims of its key at ``now``."""
        return [
            LimitInfo(key=key, limit=limit, claimed=self.live_claims(key, now))
            for key, limit in self.limits.items()
        ]

    def live_claims(self, key: str, now: float, *, besides: str | None = None) -> int:
        """How many jobs with limit key ``key`` (other than ``besides``) hold a live claim."""
        count = 0
        for job_id in self.holders.get(key, ()):
            record = self.jobs.get(job_id)
            if job_id != besides and record is not None and record.claim is not None:
                count += record.claim.expires_at > now
        return count

    def full(self, record: Record, now: float) -> bool:
        """Whether ``record``'s limit key has no slot left for it at ``now``."""
        key = record.limit_key
        if key is None or key not in self.limits:
            return False
        return self.live_claims(key, now, besides=record.id) >= self.limits[key]

    def end(self, record: Record) -> None:
        """Note that ``record`` just ended (it is ``COMPLETE`` or ``TRASHED`` now)."""
        heapq.heappush(self.ended.setdefault(record.state, []), (record.updated_at, record.id))

    def ended_before(self, cutoff: float, state: JobState, limit: int) -> list[tuple[float, str]]:
        """Up to ``limit`` (updated_at, id) of jobs that ended in ``state`` at or before
        ``cutoff``, oldest first."""
        heap = self.ended.get(state, [])
        found: list[tuple[float, str]] = []
        while heap and len(found) < limit and heap[0][0] <= cutoff:
            entry = heapq.heappop(heap)
            if entry[1] in self.jobs:
                found.append(entry)
        for entry in found:
            heapq.heappush(heap, entry)
        return found

    def newest(self, where: JobFilter, before: int | None, limit: int, now: float) -> list[Record]:
        """Up to ``limit`` records matching ``where`` with ``seq`` below ``before``, newest
        first (the jobs dict is in post order: read backwards, it is newest first)."""
        found: list[Record] = []
        for record in reversed(self.jobs.values()):
            if (before is None or record.seq < before) and record.matches(where, now):
                found.append(record)
                if len(found) == limit:
                    break
        return found

    def ended_counts(self, since: float, bucket: float) -> list[EndedCount]:
        """Jobs that ended at or after ``since``, per bucket of ``bucket`` seconds and ending."""
        counts: dict[tuple[float, str], int] = {}
        for record in self.jobs.values():
            if record.state.is_final and record.updated_at >= since:
                ending = "TRASHED" if record.state is JobState.TRASHED else str(record.outcome)
                start = math.floor(record.updated_at / bucket) * bucket
                counts[start, ending] = counts.get((start, ending), 0) + 1
        return [EndedCount(start=s, ending=e, count=n) for (s, e), n in counts.items()]

    def held_claims(self, now: float) -> dict[str, int]:
        """Live claims (``CLAIMED``, lease not run out at ``now``) by owner."""
        held: dict[str, int] = {}
        for record in self.jobs.values():
            claim = record.claim
            if record.state is JobState.CLAIMED and claim is not None and claim.expires_at > now:
                held[claim.owner] = held.get(claim.owner, 0) + 1
        return held

    def count(self, where: JobFilter, now: float) -> int:
        """How many records match ``where`` at ``now``."""
        return sum(1 for record in self.jobs.values() if record.matches(where, now))

    def delete(self, record: Record) -> None:
        """Forget ``record`` and free its key (its heap entries go stale)."""
        del self.jobs[record.id]
        if record.key is not None and self.keys.get(record.key) == record.id:
            del self.keys[record.key]

    def make_ready(self, record: Record) -> None:
        """Put ``record`` on the ready heap (its older entries there go stale)."""
        record.ready_version += 1
        heapq.heappush(self.ready, (-record.priority, record.seq, record.ready_version, record.id))

    def promote(self, now: float) -> None:
        """Move jobs whose timer has come into the ready heap, and announce them."""
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, job_id = heapq.heappop(timers)
            record = self.jobs.get(job_id)
            if record is not None and record.state in _TIMED and claimable(record, now):
                self.make_ready(record)
                expired = record.state is JobState.CLAIMED
                kind = NotificationKind.EXPIRED if expired else NotificationKind.DUE
                self.notify(
                    build(JobNotification, job_id=record.id, kind=kind, priority=record.priority)
                )

    def next_timer(self) -> float | None:
        """When the earliest timer falls due (board time), or None."""
        return self.timers[0][0] if self.timers else None

    def notify(self, note: JobNotification) -> None:
        """Push ``note`` to every stream on this namespace, whichever board object opened it."""
        for subscription in self.subscriptions:
            subscription.push(note)


_TIMED = (JobState.SCHEDULED, JobState.CLAIMED)
