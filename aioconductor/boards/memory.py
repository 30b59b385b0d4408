"""`MemoryJobBoard`: jobs in this process's memory. The embedded default and the reference.

``memory://`` opens a private board; ``memory://NAME`` opens the process-wide backend called NAME,
shared by every board opened with that URL (each ``?namespace=`` its own space), so several
conductors in one process can share jobs.

Every verb starts with a checkpoint, so cancellation reaches it where it would reach a networked
board, and never after its change was made.
"""

from __future__ import annotations

import contextlib
import heapq
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from anyio.lowlevel import checkpoint

from aioconductor._backends.base import sweep_delay
from aioconductor._backends.memory.backend import InMemory
from aioconductor._backends.memory.backend import open_backend
from aioconductor._backends.memory.jobs import Record
from aioconductor._backends.memory.searching import MemorySearching
from aioconductor._models import build
from aioconductor._models import evolve
from aioconductor.boards.base import EncodedObject
from aioconductor.boards.base import JobBoard
from aioconductor.boards.base import PostSpec
from aioconductor.boards.base import Subscription
from aioconductor.boards.base import lost_message
from aioconductor.boards.base import unclaimable_message
from aioconductor.errors import ClaimLost
from aioconductor.errors import JobNotFound
from aioconductor.errors import UnclaimableJob
from aioconductor.models import MAX_KEPT_FAILURES
from aioconductor.models import Claim
from aioconductor.models import ConductorInfo
from aioconductor.models import Job
from aioconductor.models import JobNotification
from aioconductor.models import JobState
from aioconductor.models import LimitInfo
from aioconductor.models import NotificationKind
from aioconductor.models import Outcome
from aioconductor.models import claimable

__all__ = ["MemoryJobBoard"]


class MemoryJobBoard(InMemory, MemorySearching, JobBoard):
    """A job board in this process's memory: no I/O, no durability, the reference semantics.

    Args:
        backend_name: share the backend of that name with every board opened with it; a
            private backend when None.
        clock: the board's clock (epoch seconds); tests may pass a fake one.
        **kwargs: see :class:`~aioconductor.boards.base.JobBoard`.
    """

    def __init__(
        self,
        *,
        backend_name: str | None = None,
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._space = open_backend(backend_name).space(self.namespace)
        self._clock: Callable[[], float] = clock

    # -- helpers -------------------------------------------------------------------------------

    def _visible_job(self, record: Record) -> Job:
        return record.visible_job(self._clock())

    def _record(self, job_id: str) -> Record:
        try:
            return self._space.jobs[job_id]
        except KeyError:
            raise JobNotFound(f"no job {job_id!r} on this board") from None

    def _current(self, claim: Claim, verb: str) -> Record:
        record = self._record(claim.job_id)
        current = record.claim
        if (
            record.state is not JobState.CLAIMED
            or current is None
            or current.owner != claim.owner
            or current.token != claim.token
        ):
            raise ClaimLost(lost_message(claim, verb, record.state, current))
        return record

    def _take(self, record: Record, owner: str, lease: float, now: float) -> Job:
        record.attempts += 1
        record.token += 1
        record.state = JobState.CLAIMED
        record.claim = record.new_claim(owner, record.token, now + lease)
        record.updated_at = now
        heapq.heappush(self._space.timers, (now + lease, record.id))
        self._space.hold(record)
        return record.to_job()

    def _let_go(self, record: Record) -> None:
        """The claim of ``record`` ended: free its limit slot, and say so."""
        if self._space.let_go(record):
            self._publish(record, NotificationKind.SLOT_FREED)

    def _publish(self, record: Record, kind: NotificationKind) -> None:
        note = build(JobNotification, job_id=record.id, kind=kind, priority=record.priority)
        self._space.notify(note)

    # -- primitives ----------------------------------------------------------------------------

    async def _post(self, spec: PostSpec) -> Job:
        await checkpoint()
        return self._insert(spec)

    async def _post_tick(self, schedule: str, tick: float, spec: PostSpec) -> Job | None:
        await checkpoint()
        ticks = self._space.ticks
        last = ticks.get(schedule)
        if last is not None and last >= tick:
            return None
        ticks[schedule] = tick
        return self._insert(spec)

    async def _schedule_ticks(self) -> dict[str, float]:
        await checkpoint()
        return dict(self._space.ticks)

    def _insert(self, spec: PostSpec) -> Job:
        space = self._space
        if spec.key is not None and spec.key in space.keys:
            return self._visible_job(space.jobs[space.keys[spec.key]])
        now = self._clock()
        not_before = spec.not_before
        if spec.delay:
            not_before = now + spec.delay
        scheduled = not_before is not None and not_before > now
        record = Record(
            id=spec.id,
            name=spec.name,
            flow=spec.flow,
            args=spec.args,
            priority=spec.priority,
            seq=next(space.seq),
            created_at=now,
            updated_at=now,
            not_before=not_before,
            max_attempts=spec.max_attempts,
            state=JobState.SCHEDULED if scheduled else JobState.UNCLAIMED,
            headers=spec.headers,
            retry=spec.retry,
            key=spec.key,
            limit_key=spec.limit_key,
        )
        space.jobs[record.id] = record
        if spec.key is not None:
            space.keys[spec.key] = record.id
        if scheduled:
            assert not_before is not None
            heapq.heappush(space.timers, (not_before, record.id))
        else:
            space.make_ready(record)
            self._publish(record, NotificationKind.POSTED)
        return record.to_job()

    async def _claim(self, job_id: str, owner: str, lease: float) -> Job:
        await checkpoint()
        record = self._record(job_id)
        now = self._clock()
        if not claimable(record, now):
            raise UnclaimableJob(unclaimable_message(record.to_job(), now))
        if self._space.full(record, now):
            key = record.limit_key
            raise UnclaimableJob(f"job {job_id} waits for a slot: limit key {key!r} is full")
        return self._take(record, owner, lease, now)

    async def _claim_next(self, owner: str, lease: float) -> Job | None:
        await checkpoint()
        space = self._space
        now = self._clock()
        space.promote(now)
        ready = space.ready
        passed_over: list[tuple[int, int, int, str]] = []
        try:
            while ready:
                entry = heapq.heappop(ready)
                record = space.jobs.get(entry[3])
                if record is None or record.ready_version != entry[2]:
                    continue
                if not claimable(record, now):
                    continue
                if space.full(record, now):
                    passed_over.append(entry)  # claimable once a slot of its key is free
                    continue
                return self._take(record, owner, lease, now)
            return None
        finally:
            for entry in passed_over:
                heapq.heappush(ready, entry)

    async def _renew(self, claim: Claim, lease: float) -> Claim:
        await checkpoint()
        record = self._current(claim, "renew")
        now = self._clock()
        assert record.claim is not None
        if record.claim.expires_at <= now and self._space.full(record, now):
            raise ClaimLost(
                f"renew of job {record.id} by {claim.owner!r} refused: its lease ran out and "
                f"its limit key {record.limit_key!r} is full"
            )
        record.claim = record.new_claim(claim.owner, claim.token, now + lease)
        record.updated_at = now
        heapq.heappush(self._space.timers, (now + lease, record.id))
        return record.claim

    async def _consume(
        self, claim: Claim, outcome: Outcome, result: dict[str, Any], result_json: bytes
    ) -> Job:
        await checkpoint()
        record = self._current(claim, "consume")
        record.state = JobState.COMPLETE
        record.outcome = outcome
        record.result = result
        record.updated_at = self._clock()
        self._space.end(record)
        self._let_go(record)
        return record.to_job()

    async def _abandon(self, claim: Claim) -> Job:
        await checkpoint()
        record = self._current(claim, "abandon")
        record.abandons += 1
        return self._give_back(record)

    async def _release(self, claim: Claim) -> Job:
        await checkpoint()
        record = self._current(claim, "release")
        if record.releases < record.max_attempts:
            record.releases += 1
            record.attempts -= 1
        else:
            record.abandons += 1
        return self._give_back(record)

    def _give_back(self, record: Record) -> Job:
        record.state = JobState.UNCLAIMED
        record.claim = None
        record.updated_at = self._clock()
        self._space.let_go(record)  # the ABANDONED notification announces the free slot
        self._space.make_ready(record)
        self._publish(record, NotificationKind.ABANDONED)
        return record.to_job()

    async def _retry(self, claim: Claim, delay: float, failure: EncodedObject | None) -> Job:
        await checkpoint()
        record = self._current(claim, "retry")
        now = self._clock()
        if failure is not None:
            record.failures = [*record.failures, failure.value][-MAX_KEPT_FAILURES:]
        self._let_go(record)
        record.updated_at = now
        if record.cancel_reason is not None:
            return self._end_cancelled(record)
        record.attempts -= 1
        record.retries += 1
        record.state = JobState.SCHEDULED
        record.claim = None
        record.not_before = now + delay
        record.updated_at = now
        heapq.heappush(self._space.timers, (record.not_before, record.id))
        return record.to_job()

    async def _trash(self, job_id: str, claim: Claim | None, reason: str) -> Job:
        await checkpoint()
        if claim is not None:
            record = self._current(claim, "trash")
        else:
            record = self._record(job_id)
            if record.state.is_final:
                raise UnclaimableJob(
                    f"job {job_id} is already {record.state}: it cannot be trashed"
                )
        record.state = JobState.TRASHED
        record.trash_reason = reason
        record.updated_at = self._clock()
        self._space.end(record)
        self._let_go(record)
        return record.to_job()

    async def _cancel(self, job_id: str, reason: str) -> Job:
        await checkpoint()
        record = self._record(job_id)
        if record.state.is_final or record.cancel_reason is not None:
            return self._visible_job(record)
        record.cancel_reason = reason
        record.updated_at = self._clock()
        if record.state is JobState.CLAIMED:
            assert record.claim is not None
            record.claim = record.claim.model_copy(update={"cancel_requested": True})
            self._publish(record, NotificationKind.CANCEL)
            return record.to_job()
        record.claim = None
        return self._end_cancelled(record)

    def _end_cancelled(self, record: Record) -> Job:
        record.state = JobState.COMPLETE
        record.outcome = Outcome.CANCELLED
        record.result = {}
        self._space.end(record)
        return record.to_job()

    async def _set_limit(self, key: str, limit: int | None) -> None:
        await checkpoint()
        self._space.set_limit(key, limit)

    async def _limits(self) -> list[LimitInfo]:
        await checkpoint()
        return self._space.limit_infos(self._clock())

    async def _get(self, job_id: str) -> Job:
        await checkpoint()
        return self._visible_job(self._record(job_id))

    async def _get_by_key(self, key: str) -> Job:
        await checkpoint()
        job_id = self._space.keys.get(key)
        if job_id is None:
            raise JobNotFound(f"no job holds the key {key!r} on this board")
        return self._visible_job(self._space.jobs[job_id])

    async def _purgeable(
        self, older_than: float, states: tuple[JobState, ...], limit: int
    ) -> list[str]:
        await checkpoint()
        cutoff = self._clock() - older_than
        found = [e for state in states for e in self._space.ended_before(cutoff, state, limit)]
        return [job_id for _, job_id in sorted(found)[:limit]]

    async def _purge(self, job_ids: list[str]) -> int:
        await checkpoint()
        space = self._space
        deleted = 0
        for job_id in job_ids:
            record = space.jobs.get(job_id)
            if record is not None and record.state.is_final:
                space.delete(record)
                deleted += 1
        return deleted

    def _select(self, state: JobState | None) -> list[Record]:
        now = self._clock()
        records = [
            r for r in self._space.jobs.values() if state is None or r.visible_state(now) is state
        ]
        records.sort(key=lambda r: (-r.priority, r.seq))
        return records

    async def _iterjobs(self, state: JobState | None) -> AsyncIterator[Job]:
        now = self._clock()
        for record in self._select(state):
            await checkpoint()
            job = record.to_job()
            visible = record.visible_state(now)
            yield job if visible is record.state else evolve(job, state=visible)

    async def _job_count(self, state: JobState | None) -> int:
        await checkpoint()
        if state is None:
            return len(self._space.jobs)
        return len(self._select(state))

    # -- notifications -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _subscribe(self) -> AsyncIterator[Subscription]:
        async with self._local_subscription() as subscription:
            # Pushes come from every board on this backend, not only this object.
            self._subscriptions.discard(subscription)
            self._space.subscriptions.add(subscription)
            try:
                yield subscription
            finally:
                self._space.subscriptions.discard(subscription)

    async def _sweep(self, cursor: Any) -> tuple[list[JobNotification], Any]:
        await checkpoint()
        now = self._clock()
        space = self._space
        # Jobs whose timer came are announced to every subscriber, this stream included.
        space.promote(now)
        records: list[Record] = []
        if cursor is None:
            records = [r for r in space.jobs.values() if claimable(r, now)]
            records.sort(key=lambda r: (-r.priority, r.seq))
        notes = [
            build(JobNotification, job_id=r.id, kind=NotificationKind.WAITING, priority=r.priority)
            for r in records
        ]
        return notes, now

    def _sweep_delay(self) -> float:
        # The memory board knows its next deadline, so a delayed job or an expired lease is
        # announced when it happens rather than at the next poll.
        return sweep_delay(self.poll_interval, self._space.next_timer(), self._clock())

    # -- conductors ----------------------------------------------------------------------------

    async def _register_conductor(
        self, owner: str, name: str, ttl: float, meta: dict[str, Any]
    ) -> None:
        await checkpoint()
        now = self._clock()
        previous = self._space.conductors.get(owner)
        self._space.conductors[owner] = ConductorInfo(
            owner=owner,
            name=name,
            started_at=previous.started_at if previous else now,
            heartbeat_at=now,
            expires_at=now + ttl,
            meta=meta,
        )

    async def _unregister_conductor(self, owner: str) -> None:
        await checkpoint()
        self._space.conductors.pop(owner, None)

    async def _conductors(self) -> list[ConductorInfo]:
        await checkpoint()
        now = self._clock()
        return [info for info in self._space.conductors.values() if info.expires_at > now]
