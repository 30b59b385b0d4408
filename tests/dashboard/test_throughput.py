"""The throughput chart's counts, read incrementally: each minute that is over is read once."""

from __future__ import annotations

import math

import anyio

from aioconductor.dashboard._throughput import GRACE, ThroughputCounts
from aioconductor.dashboard._views import CHART_BUCKET, chart_since
from aioconductor.models import EndedCount

T0 = 1_800_000_000.0  # a minute boundary


class _Board:
    """Ends jobs at given times; ``ended_counts`` as a board answers it, each call recorded."""

    def __init__(self) -> None:
        self.ended: list[tuple[float, str]] = []
        self.asked: list[float] = []

    async def ended_counts(self, since: float, *, bucket: float) -> list[EndedCount]:
        self.asked.append(since)
        counts: dict[tuple[float, str], int] = {}
        for at, ending in self.ended:
            if at >= since:
                start = math.floor(at / bucket) * bucket
                counts[start, ending] = counts.get((start, ending), 0) + 1
        found = [EndedCount(start=s, ending=e, count=n) for (s, e), n in counts.items()]
        return sorted(found, key=lambda c: (c.start, c.ending))


async def _full(board: _Board, now: float) -> list[EndedCount]:
    return await board.ended_counts(chart_since(now), bucket=CHART_BUCKET)


async def test_each_poll_reads_only_the_minutes_still_open() -> None:
    board, counts = _Board(), ThroughputCounts()
    board.ended = [(T0 - 3000 + n * 7.0, ("SUCCESS", "FAILURE")[n % 3 == 0]) for n in range(400)]
    now = T0 + 30
    first = await counts.counts(board, now)  # type: ignore[arg-type]
    assert board.asked == [chart_since(now)]
    assert first == await _full(board, now)
    for step in range(1, 200):
        now += 3.1
        board.ended.append((now - 0.5, "SUCCESS"))
        if step % 7 == 0:
            board.ended.append((now - GRACE / 2, "TRASHED"))  # late, within the grace
        got = await counts.counts(board, now)  # type: ignore[arg-type]
        since = board.asked[-1]
        assert got == await _full(board, now)
        # Only the minutes still open were read: by the dashboard's clock (and its grace), or
        # up to the board's newest stamped minute and the one before it.
        newest = math.floor(max(at for at, _ in board.ended) / CHART_BUCKET) * CHART_BUCKET
        open_from = min(math.floor((now - GRACE) / CHART_BUCKET) * CHART_BUCKET, newest)
        assert step == 1 or since >= open_from - 2 * CHART_BUCKET  # (the board was quiet)
        board.asked.pop()  # the check's own full read


async def test_minutes_older_than_the_hour_leave_the_chart() -> None:
    board, counts = _Board(), ThroughputCounts()
    board.ended = [(T0 + 10, "SUCCESS")]
    assert sum(c.count for c in await counts.counts(board, T0 + 100)) == 1  # type: ignore[arg-type]
    later = T0 + 3700
    got = await counts.counts(board, later)  # type: ignore[arg-type]
    assert got == [] and board.asked[-1] == chart_since(later)


class _SlowBoard(_Board):
    """Answers ``ended_counts`` after the delays given, one per call."""

    def __init__(self, delays: list[float]) -> None:
        super().__init__()
        self.delays = delays

    async def ended_counts(self, since: float, *, bucket: float) -> list[EndedCount]:
        found = await super().ended_counts(since, bucket=bucket)
        await anyio.sleep(self.delays.pop(0) if self.delays else 0)
        return found


async def test_two_polls_at_once_count_each_minute_once() -> None:
    board, counts = _SlowBoard([0, 0.05, 0.01]), ThroughputCounts()
    board.ended = [(T0 - 3000 + n * 60.0, "SUCCESS") for n in range(50)]
    now = T0 + 30
    await counts.counts(board, now)  # type: ignore[arg-type]
    board.ended += [(T0 + 35.0, "SUCCESS"), (T0 + 95.0, "SUCCESS")]
    got: list[list[EndedCount]] = []

    async def poll(at: float) -> None:
        got.append(await counts.counts(board, at))  # type: ignore[arg-type]

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll, now + 100)
        tg.start_soon(poll, now + 101)
    later = now + 102
    for shown in [*got, await counts.counts(board, later)]:  # type: ignore[arg-type]
        assert sum(c.count for c in shown) == 52
        assert len({(c.start, c.ending) for c in shown}) == len(shown)


async def test_a_board_clock_behind_the_dashboards_loses_no_job() -> None:
    """The board stamps endings with its own clock (PostgreSQL's server, Redis's): 20 s behind
    the dashboard, a minute is not kept until the board has stamped a later one."""
    board, counts = _Board(), ThroughputCounts()
    board_time = T0
    for _ in range(12 * 30):  # 30 minutes, a poll every 5 s, a job ending every second
        for _ in range(5):
            board_time += 1.0
            board.ended.append((board_time, "SUCCESS"))
        shown = await counts.counts(board, board_time + 20)  # type: ignore[arg-type]
        assert sum(c.count for c in shown) == len(board.ended)
