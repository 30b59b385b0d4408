"""`KafkaJobBoard`: jobs on Kafka topics, shared by conductors on many machines.

``kafka://host:port[,host:port...]?topic=NAME&namespace=NS`` with the options ``partitions``
(of the jobs topic, 12), ``replication`` (of every topic; the number of brokers up to 3 when not
given), ``idempotence`` (``true``; Tansu needs ``false``), ``fetch_wait_ms`` (500; 10 for Tansu) and
``session_timeout_ms`` (of the consumer group, 10000).

Topics, created by the board when missing (``NAME`` defaults to ``aioconductor``):

- ``NAME.NS.state``: one partition, compacted. Every transition (post, claim, renew, consume,
  abandon, release, retry, trash) is one record: the job id as key, the job version it was
  computed from and the job's full resulting state. Every board instance folds the whole topic
  into a view (:mod:`~aioconductor._backends.kafka.view`); first writer wins in log order, so
  exactly one of two racing claims is accepted, everywhere. Reads append a small ``sync`` record
  and wait until the view applied it, so ``get`` sees every write acknowledged before it. Keys
  are decided in the fold too (a post whose key is held is rejected, and hands back the holder),
  and ``purge`` writes a tombstone per finished job, which every instance's fold forgets. A
  schedule's tick is a record under the schedule's key (``~schedule:NAME``) carrying the new
  job: the fold accepts it only after the schedule's last tick, which it advances, and posts
  the job as a keyed post; the last ticks live in the view, apart from the jobs. A cancel is a
  transition record too (the fold pushes ``CANCEL`` to every instance's streams), and a limit
  is a record under its key (``~limit:KEY``): the fold rejects a claim whose key is full at
  that point of the log (:mod:`~aioconductor._backends.kafka.limits`).
- ``NAME.NS.jobs``: ``partitions`` partitions, one record per posted job (key = job id). The
  board's conductors form the consumer group ``NAME.NS.conductors``: a member takes jobs of the
  partitions assigned to it first, and commits an offset only once every job at or below it is
  finished (:mod:`~aioconductor._backends.kafka.group`); a job scheduled again by ``retry`` is
  not, a purged one is.
- ``NAME.NS.dead``: the dead-letter topic; every trashed job is written there with its reason.

Cross-partition priority is best effort: a conductor prefers the best job of its own
partitions over a better job of another's partition (a single conductor sees them all).

This module holds the verbs; the plumbing is in :mod:`aioconductor._backends.kafka` (the link to
the brokers, the state log, the view, the records each verb writes).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import AsyncIterator
from typing import Any, Self

from anyio.lowlevel import checkpoint

from aioconductor._backends.base import OverLink
from aioconductor._backends.base import sweep_delay
from aioconductor._backends.kafka import records
from aioconductor._backends.kafka.cancels import cancel
from aioconductor._backends.kafka.limits import LIMIT_PREFIX
from aioconductor._backends.kafka.link import KafkaLink
from aioconductor._backends.kafka.link import KafkaSettings
from aioconductor._backends.kafka.link import LogSubscription
from aioconductor._backends.kafka.log import RETRIES
from aioconductor._backends.kafka.log import Make
from aioconductor._backends.kafka.log import StateLog
from aioconductor._backends.kafka.records import Write
from aioconductor._backends.kafka.records import claimable
from aioconductor._backends.kafka.records import clock
from aioconductor._backends.kafka.records import clock_ms
from aioconductor._backends.kafka.records import holds
from aioconductor._backends.kafka.records import to_job
from aioconductor._backends.kafka.records import transition
from aioconductor._backends.kafka.setup import bool_option
from aioconductor._backends.kafka.setup import bootstrap_servers
from aioconductor._backends.kafka.view import CONDUCTOR_PREFIX
from aioconductor._backends.kafka.view import JobView
from aioconductor._urls import ParsedURL
from aioconductor._urls import int_option
from aioconductor._urls import refuse_options
from aioconductor.boards.base import EncodedObject
from aioconductor.boards.base import JobBoard
from aioconductor.boards.base import PostSpec
from aioconductor.boards.base import Subscription
from aioconductor.errors import BoardClosed
from aioconductor.errors import BoardError
from aioconductor.errors import ConfigurationError
from aioconductor.errors import UnclaimableJob
from aioconductor.models import Claim
from aioconductor.models import ConductorInfo
from aioconductor.models import Job
from aioconductor.models import JobNotification
from aioconductor.models import JobState
from aioconductor.models import LimitInfo
from aioconductor.models import Outcome

__all__ = ["KafkaJobBoard"]

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,200}")


class KafkaJobBoard(OverLink[KafkaLink], JobBoard):
    """A job board on Kafka: a folded state log for claims, a consumer group for the work.

    Open it with ``open_board("kafka://broker:9092?topic=jobs&namespace=NAME")``. Each board
    instance replays the state topic when it connects (its memory holds every job's state).

    Args:
        driver_url: the ``kafka://`` URL without the library's options.
        topic: the prefix of the board's topic names.
        partitions: the number of partitions of the jobs topic, if the board creates it.
        replication: the replication factor of the topics it creates (None: the number of
            brokers, at most 3).
        idempotence: use the idempotent producer (brokers that refuse it need ``False``).
        fetch_wait_ms: the longest an idle stream's fetch waits on the broker for news (a
            verb catching up to its own record fetches with a short wait of its own). Kafka
            answers as soon as records arrive; Tansu only when the wait is over, so with Tansu
            it is how late an idle stream hears of other processes' changes (use 10).
        session_timeout_ms: how long the group waits for a silent member before it hands its
            partitions to the others (Tansu also waits half of it for members to join).
        **kwargs: see :class:`~aioconductor.boards.base.JobBoard`.
    """

    url_options = JobBoard.url_options | {
        "topic",
        "partitions",
        "replication",
        "idempotence",
        "fetch_wait_ms",
        "session_timeout_ms",
    }

    def __init__(
        self,
        *,
        driver_url: str = "kafka://127.0.0.1:9092",
        topic: str = "aioconductor",
        partitions: int = 12,
        replication: int | None = None,
        idempotence: bool = True,
        fetch_wait_ms: int = 500,
        session_timeout_ms: int = 10_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(topic, str) or not _TOPIC.fullmatch(topic):
            raise ConfigurationError(f"topic {topic!r} is not valid: use [A-Za-z0-9._-]")
        if partitions < 1 or (replication is not None and replication < 1):
            raise ConfigurationError("partitions and replication must be positive")
        self._view = JobView(self._notify_local)
        settings = KafkaSettings(
            partitions=partitions,
            replication=replication,
            idempotence=idempotence,
            fetch_wait_ms=fetch_wait_ms,
            session_timeout_ms=session_timeout_ms,
            # A record holds a job's args and result, each up to max_payload_bytes, and more.
            record_limit=2 * self.max_payload_bytes + 64 * 1024,
        )
        prefix = f"{topic}.{self.namespace}"
        self._link = link = KafkaLink(self._view, bootstrap_servers(driver_url), prefix, settings)
        link.create_topics = self.migrate
        self.bootstrap, self.url, self.group_id = link.bootstrap, link.url, link.group_id
        self.jobs_topic, self.state_topic = link.jobs_topic, link.state_topic
        self.dead_topic = link.dead_topic
        #: Jobs this instance is claiming now: its other claim_next calls pass them over.
        self._reserved: set[str] = set()

    @property
    def partitions(self) -> int:
        """The jobs topic's partition count (read from the broker at connect)."""
        return self._link.partitions

    @classmethod
    def from_url(cls, parsed: ParsedURL, **kwargs: Any) -> Self:
        """Build the board for a parsed ``kafka://`` URL; not yet connected.

        Raises:
            ConfigurationError: a bad option, or one the board does not take (TLS and SASL
                options included: they are not supported).
        """
        refuse_options(parsed.driver_url, "Kafka board", cls.url_options | cls.ignored_url_options)
        options = parsed.options
        kwargs.setdefault("driver_url", parsed.driver_url)
        kwargs.setdefault("topic", options.get("topic", "aioconductor"))
        kwargs.setdefault("partitions", int_option(options, "partitions", 12))
        if "replication" in options:
            kwargs.setdefault("replication", int_option(options, "replication", 1))
        kwargs.setdefault("idempotence", bool_option(options, "idempotence", True))
        kwargs.setdefault("fetch_wait_ms", int_option(options, "fetch_wait_ms", 500))
        kwargs.setdefault("session_timeout_ms", int_option(options, "session_timeout_ms", 10_000))
        return super().from_url(parsed, **kwargs)

    @property
    def _state(self) -> StateLog:
        return self._link.log

    # -- transitions ---------------------------------------------------------------------------

    async def _post(self, spec: PostSpec) -> Job:
        return (await self._post_many([spec]))[0]

    async def _post_many(self, specs: list[PostSpec]) -> list[Job]:
        ts = clock_ms()
        jobs = [records.new_job(spec, ts / 1000, self.partitions) for spec in specs]
        # The fold decides keys: a post whose key is held (by a job the view knows, or by an
        # earlier record of this batch) is rejected on every instance and hands back the holder.
        posted = await self._state.post(jobs, ts)
        # The state records come first: a jobs record always names a job the view knows.
        await self._link.send_jobs([data for created, data in posted if created], ts)
        now = clock()
        return [to_job(data) if created else to_job(data, now) for created, data in posted]

    async def _post_tick(self, schedule: str, tick: float, spec: PostSpec) -> Job | None:
        ts = clock_ms()
        data = records.new_job(spec, ts / 1000, self.partitions)
        # One record decides the tick and the post (or finds the key's holder), in the fold.
        applied = await self._state.tick(schedule, tick, data, ts)
        held = applied.data
        if not applied.accepted:
            return None
        if held is None:
            raise BoardError(f"the tick {tick} of schedule {schedule!r} posted no job")
        if held["id"] != data["id"]:
            return to_job(held, clock())
        await self._link.send_jobs([held], ts)
        return to_job(held)

    async def _schedule_ticks(self) -> dict[str, float]:
        await self._state.sync()
        return dict(self._view.ticks)

    async def _claim(self, job_id: str, owner: str, lease: float) -> Job:
        log, view = self._state, self._view

        def ok(data: dict[str, Any] | None) -> bool:
            now = clock()
            return data is not None and claimable(data, now) and not view.full(data, "claim", now)

        await log.fresh(job_id, ok)
        take = functools.partial(records.taken, owner=owner, lease=lease)
        # The fold checks the limit key's slots again, at the claim record's place in the log.
        return to_job(
            await log.change(job_id, "claim", lambda: view.to_claim(job_id, clock()), take)
        )

    async def _claim_next(self, owner: str, lease: float) -> Job | None:
        jobs = await self._claim_batch(owner, lease, 1)
        return jobs[0] if jobs else None

    async def _claim_batch(self, owner: str, lease: float, limit: int) -> list[Job]:
        log = self._state
        member = await self._link.group()
        await self._link.maintain()
        synced = False
        for _ in range(RETRIES):
            ts = clock_ms()
            now = ts / 1000
            picked = self._view.candidates(now, limit, member.assigned(), self._reserved)
            if not picked:
                if synced:
                    return []
                # Nothing claimable here: make sure of it against the log before saying so.
                await log.sync()
                synced = True
                continue
            writes = [
                transition("claim", d, records.taken(d, now, owner, lease), ts) for d in picked
            ]
            ids = [data["id"] for data in picked]
            self._reserved.update(ids)
            try:
                results = await log.write_many(writes)
            finally:
                self._reserved.difference_update(ids)
            jobs = [to_job(r.data) for r in results if r.accepted and r.data is not None]
            if jobs:
                return jobs
            # Every candidate went to someone else: the view now knows, pick again.
        return []

    async def _held(self, claim: Claim, verb: str, make: Make) -> dict[str, Any]:
        """Write the transition ``make(current, now)`` of the job ``claim`` holds; its new
        state (``ClaimLost`` if the claim is not the job's current one, or, for a renew, if its
        lease ran out and its limit key is full without it)."""
        log, view = self._state, self._view
        renew = verb == "renew"

        def ok(data: dict[str, Any] | None) -> bool:
            return holds(data, claim) and not (renew and view.full(data, verb, clock()))

        def prepare() -> dict[str, Any]:
            return view.to_renew(claim, clock()) if renew else view.held(claim, verb)

        await log.fresh(claim.job_id, ok)
        return await log.change(claim.job_id, verb, prepare, make)

    async def _renew(self, claim: Claim, lease: float) -> Claim:
        new = await self._held(claim, "renew", functools.partial(records.renewed, lease=lease))
        job = to_job(new)
        assert job.claim is not None
        return job.claim

    async def _consume(
        self, claim: Claim, outcome: Outcome, result: dict[str, Any], result_json: bytes
    ) -> Job:
        consume = functools.partial(records.consumed, outcome=outcome, result=result)
        return to_job(await self._held(claim, "consume", consume))

    async def _abandon(self, claim: Claim) -> Job:
        abandon = functools.partial(records.given_back, spent=True)
        return to_job(await self._held(claim, "abandon", abandon))

    async def _release(self, claim: Claim) -> Job:
        return to_job(await self._held(claim, "release", records.released))

    async def _retry(self, claim: Claim, delay: float, failure: EncodedObject | None) -> Job:
        # Every instance's fold sets a timer for the job's not_before: it is announced (DUE)
        # and claimable then, like a delayed post, and it is not finished for offset commits.
        value = None if failure is None else failure.value
        retry = functools.partial(records.retried, delay=delay, failure=value)
        return to_job(await self._held(claim, "retry", retry))

    async def _trash(self, job_id: str, claim: Claim | None, reason: str) -> Job:
        trash = functools.partial(records.trashed, reason=reason)
        if claim is not None:
            new = await self._held(claim, "trash", trash)
        else:
            log = self._state
            await log.sync()

            def prepare() -> dict[str, Any]:
                data = self._view.job(job_id)
                if data["state"] in ("COMPLETE", "TRASHED"):
                    raise UnclaimableJob(
                        f"job {job_id} is already {data['state']}: it cannot be trashed"
                    )
                return data

            new = await log.change(job_id, "trash", prepare, trash)
        await self._link.dead_letter(new, reason)
        return to_job(new)

    async def _cancel(self, job_id: str, reason: str) -> Job:
        return to_job(await cancel(self._state, job_id, reason), clock())

    async def _set_limit(self, key: str, limit: int | None) -> None:
        await self._state.write(
            Write(LIMIT_PREFIX + key, {"op": "limit", "limit": limit}, clock_ms())
        )

    async def _limits(self) -> list[LimitInfo]:
        await self._state.sync()
        return self._view.limits(clock())

    # -- reads ---------------------------------------------------------------------------------

    async def _get(self, job_id: str) -> Job:
        await self._state.sync()
        return to_job(self._view.job(job_id), clock())

    async def _get_by_key(self, key: str) -> Job:
        await self._state.sync()
        return to_job(self._view.by_key(key), clock())

    async def _iterjobs(self, state: JobState | None) -> AsyncIterator[Job]:
        await self._state.sync()
        now = clock()
        for data in records.in_claim_order(self._view.jobs.values(), state, now):
            await checkpoint()
            yield to_job(data, now)

    async def _job_count(self, state: JobState | None) -> int:
        await self._state.sync()
        if state is None:
            return len(self._view.jobs)
        return len(records.in_claim_order(self._view.jobs.values(), state, clock()))

    async def _held_claims(self) -> dict[str, int]:
        await self._state.sync()
        now = clock()
        held: dict[str, int] = {}
        for data in self._view.jobs.values():
            if data["state"] == "CLAIMED" and data["expires_at"] > now:
                held[data["owner"]] = held.get(data["owner"], 0) + 1
        return held

    # -- retention -----------------------------------------------------------------------------

    async def _purgeable(
        self, older_than: float, states: tuple[JobState, ...], limit: int
    ) -> list[str]:
        await self._state.sync()
        # updated_at is stamped by clock() too, so the cutoff is on the board's own clock.
        return self._view.ended_before(clock() - older_than, states, limit)

    async def _purge(self, job_ids: list[str]) -> int:
        # A job final in the view is final for good, so its tombstone is always right; ids the
        # view does not hold finished (gone, or not finished) get none.
        return await self._state.purge(job_ids)

    # -- notifications -------------------------------------------------------------------------

    def _subscribe(self) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self._registered(LogSubscription(self._state))

    async def _sweep(self, cursor: Any) -> tuple[list[JobNotification], Any]:
        try:
            log = self._state
            if cursor is None:
                await log.sync()
            else:
                await log.pull(0)
            await self._link.maintain()
        except BoardClosed:
            if not self.closed:
                raise
            # Closed while sweeping: the stream ends at its next check, quietly.
            return [], cursor
        now = clock()
        # Jobs whose time came are announced to every stream of this board, this one included.
        self._view.promote(now)
        if cursor is not None:
            return [], now
        return records.waiting(self._view.jobs.values(), now), now

    def _sweep_delay(self) -> float:
        # The view knows its next deadline (on the epoch clock, as its records are stamped),
        # so a delayed job or an expired lease is announced when it falls due.
        return sweep_delay(self.poll_interval, self._view.next_timer(), clock())

    # -- conductors ----------------------------------------------------------------------------

    async def _register_conductor(
        self, owner: str, name: str, ttl: float, meta: dict[str, Any]
    ) -> None:
        ts = clock_ms()
        previous = self._view.conductors.get(owner)
        info = records.conductor_info(owner, name, ttl, meta, previous, ts / 1000)
        await self._state.write(
            Write(CONDUCTOR_PREFIX + owner, {"op": "register", "info": info}, ts)
        )

    async def _unregister_conductor(self, owner: str) -> None:
        value = {"op": "unregister"}
        await self._state.write(Write(CONDUCTOR_PREFIX + owner, value, clock_ms()))

    async def _conductors(self) -> list[ConductorInfo]:
        await self._state.sync()
        return records.alive_conductors(self._view.conductors.values(), clock())
