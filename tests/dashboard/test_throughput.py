"""The throughput chart's counts, read incrementally: each minute that is over is read once."""

from __future__ import annotations

import math

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
        # Only the minute still open (or within its grace) and the one before it were read.
        assert since >= math.floor((now - GRACE) / CHART_BUCKET) * CHART_BUCKET - CHART_BUCKET
        board.asked.pop()  # the check's own full read


async def test_minutes_older_than_the_hour_leave_the_chart() -> None:
    board, counts = _Board(), ThroughputCounts()
    board.ended = [(T0 + 10, "SUCCESS")]
    assert sum(c.count for c in await counts.counts(board, T0 + 100)) == 1  # type: ignore[arg-type]
    later = T0 + 3700
    got = await counts.counts(board, later)  # type: ignore[arg-type]
    assert got == [] and board.asked[-1] == chart_since(later)
