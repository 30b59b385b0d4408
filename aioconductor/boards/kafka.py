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
  and wait until the view applied it, so ``get`` sees every write acknowledged before it.
- ``NAME.NS.jobs``: ``partitions`` partitions, one record per posted job (key = job id). The
  board's conductors form the consumer group ``NAME.NS.conductors``: a member takes jobs of the
  partitions assigned to it first, and commits an offset only once every job at or below it is
  finished (:mod:`~aioconductor._backends.kafka.group`); a job scheduled again by ``retry`` is
  not.
- ``NAME.NS.dead``: the dead-letter topic; every trashed job is written there with its reason.

Cross-partition priority is best effort: a conductor prefers the best job of its own
partitions over a better job of another's partition (a single conductor sees them all).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Self

import anyio
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from anyio.lowlevel import checkpoint

from aioconductor._backends.kafka.group import GroupMember
from aioconductor._backends.kafka.log import (
    COMPACTION_LAG_MS,
    LogSubscription,
    StateLog,
    Write,
    clock_ms,
    translate,
)
from aioconductor._backends.kafka.setup import (
    TopicSpec,
    bool_option,
    bootstrap_servers,
    ensure_topics,
    start_producer,
)
from aioconductor._backends.kafka.view import CONDUCTOR_PREFIX, JobView, claimable, to_job
from aioconductor._models import build
from aioconductor._urls import ParsedURL, int_option, refuse_options
from aioconductor.boards.base import (
    JobBoard,
    PostSpec,
    Subscription,
    lost_message,
    unclaimable_message,
)
from aioconductor.errors import (
    BackendUnavailable,
    BoardClosed,
    BoardError,
    ClaimLost,
    ConfigurationError,
    JobNotFound,
    UnclaimableJob,
)
from aioconductor.models import (
    MAX_KEPT_FAILURES,
    Claim,
    ConductorInfo,
    Job,
    JobNotification,
    JobState,
    NotificationKind,
    Outcome,
)

__all__ = ["KafkaJobBoard"]

logger = logging.getLogger("aioconductor.boards.kafka")

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,200}")
#: How often one verb re-reads and retries after its record lost a race.
_RETRIES = 50
_CLEANUP_TIMEOUT = 5.0


class KafkaJobBoard(JobBoard):
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
        fetch_wait_ms: the longest a fetch waits on the broker for new records. Kafka answers
            as soon as records arrive; Tansu only when the wait is over, so with Tansu it is
            the latency of every verb (use 10).
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
        self.bootstrap = bootstrap_servers(driver_url)
        self.url = f"kafka://{self.bootstrap}"
        base = f"{topic}.{self.namespace}"
        self.jobs_topic = f"{base}.jobs"
        self.state_topic = f"{base}.state"
        self.dead_topic = f"{base}.dead"
        self.group_id = f"{base}.conductors"
        self._want_partitions = partitions
        self._replication = replication
        self._idempotence = idempotence
        self._fetch_wait_ms = fetch_wait_ms
        self._session_timeout_ms = session_timeout_ms
        #: The jobs topic's partition count, read at connect.
        self.partitions = partitions
        self._view = JobView(self._notify_local)
        self._producer: AIOKafkaProducer | None = None
        self._log: StateLog | None = None
        self._member: GroupMember | None = None
        #: Jobs this instance is claiming now: its other claim_next calls pass them over.
        self._reserved: set[str] = set()

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

    def __repr__(self) -> str:
        return f"<KafkaJobBoard {self.url} namespace={self.namespace!r}>"

    # -- plumbing ------------------------------------------------------------------------------

    def _record_limit(self) -> int:
        # A record holds a job's args and result, each up to max_payload_bytes, plus its fields.
        return 2 * self.max_payload_bytes + 64 * 1024

    async def _connect(self) -> None:
        try:
            await self._ensure_topics()
            producer = await start_producer(
                self.bootstrap, self.url, self._idempotence, self._record_limit()
            )
            self._producer = producer
            self._log = StateLog(
                self._view,
                self.state_topic,
                self.url,
                producer,
                {
                    "bootstrap_servers": self.bootstrap,
                    "enable_auto_commit": False,
                    "auto_offset_reset": "earliest",
                    "fetch_max_wait_ms": self._fetch_wait_ms,
                    "max_partition_fetch_bytes": self._record_limit(),
                },
            )
            await self._log.start()
            # Replay the state topic up to now before the first verb.
            await self._log.sync()
        except BaseException:
            with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
                await self._aclose()
            raise

    async def _ensure_topics(self) -> None:
        self.partitions = await ensure_topics(
            self.bootstrap,
            self.url,
            [
                TopicSpec(self.jobs_topic, self._want_partitions, {}),
                TopicSpec(
                    self.state_topic,
                    1,
                    {
                        "cleanup.policy": "compact",
                        "max.message.bytes": str(self._record_limit()),
                        "min.compaction.lag.ms": str(COMPACTION_LAG_MS),
                    },
                ),
                TopicSpec(self.dead_topic, 1, {}),
            ],
            self._replication,
        )

    async def _aclose(self) -> None:
        member, self._member = self._member, None
        if member is not None:
            await member.stop()
        log, self._log = self._log, None
        if log is not None:
            await log.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            # Flushing and closing sockets; shielded so a cancelled close still frees them.
            with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
                with contextlib.suppress(Exception):
                    await producer.stop()

    @property
    def _state(self) -> StateLog:
        log = self._log
        if log is None:
            raise BoardClosed()
        return log

    async def _maintain(self) -> None:
        """Background chores done by callers: group commits and restating dirty jobs."""
        if self._member is not None:
            await self._member.poll()
        with contextlib.suppress(BackendUnavailable):
            await self._state.restate_dirty()

    async def _group(self) -> GroupMember:
        """This instance's consumer-group member, joining on first use (by ``claim_next``:
        a board that only posts and reads never takes partitions from the conductors)."""
        member = self._member
        if member is None:
            member = self._member = GroupMember(
                self._view,
                self.jobs_topic,
                self.url,
                {
                    "bootstrap_servers": self.bootstrap,
                    "group_id": self.group_id,
                    "enable_auto_commit": False,
                    "auto_offset_reset": "earliest",
                    "fetch_max_wait_ms": self._fetch_wait_ms,
                    "session_timeout_ms": self._session_timeout_ms,
                    "heartbeat_interval_ms": max(100, self._session_timeout_ms // 4),
                },
            )
            await member.start()
        return member

    # -- transitions ---------------------------------------------------------------------------

    async def _post(self, spec: PostSpec) -> Job:
        return (await self._post_many([spec]))[0]

    def _new_job(self, spec: PostSpec, now: float) -> dict[str, Any]:
        not_before = spec.not_before
        if spec.delay:
            not_before = now + spec.delay
        scheduled = not_before is not None and not_before > now
        job_id = str(uuid.uuid4())
        return {
            "id": job_id,
            "name": spec.name,
            "flow": spec.flow,
            "args": spec.args,
            "headers": spec.headers,
            "priority": spec.priority,
            "seq": 0,  # the fold sets it: the post record's offset
            "created_at": now,
            "updated_at": now,
            "not_before": not_before,
            "attempts": 0,
            "max_attempts": spec.max_attempts,
            "releases": 0,
            "abandons": 0,
            "retries": 0,
            "retry": None if spec.retry_json is None else json.loads(spec.retry_json),
            "failures": [],
            "token": 0,
            "state": "SCHEDULED" if scheduled else "UNCLAIMED",
            "owner": None,
            "expires_at": None,
            "outcome": None,
            "result": None,
            "trash_reason": None,
            "version": 1,
            "partition": zlib.crc32(job_id.encode()) % self.partitions,
        }

    async def _post_many(self, specs: list[PostSpec]) -> list[Job]:
        log = self._state
        ts = clock_ms()
        jobs = [self._new_job(spec, ts / 1000) for spec in specs]
        # One producer, one partition: the records land, and get their seq, in this order.
        results = await log.write_many(
            [Write(d["id"], {"op": "post", "base": None, "job": d}, ts) for d in jobs]
        )
        posted: list[dict[str, Any]] = []
        for d, applied in zip(jobs, results, strict=True):
            if not applied.accepted or applied.data is None:
                raise BoardError(f"the post of job {d['id']} was not applied")
            posted.append(applied.data)
        # The state records come first: a jobs record always names a job the view knows.
        assert self._producer is not None
        with translate("writing to the jobs topic", self.url):
            futures = [await self._send_job(d, ts) for d in posted]
            for future in futures:
                await future
        return [to_job(d) for d in posted]

    async def _send_job(self, data: dict[str, Any], ts: int) -> Any:
        """Queue the jobs record of a posted job; the future of its acknowledgement."""
        assert self._producer is not None
        fields = ("id", "name", "flow", "args", "priority", "max_attempts", "retry", "not_before")
        value = {key: data[key] for key in fields}
        value["created_at"] = data["created_at"]
        return await self._producer.send(
            self.jobs_topic,
            value=json.dumps(value, separators=(",", ":")).encode("utf-8"),
            key=data["id"].encode("utf-8"),
            partition=data["partition"],
            timestamp_ms=ts,
            # The job's headers (a trace context, a tenant) ride as Kafka record headers.
            headers=[(k, v.encode("utf-8")) for k, v in data["headers"].items()] or None,
        )

    async def _fresh(self, job_id: str, check: Callable[[dict[str, Any] | None], bool]) -> None:
        """Read the log up to now unless the local view already passes ``check``.

        A stale view can only be wrong towards refusing (a write is checked by the log), so
        only a refusal needs the round trip.
        """
        if not check(self._view.jobs.get(job_id)):
            await self._state.sync()

    def _data(self, job_id: str) -> dict[str, Any]:
        data = self._view.jobs.get(job_id)
        if data is None:
            raise JobNotFound(f"no job {job_id!r} on this board")
        return data

    @staticmethod
    def _holds(data: dict[str, Any] | None, claim: Claim) -> bool:
        return (
            data is not None
            and data["state"] == "CLAIMED"
            and data["owner"] == claim.owner
            and data["token"] == claim.token
        )

    def _check_claim(self, claim: Claim, verb: str) -> dict[str, Any]:
        data = self._data(claim.job_id)
        if not self._holds(data, claim):
            job = to_job(data)
            raise ClaimLost(lost_message(claim, verb, job.state, job.claim))
        return data

    async def _change(
        self,
        job_id: str,
        op: str,
        prepare: Callable[[], dict[str, Any]],
        make: Callable[[dict[str, Any], float], dict[str, Any]],
    ) -> dict[str, Any]:
        """Write the transition ``make(current, now)`` of the job ``prepare()`` checked, again
        after each lost race, until the log accepts it (or ``prepare`` raises)."""
        log = self._state
        for _ in range(_RETRIES):
            data = prepare()
            ts = clock_ms()
            new = make(data, ts / 1000)
            new["version"] = data["version"] + 1
            value = {"op": op, "base": data["version"], "job": new}
            applied = await log.write(Write(job_id, value, ts))
            if applied.accepted and applied.data is not None:
                return applied.data
        raise BoardError(f"{op} of job {job_id} lost {_RETRIES} races in a row")

    @staticmethod
    def _take(data: dict[str, Any], owner: str, lease: float, now: float) -> dict[str, Any]:
        return {
            **data,
            "attempts": data["attempts"] + 1,
            "token": data["token"] + 1,
            "state": "CLAIMED",
            "owner": owner,
            "expires_at": now + lease,
            "updated_at": now,
        }

    async def _claim(self, job_id: str, owner: str, lease: float) -> Job:
        await self._fresh(job_id, lambda d: d is not None and claimable(d, time.time()))

        def prepare() -> dict[str, Any]:
            data = self._data(job_id)
            now = time.time()
            if not claimable(data, now):
                raise UnclaimableJob(unclaimable_message(to_job(data, now), now))
            return data

        new = await self._change(
            job_id, "claim", prepare, lambda d, now: self._take(d, owner, lease, now)
        )
        return to_job(new)

    async def _claim_next(self, owner: str, lease: float) -> Job | None:
        jobs = await self._claim_batch(owner, lease, 1)
        return jobs[0] if jobs else None

    async def _claim_batch(self, owner: str, lease: float, limit: int) -> list[Job]:
        log = self._state
        member = await self._group()
        await self._maintain()
        synced = False
        for _ in range(_RETRIES):
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
            writes = []
            for data in picked:
                new = self._take(data, owner, lease, now)
                new["version"] = data["version"] + 1
                value = {"op": "claim", "base": data["version"], "job": new}
                writes.append(Write(data["id"], value, ts))
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

    async def _renew(self, claim: Claim, lease: float) -> Claim:
        await self._fresh(claim.job_id, lambda d: self._holds(d, claim))

        def make(data: dict[str, Any], now: float) -> dict[str, Any]:
            return {**data, "expires_at": now + lease, "updated_at": now}

        new = await self._change(
            claim.job_id, "renew", lambda: self._check_claim(claim, "renew"), make
        )
        return build(
            Claim,
            job_id=claim.job_id,
            owner=claim.owner,
            token=claim.token,
            expires_at=new["expires_at"],
        )

    async def _consume(
        self, claim: Claim, outcome: Outcome, result: dict[str, Any], result_json: bytes
    ) -> Job:
        await self._fresh(claim.job_id, lambda d: self._holds(d, claim))

        def make(data: dict[str, Any], now: float) -> dict[str, Any]:
            return {
                **data,
                "state": "COMPLETE",
                "outcome": outcome.value,
                "result": result,
                "updated_at": now,
            }

        new = await self._change(
            claim.job_id, "consume", lambda: self._check_claim(claim, "consume"), make
        )
        return to_job(new)

    @staticmethod
    def _give_back(data: dict[str, Any], now: float, spent: bool) -> dict[str, Any]:
        """``data`` unclaimed at ``now``; its attempt ``spent`` (counted in ``abandons``) or
        given back (counted in ``releases``). Counters default for records of older boards."""
        new = {**data, "state": "UNCLAIMED", "owner": None, "expires_at": None,
               "updated_at": now}  # fmt: skip
        if spent:
            new["abandons"] = data.get("abandons", 0) + 1
        else:
            new["releases"] = data.get("releases", 0) + 1
            new["attempts"] = data["attempts"] - 1
        return new

    async def _abandon(self, claim: Claim) -> Job:
        await self._fresh(claim.job_id, lambda d: self._holds(d, claim))
        new = await self._change(
            claim.job_id,
            "abandon",
            lambda: self._check_claim(claim, "abandon"),
            lambda data, now: self._give_back(data, now, spent=True),
        )
        return to_job(new)

    async def _release(self, claim: Claim) -> Job:
        await self._fresh(claim.job_id, lambda d: self._holds(d, claim))

        def make(data: dict[str, Any], now: float) -> dict[str, Any]:
            # Decided from the state the record is based on: the fold accepts it only if that
            # is still the job's state, so racing give-backs cannot pass the cap.
            spent = data.get("releases", 0) >= data["max_attempts"]
            return self._give_back(data, now, spent)

        new = await self._change(
            claim.job_id, "release", lambda: self._check_claim(claim, "release"), make
        )
        return to_job(new)

    async def _retry(
        self,
        claim: Claim,
        delay: float,
        failure: dict[str, Any] | None,
        failure_json: bytes | None,
    ) -> Job:
        await self._fresh(claim.job_id, lambda d: self._holds(d, claim))

        def make(data: dict[str, Any], now: float) -> dict[str, Any]:
            failures = data.get("failures", [])
            if failure is not None:
                failures = [*failures, failure][-MAX_KEPT_FAILURES:]
            return {
                **data,
                "state": "SCHEDULED",
                "owner": None,
                "expires_at": None,
                "not_before": now + delay,
                "attempts": data["attempts"] - 1,
                "retries": data.get("retries", 0) + 1,
                "failures": failures,
                "updated_at": now,
            }

        # Every instance's fold sets a timer for the job's not_before: it is announced (DUE)
        # and claimable then, like a delayed post, and it is not finished for offset commits.
        new = await self._change(
            claim.job_id, "retry", lambda: self._check_claim(claim, "retry"), make
        )
        return to_job(new)

    async def _trash(self, job_id: str, claim: Claim | None, reason: str) -> Job:
        if claim is not None:
            await self._fresh(job_id, lambda d: self._holds(d, claim))
        else:
            await self._state.sync()

        def prepare() -> dict[str, Any]:
            if claim is not None:
                return self._check_claim(claim, "trash")
            data = self._data(job_id)
            if data["state"] in ("COMPLETE", "TRASHED"):
                raise UnclaimableJob(
                    f"job {job_id} is already {data['state']}: it cannot be trashed"
                )
            return data

        def make(data: dict[str, Any], now: float) -> dict[str, Any]:
            return {**data, "state": "TRASHED", "trash_reason": reason, "updated_at": now}

        new = await self._change(job_id, "trash", prepare, make)
        await self._dead_letter(new, reason)
        return to_job(new)

    async def _dead_letter(self, data: dict[str, Any], reason: str) -> None:
        """Write a trashed job to the dead-letter topic (the board keeps it TRASHED anyway)."""
        assert self._producer is not None
        value = json.dumps({"job": data, "reason": reason}, separators=(",", ":"))
        try:
            with translate("writing to the dead-letter topic", self.url):
                await self._producer.send_and_wait(
                    self.dead_topic,
                    value=value.encode("utf-8"),
                    key=data["id"].encode("utf-8"),
                    headers=[("reason", reason.encode("utf-8"))],
                )
        except BackendUnavailable as exc:
            # The job is trashed on the board; only its copy on the dead-letter topic is lost.
            logger.error("job %s trashed, but not dead-lettered: %s", data["id"], exc)

    # -- reads ---------------------------------------------------------------------------------

    async def _get(self, job_id: str) -> Job:
        await self._state.sync()
        return to_job(self._data(job_id), time.time())

    async def _iterjobs(self, state: JobState | None) -> AsyncIterator[Job]:
        await self._state.sync()
        now = time.time()
        for data in self._view.select(state, now):
            await checkpoint()
            yield to_job(data, now)

    async def _job_count(self, state: JobState | None) -> int:
        await self._state.sync()
        if state is None:
            return len(self._view.jobs)
        return len(self._view.select(state, time.time()))

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
            await self._maintain()
        except BoardClosed:
            if not self.closed:
                raise
            # Closed while sweeping: the stream ends at its next check, quietly.
            return [], cursor
        now = time.time()
        # Jobs whose time came are announced to every stream of this board, this one included.
        self._view.promote(now)
        if cursor is not None:
            return [], now
        notes = [
            build(
                JobNotification,
                job_id=data["id"],
                kind=NotificationKind.WAITING,
                priority=data["priority"],
            )
            for data in self._view.claimable_now(now)
        ]
        return notes, now

    def _sweep_delay(self) -> float:
        next_timer = self._view.next_timer()
        if next_timer is None:
            return self.poll_interval
        return max(0.005, min(self.poll_interval, next_timer - time.time()))

    # -- conductors ----------------------------------------------------------------------------

    async def _register_conductor(
        self, owner: str, name: str, ttl: float, meta: dict[str, Any]
    ) -> None:
        ts = clock_ms()
        now = ts / 1000
        previous = self._view.conductors.get(owner)
        info = {
            "owner": owner,
            "name": name,
            "started_at": previous["started_at"] if previous else now,
            "heartbeat_at": now,
            "expires_at": now + min(ttl, 10 * 365 * 86400.0),
            "meta": meta,
        }
        await self._state.write(
            Write(CONDUCTOR_PREFIX + owner, {"op": "register", "info": info}, ts)
        )

    async def _unregister_conductor(self, owner: str) -> None:
        value = {"op": "unregister"}
        await self._state.write(Write(CONDUCTOR_PREFIX + owner, value, clock_ms()))

    async def _conductors(self) -> list[ConductorInfo]:
        await self._state.sync()
        return self._view.alive_conductors(time.time())
