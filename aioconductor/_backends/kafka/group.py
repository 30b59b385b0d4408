"""The Kafka board's consumer-group member: partition assignment and committed offsets.

The conductors of one board form a consumer group on the jobs topic. The partitions assigned to
a member are its coarse claim: ``claim_next`` takes jobs from them first (and takes from other
partitions only when its own have nothing claimable). The fine claim is the token on the state
topic, so a rebalance never lets two owners run one job.

The member reads the jobs records of its partitions and tracks them as in flight. An offset is
committed only when every job at or below it is finished (``COMPLETE`` or ``TRASHED`` in the
view, or purged), so the group's lag is the number of jobs not yet finished, and a member that
takes over a partition starts at the oldest unfinished job. A job the view does not know is
purged if the view read its post record (the jobs record carries its offset, ``seq``), else not
folded yet; for a jobs record written before records carried it, a sync of the state log
started after the record was read settles it. Commits happen at most every
``COMMIT_INTERVAL`` seconds, when the partitions are revoked, and when the member stops.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]
from aiokafka.errors import ConsumerStoppedError  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata  # type: ignore[import-untyped]
from aiokafka.structs import TopicPartition

from aioconductor._backends.kafka.view import JobView

__all__ = ["COMMIT_INTERVAL", "GroupMember"]

logger = logging.getLogger("aioconductor.boards.kafka")

COMMIT_INTERVAL = 1.0
#: The longest a commit waits for the state log's sync (only for jobs records without ``seq``).
_SYNC_TIMEOUT = 5.0
#: How often a skipped offset of the jobs topic is fetched again before it is let go.
_GAP_RETRIES = 200


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped base
    def __init__(self, member: GroupMember) -> None:
        self._member = member

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Commit what is finished before another member takes the partitions over.
        await self._member.commit(force=True)
        for tp in revoked:
            self._member.forget(tp.partition)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        for tp in assigned:
            self._member.forget(tp.partition)


@dataclass(eq=False)
class GroupMember:
    """This board instance's member of the jobs topic's consumer group.

    Args:
        view: the state view, which says whether a job is finished.
        topic: the jobs topic.
        url: the broker URL, for messages.
        consumer_config: keyword arguments for ``AIOKafkaConsumer`` (with ``group_id``).
        sync: brings the view up to every state record acknowledged before it was called.
    """

    view: JobView
    topic: str
    url: str
    consumer_config: dict[str, Any]
    sync: Callable[[], Awaitable[None]]
    _consumer: AIOKafkaConsumer | None = field(init=False, default=None)
    #: partition -> (offset, job id, seq) of jobs records read and not yet committed past.
    _in_flight: dict[int, collections.deque[tuple[int, str, int | None]]] = field(
        init=False, default_factory=dict
    )
    #: partition -> the offset after the last record read.
    _read_to: dict[int, int] = field(init=False, default_factory=dict)
    #: partition -> the offset last committed by this member.
    _committed: dict[int, int] = field(init=False, default_factory=dict)
    _commit_at: float = field(init=False, default=0.0)
    _lock: anyio.Lock = field(init=False, default_factory=anyio.Lock)
    _gaps: dict[tuple[int, int], int] = field(init=False, default_factory=dict)
    _stopped: bool = field(init=False, default=False)

    async def start(self) -> None:
        """Join the group; the assignment arrives later, in the background (a join takes
        seconds: Tansu waits half the session timeout for more members)."""
        consumer = AIOKafkaConsumer(**self.consumer_config)
        try:
            # Started before it subscribes, so start() does not wait for the first assignment.
            await consumer.start()
            consumer.subscribe([self.topic], listener=_Listener(self))
        except BaseException as exc:
            # Shielded and bounded: a failed or cancelled join must still close its connections.
            with anyio.move_on_after(5, shield=True), contextlib.suppress(Exception):
                await consumer.stop()
            if isinstance(exc, KafkaError):
                logger.warning("Kafka at %s: joining the group failed: %r", self.url, exc)
                return
            raise
        if self._stopped:
            # The board closed while this member joined.
            with anyio.move_on_after(5, shield=True), contextlib.suppress(Exception):
                await consumer.stop()
            return
        self._consumer = consumer

    async def stop(self) -> None:
        """Commit what is finished and leave the group."""
        self._stopped = True
        consumer = self._consumer
        if consumer is None:
            return
        # Shielded and bounded: leaving the group promptly hands the partitions over at once.
        with anyio.move_on_after(5, shield=True):
            with contextlib.suppress(Exception):
                await self.commit(force=True)
            self._consumer = None
            with contextlib.suppress(Exception):
                await consumer.stop()

    def assigned(self) -> frozenset[int]:
        """The jobs-topic partitions this member holds now."""
        consumer = self._consumer
        if consumer is None:
            return frozenset()
        return frozenset(tp.partition for tp in consumer.assignment())

    def forget(self, partition: int) -> None:
        """Drop the tracking of a partition (revoked, or assigned afresh)."""
        self._in_flight.pop(partition, None)
        self._read_to.pop(partition, None)
        self._committed.pop(partition, None)

    async def poll(self) -> None:
        """Read the jobs records fetched so far and commit what is finished, when due."""
        consumer = self._consumer
        # getmany() waits for an assignment; claim_next must not.
        if consumer is None or not consumer.assignment():
            return
        try:
            batch = await consumer.getmany(timeout_ms=0, max_records=10_000)
        except ConsumerStoppedError:
            return
        except KafkaError as exc:
            logger.warning("Kafka at %s: reading the jobs topic failed: %r", self.url, exc)
            return
        for tp, records in batch.items():
            queue = self._in_flight.setdefault(tp.partition, collections.deque())
            for record in records:
                expected = self._read_to.get(tp.partition)
                if expected is not None and record.offset < expected:
                    continue  # fetched again after a seek back
                if expected is not None and record.offset > expected and self._gap(tp, expected):
                    # A broker that shows a newer batch before an older one (Tansu does):
                    # read the skipped records before counting past them.
                    consumer.seek(tp, expected)
                    break
                if record.key is not None:
                    job_id = record.key.decode("utf-8", "replace")
                    queue.append((record.offset, job_id, _seq(record.value)))
                self._read_to[tp.partition] = record.offset + 1
        await self.commit()

    def _gap(self, tp: Any, expected: int) -> bool:
        retries = self._gaps.get((tp.partition, expected), 0)
        if retries >= _GAP_RETRIES:
            return False
        self._gaps = {(tp.partition, expected): retries + 1}
        return True

    def _committable(self, synced: dict[int, int]) -> dict[int, int]:
        """The offsets to commit; ``synced`` holds, per partition, the offset below which the
        view has folded every state record acknowledged before the jobs record was read."""
        offsets: dict[int, int] = {}
        for partition, queue in self._in_flight.items():
            while queue:
                read_at, job_id, seq = queue[0]
                finished = self.view.finished(job_id, seq)
                if finished is None:
                    finished = read_at < synced.get(partition, 0)
                if not finished:
                    break
                queue.popleft()
            offset = queue[0][0] if queue else self._read_to.get(partition)
            if offset is not None and offset != self._committed.get(partition):
                offsets[partition] = offset
        return offsets

    async def commit(self, *, force: bool = False) -> None:
        """Commit, for each partition held, the offset of its oldest unfinished job."""
        consumer = self._consumer
        now = anyio.current_time()
        if consumer is None or (not force and now < self._commit_at):
            return
        self._commit_at = now + COMMIT_INTERVAL
        async with self._lock:
            # Drop the finished jobs first: a job the view cannot judge may sit behind them.
            offsets = self._committable({})
            heads = [q[0] for q in self._in_flight.values() if q]
            if any(self.view.finished(job_id, seq) is None for _, job_id, seq in heads):
                # A job the view does not know, from a jobs record without its seq: purged, or
                # not folded yet. A sync started after the record was read settles it.
                read = dict(self._read_to)
                with anyio.move_on_after(_SYNC_TIMEOUT), contextlib.suppress(Exception):
                    await self.sync()
                    offsets = self._committable(read)
            held = self.assigned()
            offsets = {p: o for p, o in offsets.items() if p in held}
            if not offsets:
                return
            try:
                await consumer.commit(
                    {
                        TopicPartition(self.topic, p): OffsetAndMetadata(o, "")
                        for p, o in offsets.items()
                    }
                )
            except KafkaError as exc:
                # A rebalance in progress: the next member commits from the view just the same.
                logger.info("Kafka at %s: offset commit skipped: %r", self.url, exc)
                return
            self._committed.update(offsets)


def _seq(value: bytes | None) -> int | None:
    """The ``seq`` of a jobs record's value (None in records written before it was there)."""
    try:
        seq = json.loads(value or b"").get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None
