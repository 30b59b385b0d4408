"""Retention: how long finished jobs are kept, and the conductor service that purges them.

Every conductor runs the purger, but only one purges at a time: the live conductor (as the
board's registry lists them) with the smallest owner id. A fleet elects it without talking, so
a hundred conductors do not purge the same rows at once; when it stops, the next one takes over
within a heartbeat. Purges go in bounded batches (:meth:`JobBoard.purge`), so a backlog of a
million finished jobs never holds a lock or the event loop for long.
"""

from __future__ import annotations

import logging
import math
from dataclasses import KW_ONLY
from dataclasses import dataclass

import anyio

from aioconductor.boards._purging import PURGE_BATCH
from aioconductor.boards._purging import LogBookDeleter
from aioconductor.boards.base import JobBoard
from aioconductor.conductor.stats import ConductorStats
from aioconductor.errors import AioconductorError
from aioconductor.errors import ConfigurationError
from aioconductor.events import Event
from aioconductor.events import Notifier
from aioconductor.models import JobState

__all__ = ["DAY", "LEAD_CHECK", "Purger", "Retention"]

logger = logging.getLogger("aioconductor.conductor")

#: Seconds in a day.
DAY = 86_400.0
#: How often (seconds) a conductor that does not purge asks the registry whether it should.
LEAD_CHECK = 5.0
#: The purger's pause between rounds is a tenth of the shortest retention, within these bounds.
_MIN_INTERVAL = 0.1
_MAX_INTERVAL = 300.0


@dataclass(frozen=True, slots=True)
class Retention:
    """How long a conductor fleet keeps finished jobs (and their logbooks) before purging them.

    Args:
        complete: seconds a ``COMPLETE`` job is kept after it ended; None keeps them all.
        trashed: seconds a ``TRASHED`` job is kept after it was trashed; None keeps them all.
        interval: seconds between purge rounds; by default a tenth of the shorter of the two,
            from 0.1 s to 5 minutes.
        batch: the most jobs one purge step deletes.

    Raises:
        ConfigurationError: a negative or non-finite age, a non-positive interval, or a batch
            outside 1 to 10,000.
    """

    complete: float | None = 7 * DAY
    trashed: float | None = 30 * DAY
    interval: float | None = None
    batch: int = PURGE_BATCH

    def __post_init__(self) -> None:
        for what, value in (("complete", self.complete), ("trashed", self.trashed)):
            if value is not None and not _seconds(value, allow_zero=True):
                raise ConfigurationError(f"Retention.{what} must be seconds >= 0, got {value!r}")
        if self.interval is not None and not _seconds(self.interval, allow_zero=False):
            raise ConfigurationError(f"Retention.interval must be seconds > 0: {self.interval!r}")
        batch = self.batch
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 10_000:
            raise ConfigurationError(f"Retention.batch must be from 1 to 10,000, got {batch!r}")

    @property
    def ages(self) -> dict[JobState, float]:
        """The kept seconds of each final state that is purged at all."""
        ages = {JobState.COMPLETE: self.complete, JobState.TRASHED: self.trashed}
        return {state: age for state, age in ages.items() if age is not None}

    @property
    def every(self) -> float | None:
        """Seconds between purge rounds (None when nothing is ever purged)."""
        if self.interval is not None:
            return self.interval
        if not self.ages:
            return None
        return min(_MAX_INTERVAL, max(_MIN_INTERVAL, min(self.ages.values()) / 10))


def _seconds(value: object, *, allow_zero: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and (value >= 0 if allow_zero else value > 0)


@dataclass(eq=False)
class Purger:
    """A conductor's purge service: every :attr:`Retention.every` seconds, if this conductor
    is the one that purges, delete what ``retention`` no longer keeps.

    Args:
        owner: this conductor's owner id on the board.
        store: where the purged jobs' logbooks are deleted.
    """

    retention: Retention
    _: KW_ONLY
    board: JobBoard
    store: LogBookDeleter | None
    owner: str
    conductor: str
    notifier: Notifier
    stats: ConductorStats

    async def run(self) -> None:
        """Purge round after round, until cancelled; a failed round is logged and retried
        (a bug in a round too: retention is not worth stopping the conductor for)."""
        every = self.retention.every
        if every is None:
            return
        leads, follows_until = False, -math.inf
        while True:
            await anyio.sleep(every)
            try:
                # The purger asks the registry every round; the others once a LEAD_CHECK:
                # short retentions purge often, and a read of the registry is a write on Kafka.
                now = anyio.current_time()
                if leads or now >= follows_until:
                    leads = await self.leads()
                    follows_until = now + LEAD_CHECK
                if leads:
                    await self.purge_once()
            except AioconductorError as exc:
                logger.warning("conductor %s: purge failed (%r)", self.conductor, exc)
            except Exception:
                logger.exception("conductor %s: purge failed", self.conductor)

    async def leads(self) -> bool:
        """Whether this conductor is the one that purges now: the smallest owner id among
        the live conductors (itself included, registered or not yet)."""
        owners = {info.owner for info in await self.board.conductors()}
        owners.add(self.owner)
        return min(owners) == self.owner

    async def purge_once(self) -> dict[JobState, int]:
        """One round: purge each final state past its age; how many jobs of each went."""
        purged: dict[JobState, int] = {}
        for state, age in self.retention.ages.items():
            purged[state] = await self.board.purge(
                older_than=age, states=(state,), store=self.store, batch=self.retention.batch
            )
            self.stats.purged += purged[state]
        total = sum(purged.values())
        if total:
            logger.info(
                "conductor %s: purged %d finished jobs (%s)",
                self.conductor,
                total,
                ", ".join(f"{count} {state}" for state, count in purged.items()),
            )
            details = {state.value.lower(): count for state, count in purged.items()}
            await self.notifier.notify(Event.JOBS_PURGED, {"conductor": self.conductor, **details})
        return purged
