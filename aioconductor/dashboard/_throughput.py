"""The throughput chart's counts, read incrementally: a minute that is over is read once and
kept, so a poll reads only the minutes still open, not the whole hour's finished jobs.

A kept minute is not read again: a job purged after its minute closed stays counted in it
(the chart says how many jobs ended in that minute, not how many are still on the board), and a
job stamped more than :data:`GRACE` seconds into the past by a clock that lags the board's
would be missed.
"""

from __future__ import annotations

import math

from aioconductor.boards.base import JobBoard
from aioconductor.dashboard._views import CHART_BUCKET
from aioconductor.dashboard._views import chart_since
from aioconductor.models import EndedCount

__all__ = ["GRACE", "ThroughputCounts"]

#: How long after a minute's end its count may still change (stamps in flight, clock skew).
GRACE = 5.0


class ThroughputCounts:
    """The jobs ended per minute and ending over the chart's hour, for one board."""

    def __init__(self) -> None:
        #: The counts of the minutes that are over, oldest first.
        self._kept: list[EndedCount] = []
        #: The start of the oldest minute not kept (None: nothing kept yet).
        self._kept_until: float | None = None

    async def counts(self, board: JobBoard, now: float) -> list[EndedCount]:
        """The chart's counts at ``now`` (epoch seconds), oldest minute first."""
        since = chart_since(now)
        start = since if self._kept_until is None else max(since, self._kept_until)
        fresh = await board.ended_counts(start, bucket=CHART_BUCKET)
        # Minutes starting before this are over (and past their grace): keep them.
        closed = math.floor((now - GRACE) / CHART_BUCKET) * CHART_BUCKET
        kept = [c for c in self._kept if c.start >= since]
        kept += [c for c in fresh if c.start < closed]
        self._kept, self._kept_until = kept, max(start, closed)
        return kept + [c for c in fresh if c.start >= closed]
