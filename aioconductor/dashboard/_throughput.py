"""The throughput chart's counts, read incrementally: a minute that is over is read once and
kept, so a poll reads only the minutes still open, not the whole hour's finished jobs.

A minute is over when the dashboard's clock says so (:data:`GRACE` seconds after its end, for
stamps in flight) *and* the board has counted jobs in a later minute than the one after it:
the board stamps endings with its own clock (the server's, or the conductors'), which may run
behind the dashboard's, so until the board's own stamps have moved a minute past it, it is read
again. A kept minute is not read again: a job purged after its minute was kept stays counted in
it (the chart says how many jobs ended in that minute, not how many are still on the board).
Polls are served one at a time (another tab's poll waits for the read in flight).
"""

from __future__ import annotations

import math

import anyio

from aioconductor.boards.base import JobBoard
from aioconductor.dashboard._views import CHART_BUCKET
from aioconductor.dashboard._views import chart_since
from aioconductor.models import EndedCount

__all__ = ["GRACE", "ThroughputCounts"]

#: How long after a minute's end, by the dashboard's clock, its count may still change.
GRACE = 5.0


class ThroughputCounts:
    """The jobs ended per minute and ending over the chart's hour, for one board."""

    def __init__(self) -> None:
        #: The counts of the minutes that are over, by (minute start, ending).
        self._kept: dict[tuple[float, str], EndedCount] = {}
        #: The start of the oldest minute not kept (None: nothing kept yet).
        self._kept_until: float | None = None
        self._lock = anyio.Lock()

    async def counts(self, board: JobBoard, now: float) -> list[EndedCount]:
        """The chart's counts at ``now`` (the dashboard's epoch seconds), oldest minute first."""
        async with self._lock:
            since = chart_since(now)
            start = since if self._kept_until is None else max(since, self._kept_until)
            fresh = await board.ended_counts(start, bucket=CHART_BUCKET)
            # Over by the dashboard's clock, and the board has stamped a later minute since.
            closed = math.floor((now - GRACE) / CHART_BUCKET) * CHART_BUCKET
            newest = max((c.start for c in fresh), default=start)
            closed = max(start, min(closed, newest - CHART_BUCKET))
            kept = {key: c for key, c in self._kept.items() if c.start >= since}
            kept.update(((c.start, c.ending), c) for c in fresh if c.start < closed)
            self._kept, self._kept_until = kept, closed
            found = list(kept.values()) + [c for c in fresh if c.start >= closed]
            return sorted(found, key=lambda c: (c.start, c.ending))
