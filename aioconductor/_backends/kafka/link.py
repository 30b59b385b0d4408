"""The Kafka board's link to its brokers: its topics, the producer, the state log and the
consumer-group member, opened and closed together, its writes to the jobs and dead-letter
topics (the state topic's are the log's), and a ``stream()``'s notifications, folded from the
state log.

Topics, created when missing (``PREFIX`` is ``TOPIC.NAMESPACE``): ``PREFIX.state`` (one
partition, compacted; tombstones kept a day), ``PREFIX.jobs`` (the board's ``partitions``) and
``PREFIX.dead``; the conductors form the consumer group ``PREFIX.conductors``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from aioconductor._backends.base import Backoff
from aioconductor._backends.base import ErrorTable
from aioconductor._backends.base import map_exceptions
from aioconductor._backends.kafka.group import GroupMember
from aioconductor._backends.kafka.log import StateLog
from aioconductor._backends.kafka.reader import COMPACTION_LAG_MS
from aioconductor._backends.kafka.reader import StateReader
from aioconductor._backends.kafka.records import dead_letter_record
from aioconductor._backends.kafka.records import jobs_record
from aioconductor._backends.kafka.setup import TopicSpec
from aioconductor._backends.kafka.setup import ensure_topics
from aioconductor._backends.kafka.setup import errors
from aioconductor._backends.kafka.setup import start_producer
from aioconductor._backends.kafka.setup import unavailable
from aioconductor._backends.kafka.view import JobView
from aioconductor.boards._support import Subscription
from aioconductor.errors import BackendUnavailable
from aioconductor.errors import BoardClosed
from aioconductor.models import JobNotification

__all__ = [
    "SEGMENT_MS",
    "TOMBSTONE_RETENTION_MS",
    "KafkaLink",
    "KafkaSettings",
    "LogSubscription",
]

logger = logging.getLogger("aioconductor.boards.kafka")

_CLEANUP_TIMEOUT = 5.0
#: The state topic's ``delete.retention.ms``: how long compaction keeps a tombstone after it
#: cleaned the records before it. An instance must read a tombstone before it goes: the board
#: replays the topic in seconds at connect, and a day leaves room for a reader far behind.
TOMBSTONE_RETENTION_MS = 86_400_000
#: The state topic's ``segment.ms``: compaction never cleans the active segment, so a quiet
#: topic rolls one a day (not Kafka's week) and purged jobs leave the log within days.
SEGMENT_MS = 86_400_000


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaSettings:
    """How a board instance uses its brokers: the knobs of ``KafkaJobBoard``, as given."""

    #: The partition count of the jobs topic, if the link creates it.
    partitions: int
    #: The replication factor of the topics it creates (None: the number of brokers, at most 3).
    replication: int | None
    #: Whether the producer is the idempotent one.
    idempotence: bool
    #: The longest a fetch waits on the broker for new records.
    fetch_wait_ms: int
    #: How long the group waits for a silent member.
    session_timeout_ms: int
    #: The largest record the board writes, in bytes.
    record_limit: int


class KafkaLink:
    """One board instance's connection to Kafka (a :class:`~aioconductor._backends.base.Link`).

    Args:
        view: the fold the state records go into.
        bootstrap: the brokers, ``host:port,...``.
        prefix: the start of the names of the topics and the group, ``TOPIC.NAMESPACE``.
        settings: the board's settings.
    """

    def __init__(self, view: JobView, bootstrap: str, prefix: str, settings: KafkaSettings) -> None:
        self.view = view
        self.bootstrap = bootstrap
        self.url = f"kafka://{bootstrap}"
        self.jobs_topic = f"{prefix}.jobs"
        self.state_topic = f"{prefix}.state"
        self.dead_topic = f"{prefix}.dead"
        self.group_id = f"{prefix}.conductors"
        self.settings = settings
        #: The jobs topic's partition count: the one asked for, until :meth:`connect` reads it.
        self.partitions = settings.partitions
        self.producer: AIOKafkaProducer | None = None
        self._log: StateLog | None = None
        #: This instance's consumer-group member, once :meth:`group` made it.
        self.member: GroupMember | None = None
        self.closed = False
        #: Whether :meth:`connect` creates the topics that are missing (else it refuses).
        self.create_topics = True

    def unavailable(self, what: str, exc: BaseException) -> BackendUnavailable:
        """The ``BackendUnavailable`` to raise for an aiokafka error during ``what``."""
        return unavailable(self.url, what, exc)

    def errors(self, what: str) -> ErrorTable:
        """The table (for :func:`~aioconductor._backends.base.map_exceptions`) that makes an
        aiokafka error during ``what`` :meth:`unavailable`."""
        return errors(self.url, what)

    async def connect(self) -> None:
        """Create the missing topics, start the producer, and replay the state topic into the
        view.

        Raises:
            BackendUnavailable: the brokers are unreachable, or refused a topic or the
                producer.
            ConfigurationError: a topic is missing and :attr:`create_topics` is False.
        """
        self.closed = False
        try:
            self.partitions = await ensure_topics(
                self.bootstrap,
                self.url,
                self._topics(),
                self.settings.replication,
                create=self.create_topics,
            )
            self.producer = await start_producer(
                self.bootstrap, self.url, self.settings.idempotence, self.settings.record_limit
            )
            # The reader's consumer only lends its client: its fetches are the reader's own.
            reader = StateReader(
                self.view,
                self.state_topic,
                self.url,
                {"bootstrap_servers": self.bootstrap, "enable_auto_commit": False},
                self.settings.fetch_wait_ms,
                self.settings.record_limit,
            )
            self._log = StateLog(self.producer, reader)
            await self._log.start()
            # Replay the state topic up to now before the first verb.
            await self._log.sync()
        except BaseException:
            with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
                await self.aclose()
            raise

    def _topics(self) -> list[TopicSpec]:
        """The topics the board needs, the jobs topic first."""
        state_configs = {
            # Compaction, not deletion: the last record of a job stays while the job does, and
            # a tombstone (purge) takes the job's records with it, then goes too.
            "cleanup.policy": "compact",
            "max.message.bytes": str(self.settings.record_limit),
            "min.compaction.lag.ms": str(COMPACTION_LAG_MS),
            "delete.retention.ms": str(TOMBSTONE_RETENTION_MS),
            "segment.ms": str(SEGMENT_MS),
        }
        return [
            TopicSpec(self.jobs_topic, self.partitions, {}),
            TopicSpec(self.state_topic, 1, state_configs),
            TopicSpec(self.dead_topic, 1, {}),
        ]

    async def aclose(self) -> None:
        """Leave the group, stop the reader and the producer (shielded, time-bounded)."""
        self.closed = True
        member, self.member = self.member, None
        if member is not None:
            await member.stop()
        log, self._log = self._log, None
        if log is not None:
            await log.stop()
        producer, self.producer = self.producer, None
        if producer is not None:
            # Flushing and closing sockets; shielded so a cancelled close still frees them.
            with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
                with contextlib.suppress(Exception):
                    await producer.stop()

    @property
    def log(self) -> StateLog:
        """The state log.

        Raises:
            BoardClosed: the link is not connected, or closed.
        """
        log = self._log
        if log is None:
            raise BoardClosed()
        return log

    async def group(self) -> GroupMember:
        """This instance's consumer-group member, joining on first use (by ``claim_next``:
        a board that only posts and reads never takes partitions from the conductors)."""
        member = self.member
        if member is None:
            member = self.member = GroupMember(
                self.view,
                self.jobs_topic,
                self.url,
                {
                    "bootstrap_servers": self.bootstrap,
                    "group_id": self.group_id,
                    "enable_auto_commit": False,
                    "auto_offset_reset": "earliest",
                    "fetch_max_wait_ms": self.settings.fetch_wait_ms,
                    "session_timeout_ms": self.settings.session_timeout_ms,
                    "heartbeat_interval_ms": max(100, self.settings.session_timeout_ms // 4),
                },
                self.log.sync,
            )
            await member.start()
        return member

    async def maintain(self) -> None:
        """Background chores done by callers: group commits and restating dirty jobs."""
        if self.member is not None:
            await self.member.poll()
        with contextlib.suppress(BackendUnavailable):
            await self.log.restate_dirty()

    def _producer(self) -> AIOKafkaProducer:
        producer = self.producer
        if producer is None:
            raise BoardClosed()
        return producer

    async def send_jobs(self, posted: Sequence[dict[str, Any]], ts_ms: int) -> None:
        """Write the jobs-topic records of the ``posted`` jobs, and wait for every broker's
        acknowledgement."""
        producer = self._producer()
        with map_exceptions(self.errors("writing to the jobs topic")):
            futures = [
                await producer.send(self.jobs_topic, timestamp_ms=ts_ms, **jobs_record(data))
                for data in posted
            ]
            for future in futures:
                await future

    async def dead_letter(self, data: dict[str, Any], reason: str) -> None:
        """Write a trashed job to the dead-letter topic (the board keeps it TRASHED anyway)."""
        producer = self._producer()
        try:
            with map_exceptions(self.errors("writing to the dead-letter topic")):
                await producer.send_and_wait(self.dead_topic, **dead_letter_record(data, reason))
        except BackendUnavailable as exc:
            # The job is trashed on the board; only its copy on the dead-letter topic is lost.
            logger.error("job %s trashed, but not dead-lettered: %s", data["id"], exc)


class LogSubscription(Subscription):
    """A ``stream()``'s notifications: waiting for one long-polls the state topic."""

    def __init__(self, log: StateLog) -> None:
        super().__init__()
        self._log = log
        # Kept across calls: the stream cancels each receive at its own deadline.
        self._backoff = Backoff(first=0.5, most=5.0)

    async def receive(self) -> JobNotification:
        """The next notification, folding the state topic while there is none."""
        while True:
            try:
                return self._receive.receive_nowait()
            except anyio.WouldBlock:
                pass
            if self.ended or self._log.closed:
                raise anyio.EndOfStream
            try:
                await self._log.pull(0.25)
            except BoardClosed:
                raise anyio.EndOfStream from None
            except BackendUnavailable as exc:
                logger.warning("%s; retrying", exc)
                self.lost = True
                # Backoff: a broker that keeps failing is not asked again at once.
                await self._backoff.sleep()
            else:
                self._backoff.reset()
