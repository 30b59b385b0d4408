"""A conductor's scheduler: posts each due tick of its schedules through ``board.post_tick``.

Every conductor handed a schedule runs this; the board decides which of them posts a tick (its
last tick advances in the same atomic step as the post), so the fleet posts each tick once.
A conductor remembers the last tick it saw posted, by itself or another, and asks the board
only when a tick is due: one call per conductor per tick.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import KW_ONLY
from dataclasses import dataclass
from dataclasses import field

from aioconductor.boards.base import JobBoard
from aioconductor.conductor.stats import ConductorStats
from aioconductor.errors import AioconductorError
from aioconductor.events import Event
from aioconductor.events import Notifier
from aioconductor.schedules import Clock
from aioconductor.schedules import Schedule

__all__ = ["RETRY_AFTER", "Scheduler"]

logger = logging.getLogger("aioconductor.conductor")

#: Seconds before a round that failed (the board unreachable) is tried again.
RETRY_AFTER = 1.0


@dataclass(eq=False)
class Scheduler:
    """Posts the due ticks of ``schedules`` until cancelled.

    A schedule that never posted on this board starts with the first tick after the scheduler
    was made (when its conductor's ``run`` began); one that did resumes after its last posted
    tick: the latest missed tick is posted (every missed one, at most ``MAX_CATCH_UP``, with
    ``catch_up``).
    """

    schedules: Sequence[Schedule]
    _: KW_ONLY
    board: JobBoard
    clock: Clock
    conductor: str
    owner: str
    notifier: Notifier
    stats: ConductorStats
    #: schedule name -> the last tick this scheduler knows was posted.
    done: dict[str, float] = field(init=False, default_factory=dict)
    #: When the scheduler was made: a schedule new to the board starts after this.
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.schedules = list(self.schedules)
        self.started = self.clock.time()

    async def run(self) -> None:
        """Post due ticks, then sleep until the next one, until cancelled."""
        if not self.schedules:
            return
        while True:
            try:
                if not self.done:
                    last = await self.board.schedule_ticks()
                    self.done = {s.name: last.get(s.name, self.started) for s in self.schedules}
                await self.post_due()
            except AioconductorError as exc:
                logger.warning("conductor %s: schedules: %r", self.conductor, exc)
                await self.clock.sleep_until(self.clock.time() + RETRY_AFTER)
                continue
            # An absolute deadline: a clock that moved since it was read cannot make this
            # sleep past the tick.
            await self.clock.sleep_until(self.next_tick())

    async def post_due(self) -> None:
        """Post every schedule's due ticks (each tick once across the fleet)."""
        now = self.clock.time()
        for schedule in self.schedules:
            for tick in schedule.due(self.done[schedule.name], now):
                job = await self.board.post_tick(
                    schedule.name,
                    tick,
                    schedule.name,
                    schedule.flow,
                    schedule.job_args,
                    priority=schedule.priority,
                    max_attempts=schedule.max_attempts,
                    poster=self.owner,
                )
                self.done[schedule.name] = tick
                if job is None:
                    continue  # another conductor posted it
                self.stats.scheduled += 1
                logger.info(
                    "conductor %s: schedule %s posted job %s for %s",
                    self.conductor,
                    schedule.name,
                    job.id,
                    job.key,
                )
                details = {"schedule": schedule.name, "tick": tick, "job_id": job.id}
                await self.notifier.notify(Event.SCHEDULE_TICKED, details)

    def next_tick(self) -> float:
        """When the earliest tick after the last one posted falls (epoch seconds): a tick
        that came due since the clock was read is then in the past, and is posted at once."""
        now = self.clock.time()
        return min(s.next_after(self.done.get(s.name, now)) for s in self.schedules)

    def published(self) -> list[dict[str, object]]:
        """The schedules as a conductor publishes them with its heartbeat (with next ticks)."""
        now = self.clock.time()
        return [
            {**schedule.describe(), "next_tick": schedule.next_after(now)}
            for schedule in self.schedules
        ]
