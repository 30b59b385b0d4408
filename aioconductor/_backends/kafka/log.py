"""The Kafka board's state log: write a transition, wait until the view folded it, read.

One producer writes every record (``acks="all"``); the :class:`StateReader` fetches the state
topic's only partition into the :class:`JobView`. There is no reader task: whoever needs the
view to reach an offset catches up with short fetches of its own (``catch_up``), and a
``stream()`` waiting for notifications long-polls (see :mod:`.reader`). A linearizable read
appends a ``sync`` record and waits until the view applied it (``sync``): it sees every record
acknowledged before it started. Concurrent reads share one sync record.

A transition is written by :meth:`StateLog.change`: the job's new state, computed from the
version the view holds, with that version as the record's ``base``; a record that lost a race is
computed again from the winner's state. A purge writes a tombstone per finished job and
counts the jobs the view then forgot on account of its own tombstones. A schedule's tick is one
record (``tick``), and its poster restates what the fold then marked (see the view).

Tansu's ListOffsets answers the base offset of the newest batch plus one, not the end of the
log, so end offsets are not used as a read barrier.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import anyio
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from anyio.lowlevel import checkpoint

from aioconductor._backends.base import map_exceptions
from aioconductor._backends.kafka.reader import StateReader
from aioconductor._backends.kafka.records import FINAL
from aioconductor._backends.kafka.records import Write
from aioconductor._backends.kafka.records import clock_ms
from aioconductor._backends.kafka.records import encode
from aioconductor._backends.kafka.records import transition
from aioconductor._backends.kafka.setup import errors
from aioconductor._backends.kafka.view import SCHEDULE_PREFIX
from aioconductor._backends.kafka.view import SYNC_KEY
from aioconductor._backends.kafka.view import Applied
from aioconductor._backends.kafka.view import JobView
from aioconductor.errors import BackendUnavailable
from aioconductor.errors import BoardError

__all__ = ["RETRIES", "Make", "StateLog", "Write"]

logger = logging.getLogger("aioconductor.boards.kafka")

#: How long a dirty job waits before anyone restates it (its loser restates it sooner).
RESTATE_GRACE = 5.0
RESTATE_GRACE_MINE = 0.2
#: How often one verb re-reads and retries after its record lost a race.
RETRIES = 50

#: A transition: the job's new state from its current one and the time (epoch seconds).
Make = Callable[[dict[str, Any], float], dict[str, Any]]


class _Ticket:
    """One sync record, shared by the reads that started before it was sent."""

    def __init__(self) -> None:
        self.sent = False
        self.ok = False
        self.done = anyio.Event()


@dataclass(eq=False)
class StateLog:
    """The producer, the state-topic reader and the view of one board instance.

    Args:
        producer: a started producer (shared with the board's other topics).
        reader: the state topic's reader (started by :meth:`start`); the log writes to its
            topic and folds into its view.
    """

    producer: AIOKafkaProducer
    reader: StateReader
    _next_sync: _Ticket | None = field(init=False, default=None)

    @property
    def view(self) -> JobView:
        """The fold the records go into (the reader's)."""
        return self.reader.view

    @property
    def topic(self) -> str:
        """The state topic (one partition)."""
        return self.reader.topic

    @property
    def url(self) -> str:
        """The broker URL for messages."""
        return self.reader.url

    async def start(self) -> None:
        """Start the reader at the beginning of the state topic (the view is rebuilt)."""
        await self.reader.start()

    async def stop(self) -> None:
        """Stop the reader."""
        await self.reader.stop()

    @property
    def closed(self) -> bool:
        """Whether the reader is stopped."""
        return self.reader.closed

    # -- reading the log -----------------------------------------------------------------------

    async def pull(self, wait: float) -> bool:
        """Fold what the log has, waiting up to ``wait`` s for news; whether the view moved
        (see :meth:`StateReader.pull`)."""
        return await self.reader.pull(wait)

    async def catch_up(self, offset: int) -> None:
        """Return once the view has applied the record at ``offset``.

        Raises:
            BackendUnavailable: it did not get there within ``CATCH_UP_TIMEOUT``.
        """
        await self.reader.catch_up(offset)

    async def sync(self) -> None:
        """Return once the view holds every record acknowledged before this call started."""
        while True:
            ticket = self._next_sync
            if ticket is None or ticket.sent:
                ticket = self._next_sync = _Ticket()
                # Let the reads that start meanwhile share this sync record.
                await checkpoint()
                ticket.sent = True
                if self._next_sync is ticket:
                    self._next_sync = None
                try:
                    offsets = await self._send([Write(SYNC_KEY, {"op": "sync"}, clock_ms())])
                    await self.catch_up(offsets[0])
                    ticket.ok = True
                finally:
                    ticket.done.set()
                return
            await ticket.done.wait()
            if ticket.ok:
                return
            # Its sender failed or was cancelled: try with a record of our own.

    # -- writing -------------------------------------------------------------------------------

    async def _send(self, writes: Sequence[Write]) -> list[int]:
        """Produce ``writes`` to the state topic; their offsets, once all are acknowledged."""
        with map_exceptions(errors(self.url, "writing to the state topic")):
            futures = [
                await self.producer.send(
                    self.topic,
                    value=None if w.value is None else encode(w.value),
                    key=w.key.encode("utf-8"),
                    partition=0,
                    timestamp_ms=w.ts_ms,
                )
                for w in writes
            ]
            return [(await future).offset for future in futures]

    async def write_many(self, writes: Sequence[Write]) -> list[Applied]:
        """Append ``writes`` and return what the fold made of each (accepted or not).

        A write whose reply is lost may still have been applied: it is never retried here.
        """
        rids = []
        for w in writes:
            rid = uuid.uuid4().hex
            assert w.value is not None, "a tombstone is not a transition"
            w.value["rid"] = rid
            rids.append(rid)
            self.view.mine[rid] = None
        try:
            offsets = await self._send(writes)
            await self.catch_up(max(offsets))
            results: list[Applied] = []
            for rid in rids:
                applied = self.view.mine.get(rid)
                # A record the fold could not parse counts as rejected (never happens for ours).
                results.append(applied if applied is not None else Applied(False, None))
        finally:
            for rid in rids:
                self.view.mine.pop(rid, None)
        ghosts = [w.key for w in writes if w.key in self.view.ghosts]
        if ghosts:
            # Our rejected records of jobs nobody knows (a post whose key was held, a claim of a
            # purged job): tombstones, so compaction never leaves them alone for a new instance.
            with contextlib.suppress(BackendUnavailable):
                await self._send([Write(job_id, None, clock_ms()) for job_id in ghosts])
        return results

    async def write(self, write: Write) -> Applied:
        """Append one record; what the fold made of it."""
        return (await self.write_many([write]))[0]

    async def post(
        self, jobs: Sequence[dict[str, Any]], ts_ms: int
    ) -> list[tuple[bool, dict[str, Any]]]:
        """Write the post records of the new jobs ``jobs``; for each, whether the fold created
        it, and the state it holds: the new job's, or the holder's when its key was held (by a
        job the view knows, or by an earlier record of the same call).

        Raises:
            BoardError: the fold refused a post whose key was free (never happens: a job id is
                a new uuid).
        """
        # One producer, one partition: the records land, and get their seq, in this order.
        results = await self.write_many(
            [Write(d["id"], {"op": "post", "base": None, "job": d}, ts_ms) for d in jobs]
        )
        posted: list[tuple[bool, dict[str, Any]]] = []
        for d, applied in zip(jobs, results, strict=True):
            data = applied.data
            if data is None or (not applied.accepted and data["id"] == d["id"]):
                raise BoardError(f"the post of job {d['id']} was not applied")
            posted.append((applied.accepted, data))
        return posted

    async def purge(self, job_ids: Sequence[str]) -> int:
        """Write a tombstone for each of ``job_ids`` the view holds finished, and wait until the
        view folded them; how many jobs these tombstones purged (a job another tombstone purged
        first is not counted, so racing purges count each job once).

        Never a tombstone for a job that is not finished: compaction would erase its records.
        """
        view = self.view
        final = [
            job_id
            for job_id in dict.fromkeys(job_ids)
            if view.jobs.get(job_id, {}).get("state") in FINAL
        ]
        if not final:
            return 0
        view.watch(final, on=True)
        try:
            ts = clock_ms()
            offsets = await self._send([Write(job_id, None, ts) for job_id in final])
            await self.catch_up(max(offsets))
            purged = view.purged
            return sum(purged.get(job_id) == o for job_id, o in zip(final, offsets, strict=True))
        finally:
            view.watch(final, on=False)

    async def fresh(self, job_id: str, check: Callable[[dict[str, Any] | None], bool]) -> None:
        """Read the log up to now unless the view's state of the job already passes ``check``.

        A stale view can only be wrong towards refusing (a write is checked by the log), so
        only a refusal needs the round trip.
        """
        if not check(self.view.jobs.get(job_id)):
            await self.sync()

    async def change(
        self,
        job_id: str,
        op: str,
        prepare: Callable[[], dict[str, Any]],
        make: Make,
    ) -> dict[str, Any]:
        """Write the transition ``make(current, now)`` of the job state ``prepare()`` checked,
        again after each lost race, until the log accepts it (or ``prepare`` raises); the job's
        new state.

        Raises:
            BoardError: it lost ``RETRIES`` races in a row.
        """
        for _ in range(RETRIES):
            data = prepare()
            ts = clock_ms()
            applied = await self.write(transition(op, data, make(data, ts / 1000), ts))
            if applied.accepted and applied.data is not None:
                return applied.data
        raise BoardError(f"{op} of job {job_id} lost {RETRIES} races in a row")

    async def tick(self, schedule: str, tick: float, data: dict[str, Any], ts_ms: int) -> Applied:
        """Write ``schedule``'s record of ``tick`` posting the new job ``data``; what the fold
        made of it: rejected if the schedule's last tick is at or after ``tick``, else accepted
        with the new job's state, or the holder's when its key was held.

        A job it created is restated under its own key at once, and the schedule by its last
        tick alone (see the view): any instance would after a grace, the poster knows first.
        """
        last = self.view.ticks.get(schedule)
        if last is not None and last >= tick:
            # The view is a prefix of the log, and a schedule's last tick only moves forward.
            return Applied(False, None)
        value = {"op": "tick", "tick": tick, "job": data}
        applied = await self.write(Write(SCHEDULE_PREFIX + schedule, value, ts_ms))
        if applied.accepted:
            with contextlib.suppress(BackendUnavailable):
                await self._restate([data["id"]], (), [schedule])
        return applied

    async def restate_dirty(self) -> None:
        """Re-publish the state of jobs whose newest record was rejected, bury ghosts under a
        tombstone, and restate the last tick of stale schedules (see the view)."""
        now = time.monotonic()
        view = self.view
        due = [
            [
                key
                for key, (since, mine) in marks.items()
                if now - since >= (RESTATE_GRACE_MINE if mine else RESTATE_GRACE)
            ][:256]
            for marks in (view.dirty, view.ghosts, view.stale_ticks)
        ]
        await self._restate(*due)

    async def _restate(
        self, dirty: Sequence[str], ghosts: Sequence[str], stale: Sequence[str]
    ) -> None:
        view, now, ts = self.view, time.monotonic(), clock_ms()
        writes: list[Write] = []
        for marks, keys in ((view.dirty, dirty), (view.ghosts, ghosts), (view.stale_ticks, stale)):
            for key in keys:
                if key not in marks:
                    continue  # clean by now
                # Restarted grace: a restate that loses a race marks it again.
                marks[key] = (now, False)
                data = view.jobs.get(key)
                if marks is view.stale_ticks:
                    value = {"op": "last", "tick": view.ticks[key]}
                    writes.append(Write(SCHEDULE_PREFIX + key, value, ts))
                elif data is None:
                    writes.append(Write(key, None, ts))
                elif marks is view.dirty:
                    value = {"op": "restate", "base": data["version"], "job": data}
                    writes.append(Write(key, value, ts))
        if writes:
            await self._send(writes)

    def exclusive(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the reader (nothing is folded meanwhile)."""
        return self.reader.exclusive()
