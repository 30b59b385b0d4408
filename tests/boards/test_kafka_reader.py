"""The Kafka board's state-topic reader (:mod:`aioconductor._backends.kafka.reader`): its two
fetch lanes, its backoff, its gap budget, a failed fold, and the producer's batch size.

Most run the reader against a scripted fetch (no broker); the last ones use the Tansu test
broker, whose fetches answer only when their wait is over.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from aioconductor._backends.kafka import reader as reader_module
from aioconductor._backends.kafka.reader import SHORT_WAIT_MS, Fetched, StateReader
from aioconductor._backends.kafka.setup import BATCH_OVERHEAD, batch_size
from aioconductor._backends.kafka.view import JobView
from aioconductor.errors import BackendUnavailable, BoardError
from aioconductor.models import NotificationKind
from tests.kafka_helpers import kafka_url, open_kafka_board, topic, unique_topic

__all__ = ["topic"]  # the fixture


def _sync(offset: int) -> Fetched:
    return (offset, b"~sync", b'{"op":"sync"}', int(time.time() * 1000))


class Script:
    """A fetch the test writes: ``answer(offset, wait_ms)`` gives the offsets (or raises)."""

    def __init__(self, reader: StateReader, answer: Callable[[int, int], list[int]]) -> None:
        self.reader = reader
        self.answer = answer
        self.fetches: list[tuple[int, int]] = []
        reader._fetch = self.fetch  # type: ignore[method-assign]

    async def fetch(self, wait_ms: int, *, poll: bool = False) -> list[Fetched]:
        offset = self.reader.view.next_offset
        self.fetches.append((offset, wait_ms))
        await anyio.lowlevel.checkpoint()
        if wait_ms > SHORT_WAIT_MS:
            await anyio.sleep(wait_ms / 1000)  # a long poll: Tansu answers when the wait is over
        return [_sync(o) for o in self.answer(offset, wait_ms)]


def _reader(fetch_wait_ms: int = 50) -> StateReader:
    view = JobView(lambda note: None)
    return StateReader(view, "t", "kafka://x", {}, fetch_wait_ms, 1 << 20)


def upto(end: int) -> Callable[[int, int], list[int]]:
    """A log of ``end`` records, each fetch answering all of them from its offset."""
    return lambda offset, wait_ms: list(range(offset, end))


async def test_catch_up_uses_short_fetches_and_the_long_poll_the_broker_wait() -> None:
    reader = _reader(fetch_wait_ms=50)
    script = Script(reader, upto(3))
    await reader.catch_up(2)
    assert script.fetches == [(0, SHORT_WAIT_MS)]
    assert await reader.pull(0.25) is False  # nothing new: the long poll waited 50 ms
    assert script.fetches[-1] == (3, 50)


async def test_the_reader_fetches_a_skipped_offset_again_instead_of_losing_it() -> None:
    reader = _reader()
    # The first fetch answers 0, 1, 3 (2 not yet visible, as Tansu does under concurrent
    # producers); the next ones everything from their offset.
    script = Script(reader, lambda o, w: [0, 1, 3] if o == 0 else list(range(o, 5)))
    await reader.catch_up(4)
    assert [o for o, _ in script.fetches] == [0, 2] and reader.view.next_offset == 5


async def test_the_gap_budget_is_time_not_a_count_of_fetches(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(reader_module, "GAP_BUDGET", 0.3)
    reader = _reader()
    # Offset 2 never arrives (a young record, so not compaction).
    script = Script(reader, lambda o, w: [r for r in range(o, 5) if r != 2])
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "aioconductor.boards.kafka"):
        await reader.catch_up(4)
    took = time.monotonic() - started
    # Short fetches come back at once: the budget is what bounds the wait, not a count.
    assert 0.3 <= took < 2 and reader.view.next_offset == 5
    assert "never arrived within" in caplog.text
    # ... and the fetches at the gap backed off meanwhile (no hot loop).
    assert 3 <= len(script.fetches) < 20


async def test_backoff_engages_for_a_lone_waiter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that answers empty for an acknowledged offset (Tansu, for seconds) is not
    asked in a hot loop, even by one waiter alone."""
    monkeypatch.setattr(reader_module, "CATCH_UP_TIMEOUT", 1.0)
    reader = _reader()
    script = Script(reader, lambda o, w: [])
    with pytest.raises(BackendUnavailable, match="did not deliver offset 0 within"):
        await reader.catch_up(0)
    # 1 ms doubling to 100 ms: some 17 fetches in a second (a hot loop makes thousands).
    assert 5 <= len(script.fetches) <= 25
    # Any record folded ends the backoff: the next waiter fetches at once.
    script.answer = upto(2)
    reader._not_before = 0.0  # as a fold by the other lane would
    with anyio.fail_after(0.5):
        await reader.catch_up(1)


async def test_an_empty_answer_doubles_the_broker_wait_and_records_halve_it_again() -> None:
    """Tansu takes longer to find records the more batches the partition holds and answers
    empty when the wait ends first: the catch-up then waits longer on the broker."""
    reader = _reader()
    empty = {"left": 3}

    def answer(offset: int, wait_ms: int) -> list[int]:
        if empty["left"]:
            empty["left"] -= 1
            return []
        return [offset]

    script = Script(reader, answer)
    await reader.catch_up(0)
    assert [w for _, w in script.fetches] == [1, 2, 4, 8]
    for offset in range(1, 9):
        await reader.catch_up(offset)
    assert [w for _, w in script.fetches[-2:]] == [8, 4]  # eight answers with records: halved


async def test_backoff_is_shared_and_a_fold_wakes_the_waiters_early() -> None:
    reader = _reader()
    answers: dict[str, bool] = {"ready": False}
    script = Script(reader, lambda o, w: list(range(o, 3)) if answers["ready"] else [])
    done: list[float] = []
    started = time.monotonic()

    async def waiter() -> None:
        await reader.catch_up(2)
        done.append(time.monotonic() - started)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(waiter)
        await anyio.sleep(0.5)
        empty = len(script.fetches)
        answers["ready"] = True
    # Ten waiters through half a second of empty answers: one backoff for all of them.
    assert empty <= 25
    assert len(done) == 10 and max(done) < 0.5 + 0.2


async def test_an_error_of_the_long_poll_does_not_fail_the_catch_ups() -> None:
    reader = _reader(fetch_wait_ms=100)

    def answer(offset: int, wait_ms: int) -> list[int]:
        if wait_ms > SHORT_WAIT_MS:
            raise BackendUnavailable("Kafka at kafka://x: the long poll failed")
        return list(range(offset, 3))

    Script(reader, answer)
    failed: list[BaseException] = []

    async def poll() -> None:
        try:
            await reader.pull(0.25)
        except BackendUnavailable as exc:
            failed.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await anyio.sleep(0.01)  # the poll is in flight
        with anyio.fail_after(1):
            await reader.catch_up(2)
    assert reader.view.next_offset == 3 and len(failed) == 1


async def test_an_error_of_a_catch_up_does_not_fail_the_stream_waiting_for_news(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reader_module, "CATCH_UP_TIMEOUT", 0.5)
    reader = _reader(fetch_wait_ms=100)
    state = {"end": 0}

    def answer(offset: int, wait_ms: int) -> list[int]:
        if wait_ms <= SHORT_WAIT_MS:
            raise BackendUnavailable("Kafka at kafka://x: a catch-up fetch failed")
        return list(range(offset, state["end"]))

    Script(reader, answer)
    moved: list[bool] = []

    async def poll() -> None:
        moved.append(await reader.pull(0.25))

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await anyio.sleep(0.01)
        state["end"] = 2  # news, while the poll is in flight
        with pytest.raises(BackendUnavailable, match="did not deliver offset 5") as raised:
            await reader.catch_up(5)
    assert "catch-up fetch failed" in str(raised.value.__cause__)
    assert moved == [True] and reader.view.next_offset == 2


async def test_a_failed_fetch_does_not_fail_an_acknowledged_write() -> None:
    """The record a catch-up waits for is acknowledged (its write landed): a fetch that fails
    (a connection reset) is tried again, not reported as the write's failure."""
    reader = _reader()
    failures = {"left": 3}

    def answer(offset: int, wait_ms: int) -> list[int]:
        if failures["left"]:
            failures["left"] -= 1
            raise BackendUnavailable("Kafka at kafka://x: connection reset")
        return list(range(offset, 3))

    script = Script(reader, answer)
    with anyio.fail_after(2):
        await reader.catch_up(2)
    assert len(script.fetches) == 4 and reader.view.next_offset == 3


async def test_idle_sweeps_do_not_back_the_catch_ups_off() -> None:
    """A sweep (``pull(0)``) that finds nothing new is an idle log, not a broker answering
    empty for an acknowledged offset: the next catch-up still fetches at once, briefly."""
    reader = _reader()
    state = {"end": 3}
    script = Script(reader, lambda o, w: list(range(o, state["end"])))
    await reader.catch_up(2)
    for _ in range(8):
        assert await reader.pull(0) is False
    state["end"] = 4
    with anyio.fail_after(0.05):
        await reader.catch_up(3)
    assert script.fetches[-1] == (3, SHORT_WAIT_MS)


async def test_the_long_poll_does_not_spin_on_a_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that answers at once with records past a gap the fold waits out: each poll
    sits out its wait instead of asking again at once."""
    monkeypatch.setattr(reader_module, "GAP_BUDGET", 5.0)
    reader = _reader(fetch_wait_ms=100)
    fetches: list[int] = []

    async def fetch(wait_ms: int, *, poll: bool = False) -> list[Fetched]:
        fetches.append(reader.view.next_offset)
        await anyio.lowlevel.checkpoint()
        return [_sync(o) for o in range(reader.view.next_offset, 5) if o != 2]

    monkeypatch.setattr(reader, "_fetch", fetch)
    with anyio.move_on_after(0.5):
        while True:  # as a stream's subscription polls
            await reader.pull(0.25)
    assert reader.view.next_offset == 2 and 3 <= len(fetches) <= 8


async def test_a_log_that_lost_what_the_view_read_fails_the_reader() -> None:
    """A fetch answered "out of range" above the log's start: the topic ends below what the
    view folded (recreated, truncated). Every waiter gets a BoardError, not a hot loop."""
    reader = _reader()
    reader.view.next_offset = 7

    class Cluster:
        def leader_for_partition(self, tp: Any) -> int:
            return 0

    class Client:
        cluster = Cluster()

        async def send(self, node: int, request: Any, group: Any = None) -> Any:
            response = type("Response", (), {})()
            response.topics = [("t", [(0, 1, 3, b"")])]  # 1: OFFSET_OUT_OF_RANGE, end 3
            return response

    class Consumer:
        _client = Client()

        async def beginning_offsets(self, partitions: list[Any]) -> dict[Any, int]:
            return {tp: 0 for tp in partitions}

    reader._consumer = Consumer()
    with pytest.raises(BoardError, match="ends below offset 7"):
        await reader.pull(0)
    with pytest.raises(BoardError, match="no longer trusted"):
        await reader.catch_up(9)


async def test_a_failed_fold_wakes_every_waiter_with_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader = _reader(fetch_wait_ms=100)
    state = {"end": 0}
    Script(reader, lambda o, w: list(range(o, state["end"])))
    apply = reader.view.apply

    def broken(offset: int, *args: Any) -> None:
        if offset == 2:
            raise KeyError("a bug in the fold")
        apply(offset, *args)

    monkeypatch.setattr(reader.view, "apply", broken)
    errors: list[BaseException] = []

    async def catch_up() -> None:
        try:
            await reader.catch_up(4)
        except BoardError as exc:
            errors.append(exc)

    async def poll() -> None:
        try:
            while True:
                await reader.pull(0.25)
        except BoardError as exc:
            errors.append(exc)

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(catch_up)
            tg.start_soon(poll)
            tg.start_soon(poll)  # waits for the first one's news
            await anyio.sleep(0.05)  # every waiter backs off on empty answers
            state["end"] = 5
    assert len(errors) == 7
    assert all("folding offset 2" in str(exc) for exc in errors)
    assert reader.view.next_offset == 2  # 0 and 1 were folded, nothing after the failure
    with pytest.raises(BoardError, match="no longer trusted"):
        await reader.catch_up(0 + 3)
    with pytest.raises(BoardError, match="no longer trusted"):
        await reader.catch_up(1)  # folded before the failure: the error all the same


def test_producer_batches_fit_the_state_topics_max_message_bytes() -> None:
    for payload in (1, 64 * 1024, 1 << 20, 8 << 20):
        record_limit = 2 * payload + 64 * 1024  # the board's max.message.bytes
        size = batch_size(record_limit)
        assert size + BATCH_OVERHEAD <= record_limit and size <= 1 << 20


# -- on the broker --------------------------------------------------------------------------


@pytest.mark.kafka
async def test_single_posts_and_reads_do_not_wait_out_the_fetch_wait(topic: str) -> None:
    # Tansu answers a fetch only when its wait is over: 500 ms here.
    async with open_kafka_board(kafka_url(topic, "tests", fetch_wait_ms=500)) as board:
        started = time.monotonic()
        jobs = [await board.post(f"j{i}", "f") for i in range(20)]
        for job in jobs:
            assert (await board.get(job.id)).id == job.id
        assert time.monotonic() - started < 5  # 40 verbs; waiting out the wait: 20 s
        # A stream still hears of a post made elsewhere, through its long poll.
        async with open_kafka_board(kafka_url(topic, "tests", fetch_wait_ms=500)) as other:
            async with contextlib.aclosing(board.stream()) as notes:
                posted = await other.post("late", "f")
                with anyio.fail_after(10):
                    async for note in notes:
                        if note.kind is NotificationKind.POSTED and note.job_id == posted.id:
                            break


@pytest.mark.kafka
async def test_post_many_of_large_jobs_fits_the_topics_limits() -> None:
    url = kafka_url(unique_topic("kafka"), "tests", max_payload_bytes=64 * 1024)
    async with open_kafka_board(url) as board:
        producer = board._link.producer
        assert producer is not None
        record_limit = board._link.settings.record_limit
        assert producer._message_accumulator._batch_size + BATCH_OVERHEAD <= record_limit
        args = [{"blob": "x" * 60_000, "i": i} for i in range(40)]
        jobs = await board.post_many("f", args)
        assert len({job.id for job in jobs}) == 40
        assert (await board.get(jobs[-1].id)).args == args[-1]
