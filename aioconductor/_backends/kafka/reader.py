"""The Kafka board's state-topic reader: fetches of its own, folded into the view.

The state topic has one partition. The reader sends its own fetch requests (through an
unassigned consumer's client, so no background fetcher runs) at the view's next offset, in two
lanes, and folds what they bring under one lock: each record is applied once, in order, by
whoever holds the lock.

- **catch-up**: a write or read that knows the offset it needs (an acknowledged record of its
  own) fetches with a short broker wait (from :data:`SHORT_WAIT_MS`), under the lock, until the
  view has it, so it returns as soon as its record is folded instead of waiting out the
  broker's fetch wait. An empty answer backs the lane off: the next fetch waits twice as long
  on the broker (up to :data:`LONGEST_WAIT_MS`) and starts no sooner than the last one's wait
  is over, for every waiter, a lone one included; so a broker that answers empty for seconds
  (Tansu does, for an offset it acknowledged) is not asked in a hot loop. Any fold wakes the
  waiters early.
- **poll**: a ``stream()`` waiting for news sends one long poll (``fetch_wait_ms``) at a time,
  on a connection of its own and outside the lock (catch-ups go on meanwhile, not queued behind
  it), and folds its answer under the lock; records the view got meanwhile are skipped.

An error of one lane's fetch is raised to its caller only: the other lane's waiters go on. A
catch-up does not give up on a failed fetch (a connection reset, a leader moving): its record is
acknowledged, so the write it serves has landed and must not be reported failed while the
broker can still deliver it; it fetches again (after a pause that grows from
:data:`RETRY_PAUSE`, cut short by any fold) until ``CATCH_UP_TIMEOUT``. A failure of the fold
itself (a bug: the view is no longer trusted), or a log that no longer holds what the view
folded (the topic recreated), is kept, and every waiter, present and future, is woken with it
(``BoardError``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any, NoReturn

import anyio
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka import errors as kafka_errors
from aiokafka.client import ConnectionGroup  # type: ignore[import-untyped]
from aiokafka.protocol.fetch import FetchRequest  # type: ignore[import-untyped]
from aiokafka.record.memory_records import MemoryRecords  # type: ignore[import-untyped]
from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]

from aioconductor._backends.base import map_exceptions
from aioconductor._backends.kafka.records import clock_ms
from aioconductor._backends.kafka.setup import errors
from aioconductor._backends.kafka.view import JobView
from aioconductor.errors import BackendUnavailable
from aioconductor.errors import BoardClosed
from aioconductor.errors import BoardError

__all__ = ["CATCH_UP_TIMEOUT", "COMPACTION_LAG_MS", "GAP_BUDGET", "Fetched", "StateReader"]

logger = logging.getLogger("aioconductor.boards.kafka")

#: How long a write or read waits for the view to reach its record before giving up.
CATCH_UP_TIMEOUT = 30.0
#: The broker's wait (ms) of a catch-up fetch, first and longest: the offset is known to be
#: acknowledged, so the broker answers as soon as it finds the records; an empty answer doubles
#: the wait (Tansu takes longer to find records the more batches the partition holds, and
#: answers empty when the wait ends first), eight answers with records in a row halve it.
SHORT_WAIT_MS = 1
LONGEST_WAIT_MS = 100
_DECAY_AFTER = 8
#: The state topic's ``min.compaction.lag.ms``: a gap among younger records is no compaction.
COMPACTION_LAG_MS = 3_600_000
GAP_AGE_MS = COMPACTION_LAG_MS // 2
#: How long (s) the reader fetches a gap among recent records again before it goes on.
GAP_BUDGET = 10.0
#: The first and longest pause (s) of a catch-up after a failed fetch.
RETRY_PAUSE = 0.05
LONGEST_RETRY_PAUSE = 1.0
#: A pull this short (s) or shorter is a catch-up fetch, not a long poll.
_SHORT_PULL = 0.005

#: One fetched record: (offset, key, value, timestamp in ms).
Fetched = tuple[int, bytes | None, bytes | None, int]


@dataclass(eq=False)
class StateReader:
    """The state topic's reader and fold of one board instance.

    Args:
        view: the fold the records go into.
        topic: the state topic (one partition).
        url: the broker URL for messages.
        consumer_config: keyword arguments of the ``AIOKafkaConsumer`` whose client fetches.
        fetch_wait_ms: the long poll's broker wait.
        max_bytes: the most a fetch brings (at least the largest record).
    """

    view: JobView
    topic: str
    url: str
    consumer_config: dict[str, Any]
    fetch_wait_ms: int
    max_bytes: int
    _consumer: AIOKafkaConsumer | None = field(init=False, default=None)
    _tp: TopicPartition = field(init=False)
    _lock: anyio.Lock = field(init=False, default_factory=anyio.Lock)
    #: Set (and replaced) when the view moves on or the fold fails.
    _changed: anyio.Event = field(init=False, default_factory=anyio.Event)
    _failed: BoardError | None = field(init=False, default=None)
    _polling: bool = field(init=False, default=False)
    #: The catch-up lane's broker wait (ms), answers with records since it last changed,
    #: and the time (monotonic) before which it does not fetch (after an empty answer).
    _wait_ms: int = field(init=False, default=SHORT_WAIT_MS)
    _good: int = field(init=False, default=0)
    _not_before: float = field(init=False, default=0.0)
    #: The log's first offset (records below it are gone for good).
    _start: int = field(init=False, default=0)
    #: expected offset -> when (monotonic) a fetch first skipped past it (see ``_gap``).
    _gap_since: dict[int, float] = field(init=False, default_factory=dict)
    closed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._tp = TopicPartition(self.topic, 0)

    async def start(self) -> None:
        """Connect (the view is rebuilt from the start of the topic)."""
        consumer = AIOKafkaConsumer(**self.consumer_config)
        with map_exceptions(errors(self.url, "starting the state reader")):
            await consumer.start()
        try:
            with map_exceptions(errors(self.url, "reading the state topic")):
                await consumer._client._wait_on_metadata(self.topic)
        except BaseException:
            with anyio.move_on_after(5, shield=True):
                await consumer.stop()
            raise
        self._consumer = consumer

    async def stop(self) -> None:
        """Close the reader; waiters get ``BoardClosed``."""
        self.closed = True
        self._wake()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            # Stopping only closes sockets; shielded so a cancelled close still frees them.
            with anyio.move_on_after(5, shield=True), contextlib.suppress(Exception):
                await consumer.stop()

    # -- the lanes -----------------------------------------------------------------------------

    async def catch_up(self, offset: int) -> None:
        """Return once the view has applied the record at ``offset`` (an acknowledged one).

        Raises:
            BackendUnavailable: the view did not get there within ``CATCH_UP_TIMEOUT`` (the last
                failed fetch, if any, as its cause).
            BoardError: the fold failed.
            BoardClosed: the reader is closed.
        """
        self._check()
        if self.view.next_offset > offset:
            return
        failed: BackendUnavailable | None = None
        retry_pause = RETRY_PAUSE
        with anyio.move_on_after(CATCH_UP_TIMEOUT):
            while True:
                self._check()
                if self.view.next_offset > offset:
                    return
                changed = self._changed
                pause = self._not_before - time.monotonic()
                if pause > 0:
                    # Backing off: woken early by any fold (or a failure).
                    with anyio.move_on_after(pause):
                        await changed.wait()
                    continue
                try:
                    await self._short(offset)
                except BackendUnavailable as exc:
                    if failed is None:
                        logger.info("%s; fetching again", exc)
                    failed = exc
                    with anyio.move_on_after(retry_pause):
                        await changed.wait()
                    retry_pause = min(LONGEST_RETRY_PAUSE, retry_pause * 2)
        raise BackendUnavailable(
            f"Kafka at {self.url}: the state topic did not deliver offset {offset} within "
            f"{CATCH_UP_TIMEOUT:.0f} s"
        ) from failed

    async def _short(self, until: int | None) -> bool:
        """One catch-up fetch, folded; whether the view moved on."""
        async with self._lock:
            self._check()
            if until is not None and self.view.next_offset > until:
                return False
            if self._not_before > time.monotonic():
                return False  # someone else's fetch just came back empty
            wait = self._wait_ms
            started = time.monotonic()
            records = await self._fetch(wait)
            self._check()
            moved = self._fold(records)
            if until is None:
                # A sweep finding nothing new is the normal answer of an idle log, not a
                # broker that answers empty for an acknowledged offset: no backoff.
                return moved
            if moved:
                self._good += 1
                if self._good >= _DECAY_AFTER:
                    self._good, self._wait_ms = 0, max(SHORT_WAIT_MS, wait // 2)
            else:
                # Backoff: the next fetch waits twice as long on the broker, and none starts
                # before this one's wait is over (a broker may answer empty at once).
                self._good, self._wait_ms = 0, min(LONGEST_WAIT_MS, wait * 2)
                self._not_before = started + wait / 1000
            return moved

    async def pull(self, wait: float) -> bool:
        """Fold what the log has, waiting up to ``wait`` s for news; whether the view moved.

        A ``wait`` of a few ms or less is one catch-up fetch; a longer one is the long poll
        (one at a time: other callers wait for its news, or for any fold).
        """
        self._check()
        if wait <= _SHORT_PULL:
            if self._not_before > time.monotonic():
                return False
            return await self._short(None)
        before = self.view.next_offset
        if self._polling:
            with anyio.move_on_after(wait):
                await self._changed.wait()
            self._check()
            return self.view.next_offset > before
        self._polling = True
        wait_ms = min(self.fetch_wait_ms, int(wait * 1000))
        started = time.monotonic()
        try:
            records = await self._fetch(wait_ms, poll=True)
        finally:
            self._polling = False
        async with self._lock:
            self._check()
            changed = self._changed
            if self._fold(records):
                return True
        # An answer that came early and moved nothing (a gap the fold waits out): sit out the
        # rest of the wait, woken by any fold, so the caller's next poll is no hot loop.
        rest = wait_ms / 1000 - (time.monotonic() - started)
        if rest > 0:
            with anyio.move_on_after(rest):
                await changed.wait()
            self._check()
        return self.view.next_offset > before

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the fold (nothing is folded meanwhile)."""
        async with self._lock:
            yield

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self.closed:
            raise BoardClosed()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- fetching and folding ------------------------------------------------------------------

    async def _fetch(self, wait_ms: int, *, poll: bool = False) -> list[Fetched]:
        """The records a fetch at the view's next offset brings (the broker waits up to
        ``wait_ms`` for some). The long poll (``poll``) has a connection of its own: a broker
        answers one connection's requests in order, so a catch-up fetch queued behind a long
        poll would wait it out."""
        consumer = self._consumer
        if consumer is None:
            raise BoardClosed()
        offset = max(self.view.next_offset, self._start)
        try:
            with map_exceptions(errors(self.url, "reading the state topic")):
                return await self._fetch_at(consumer, offset, wait_ms, poll)
        except BackendUnavailable:
            if self.closed:
                # The board closed while this fetch was in flight (its connection went).
                raise BoardClosed() from None
            raise

    async def _fetch_at(
        self, consumer: AIOKafkaConsumer, offset: int, wait_ms: int, poll: bool
    ) -> list[Fetched]:
        client = consumer._client
        node = client.cluster.leader_for_partition(self._tp)
        if node is None or node == -1:
            await client.force_metadata_update()
            node = client.cluster.leader_for_partition(self._tp)
            if node is None or node == -1:
                raise kafka_errors.LeaderNotAvailableError(self.topic)
        partition = (0, offset, self.max_bytes)
        request = FetchRequest(wait_ms, 1, self.max_bytes, 0, [(self.topic, [partition])])
        group = ConnectionGroup.COORDINATION if poll else ConnectionGroup.DEFAULT
        response = await client.send(node, request, group=group)
        found: list[Fetched] = []
        for _topic, partitions in response.topics:
            for _partition, code, _highwater, *data in partitions:
                error = kafka_errors.for_code(code)
                if error is kafka_errors.OffsetOutOfRangeError:
                    # Below the log's start: the records there are gone (deleted, not lost).
                    starts = await consumer.beginning_offsets([self._tp])
                    if offset >= starts[self._tp]:
                        # Above the log's end: the log lost what the view folded.
                        self._fail(f"it ends below offset {offset}, which this view has read")
                    self._start = max(self._start, starts[self._tp])
                    continue
                if error is not kafka_errors.NoError:
                    if error.retriable or error.invalid_metadata:
                        client.force_metadata_update()
                    raise error()
                records = MemoryRecords(data[-1])
                while (batch := records.next_batch()) is not None:
                    found.extend((r.offset, r.key, r.value, r.timestamp) for r in batch)
        return found

    def _fold(self, records: list[Fetched]) -> bool:
        """Apply the new ones of ``records`` (fetched at some earlier next offset); whether the
        view moved on. No await: the fold of one fetch is atomic for this process."""
        view = self.view
        before = view.next_offset
        for offset, key, value, ts_ms in records:
            expected = view.next_offset
            if offset < expected:
                continue  # the view has it (fetched by the other lane, or again)
            if offset > expected and expected >= self._start and self._gap(expected, ts_ms):
                break  # the next fetch starts at the gap again
            try:
                view.apply(offset, key, value, ts_ms)
            except Exception as exc:
                self._fail(f"folding offset {offset} failed ({exc!r})", exc)
        moved = view.next_offset > before
        if moved:
            self._not_before = 0.0
            self._wake()
        return moved

    def _fail(self, why: str, cause: BaseException | None = None) -> NoReturn:
        """Stop trusting the view: every waiter, present and future, gets the error."""
        self._failed = BoardError(
            f"Kafka at {self.url}: reading {self.topic}: {why}; this board instance's view is "
            "no longer trusted: reopen it"
        )
        logger.error("%s", self._failed)
        self._wake()
        raise self._failed from cause

    def _gap(self, expected: int, ts_ms: int) -> bool:
        """Whether a fetch that skipped from ``expected`` to a record stamped ``ts_ms`` must be
        read again.

        Compaction leaves gaps, but never among records younger than the topic's
        ``min.compaction.lag.ms`` (the board sets an hour). A gap there is a broker that
        answered a fetch with a newer batch before an older one was visible (Tansu 0.6 does,
        under concurrent producers): fetch again, for at most ``GAP_BUDGET`` seconds.
        """
        if clock_ms() - ts_ms > GAP_AGE_MS:
            return False
        now = time.monotonic()
        since = self._gap_since.get(expected)
        if since is None:
            self._gap_since = {expected: now}
            return True
        if now - since < GAP_BUDGET:
            return True
        logger.warning(
            "Kafka at %s: offsets from %d of %s never arrived within %.0f s; going on without them",
            self.url,
            expected,
            self.topic,
            GAP_BUDGET,
        )
        return False
