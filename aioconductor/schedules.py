"""`Schedule`: a job posted at every tick of a cron expression or a fixed period.

Conductors handed schedules (``Conductor(..., schedules=[...])``) post each tick with
:meth:`JobBoard.post_tick <aioconductor.boards.base.JobBoard.post_tick>`: keyed
``schedule:<name>:<tick in UTC>`` and not before the tick, while the board keeps each
schedule's last posted tick in the same atomic step. However many conductors run a schedule,
each tick is posted once. Ticks are whole epoch seconds computed by every conductor alike:
``every`` ticks are multiples of the period counted from the epoch, and cron ticks follow cron's
own rules in the schedule's time zone (a 02:30 job runs at 03:00 on a spring-forward day, and
once, at the first 02:30, on a fall-back day), as the ``cronsim`` library computes them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo
from zoneinfo import ZoneInfoNotFoundError

import anyio
from cronsim import CronSim
from cronsim import CronSimError
from pydantic import BaseModel

from aioconductor._loading import load_attribute
from aioconductor.boards._posting import post_spec
from aioconductor.boards._ticking import tick_key
from aioconductor.boards._ticking import validate_schedule_name
from aioconductor.errors import ConfigurationError
from aioconductor.errors import JobNotFound
from aioconductor.errors import PayloadError

if TYPE_CHECKING:
    from aioconductor.boards.base import JobBoard

__all__ = [
    "MAX_CATCH_UP",
    "Clock",
    "Schedule",
    "ScheduleStatus",
    "SystemClock",
    "load_schedules",
    "schedule_status",
]

#: The most missed ticks a ``catch_up`` schedule posts after a gap: the latest ones, oldest
#: first (a conductor fleet down for a week does not post 10,080 minutely jobs on its return).
MAX_CATCH_UP = 100

_EPSILON = timedelta(microseconds=1)


class Clock(Protocol):
    """The wall clock schedules tick by: :class:`SystemClock`, or a fake one in tests
    (:class:`aioconductor.testing.FakeClock`)."""

    def time(self) -> float:
        """Now, in epoch seconds."""
        ...

    async def sleep_until(self, when: float) -> None:
        """Wait until this clock reads ``when`` or later, or less: a caller looks at the clock
        again after (a fake clock wakes when it is moved there)."""
        ...


class SystemClock:
    """The system's wall clock (``time.time``), slept on with ``anyio.sleep``."""

    def time(self) -> float:
        """Now, in epoch seconds."""
        return time.time()

    async def sleep_until(self, when: float) -> None:
        """Wait until ``when``, a minute at most: the caller looks at the clock again, so a
        clock set forward or back is noticed."""
        await anyio.sleep(min(max(when - time.time(), 0.0), 60.0))


@dataclass(frozen=True, slots=True)
class Schedule:
    """A job of ``flow`` posted at every tick of ``cron`` or ``every`` seconds.

    Args:
        name: the schedule's name, unique among a fleet's schedules; its ticks' keys are
            ``schedule:<name>:<tick>`` (at most 225 characters, no control characters).
        flow: the registered flow each tick's job runs.
        cron: a five-field cron expression (``"0 2 * * *"``: 02:00 every day), in ``timezone``.
        every: a period in whole seconds (1 or more), its ticks counted from the epoch.
        args: the jobs' args (a JSON object, or a pydantic model dumped in JSON mode).
        timezone: the IANA time zone ``cron`` is read in (``"Europe/Berlin"``); default UTC.
        priority: the jobs' priority.
        max_attempts: the jobs' ``max_attempts``.
        catch_up: after a gap in which no conductor ran, post every missed tick (at most
            :data:`MAX_CATCH_UP`, the latest) instead of only the latest.

    Raises:
        ConfigurationError: a bad name, flow, cron expression (naming the field), period,
            time zone, args or option; give exactly one of ``cron`` and ``every``.
    """

    name: str
    flow: str
    cron: str | None = None
    every: int | None = None
    args: Mapping[str, Any] | BaseModel | None = None
    timezone: str = "UTC"
    priority: int = 0
    max_attempts: int = 3
    catch_up: bool = False
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            validate_schedule_name(self.name)
        except PayloadError as exc:
            raise ConfigurationError(f"schedule {self.name!r:.80}: {exc}") from None
        if (self.cron is None) == (self.every is None):
            raise ConfigurationError(f"schedule {self.name!r}: give cron or every (one of them)")
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigurationError(
                f"schedule {self.name!r}: unknown time zone {self.timezone!r}"
            ) from None
        object.__setattr__(self, "_zone", zone)
        if self.cron is not None:
            if not isinstance(self.cron, str):
                raise ConfigurationError(f"schedule {self.name!r}: cron must be a string")
            try:
                CronSim(self.cron, datetime.now(zone))
            except CronSimError as exc:
                raise ConfigurationError(
                    f"schedule {self.name!r}: bad cron {self.cron!r}: {exc}"
                ) from None
        else:
            every = self.every
            if isinstance(every, bool) or not isinstance(every, (int, float)):
                raise ConfigurationError(f"schedule {self.name!r}: every must be whole seconds")
            if not math.isfinite(every) or every < 1 or every != int(every):
                raise ConfigurationError(
                    f"schedule {self.name!r}: every must be whole seconds, 1 or more, got {every}"
                )
            object.__setattr__(self, "every", int(every))
        args = self.args
        if isinstance(args, BaseModel):
            args = args.model_dump(mode="json")
        try:
            spec = post_spec(
                self.name,
                self.flow,
                args,
                1 << 20,
                priority=self.priority,
                max_attempts=self.max_attempts,
            )
        except PayloadError as exc:
            raise ConfigurationError(f"schedule {self.name!r}: {exc}") from None
        object.__setattr__(self, "args", spec.args)

    @property
    def job_args(self) -> dict[str, Any]:
        """The args each tick's job is posted with (a JSON object)."""
        assert isinstance(self.args, dict)
        return self.args

    def key(self, tick: float) -> str:
        """The key of this schedule's job for ``tick``."""
        return tick_key(self.name, tick)

    def latest(self, until: float) -> float:
        """The latest tick at or before ``until`` (epoch seconds)."""
        if self.every is not None:
            return float(math.floor(until / self.every) * self.every)
        assert self.cron is not None
        start = datetime.fromtimestamp(until, self._zone) + _EPSILON
        return _whole(next(CronSim(self.cron, start, reverse=True)))

    def next_after(self, after: float) -> float:
        """The first tick after ``after`` (epoch seconds)."""
        if self.every is not None:
            return float((math.floor(after / self.every) + 1) * self.every)
        assert self.cron is not None
        return _whole(next(CronSim(self.cron, datetime.fromtimestamp(after, self._zone))))

    def due(self, after: float, until: float) -> list[float]:
        """The ticks to post now, oldest first: those after ``after`` and at or before
        ``until``, or only the latest of them without ``catch_up`` (at most
        :data:`MAX_CATCH_UP` with it)."""
        latest = self.latest(until)
        if latest <= after:
            return []
        if not self.catch_up:
            return [latest]
        if self.every is not None:
            first = max(self.next_after(after), latest - (MAX_CATCH_UP - 1) * self.every)
            return [float(t) for t in range(int(first), int(latest) + 1, self.every)]
        assert self.cron is not None
        ticks: list[float] = []
        backwards = CronSim(self.cron, datetime.fromtimestamp(until, self._zone) + _EPSILON, True)
        for moment in backwards:
            tick = _whole(moment)
            if tick <= after or len(ticks) == MAX_CATCH_UP:
                break
            ticks.append(tick)
        return ticks[::-1]

    def describe(self) -> dict[str, Any]:
        """What a conductor publishes of this schedule with its heartbeat."""
        when = {"cron": self.cron, "timezone": self.timezone} if self.cron else {}
        return {
            "name": self.name,
            "flow": self.flow,
            **(when or {"every": self.every}),
            "catch_up": self.catch_up,
        }


def _whole(moment: datetime) -> float:
    return float(math.floor(moment.timestamp()))


@dataclass(frozen=True, slots=True)
class ScheduleStatus:
    """A schedule as the fleet runs it: what its conductors publish, and what the board holds
    (``aioconductor schedules`` and the dashboard list these)."""

    name: str
    #: What the conductors running it say (flow, cron or every, time zone); empty if none runs
    #: it now (the board still holds its last tick).
    published: dict[str, Any]
    #: The owners of the live conductors running it.
    conductors: list[str]
    #: The earliest next tick the conductors announce (epoch seconds), if any runs it.
    next_tick: float | None
    #: The last tick posted on the board, if any.
    last_tick: float | None
    #: The id and state of the last tick's job; None if it was purged or there is none.
    last_job_id: str | None
    last_job_state: str | None


async def schedule_status(board: JobBoard) -> list[ScheduleStatus]:
    """Every schedule the live conductors of ``board`` run or the board has a tick of, by
    name."""
    published: dict[str, dict[str, Any]] = {}
    runners: dict[str, list[str]] = {}
    nexts: dict[str, float] = {}
    for info in await board.conductors():
        for entry in info.meta.get("schedules", ()):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            name = entry["name"]
            published.setdefault(name, {k: v for k, v in entry.items() if k != "next_tick"})
            runners.setdefault(name, []).append(info.owner)
            if isinstance(entry.get("next_tick"), (int, float)):
                nexts[name] = min(nexts.get(name, math.inf), float(entry["next_tick"]))
    ticks: dict[str, float] = await board.schedule_ticks()
    found: list[ScheduleStatus] = []
    for name in sorted(set(published) | set(ticks)):
        last = ticks.get(name)
        job_id = job_state = None
        if last is not None:
            try:
                job = await board.get_by_key(tick_key(name, last))
            except JobNotFound:
                pass
            else:
                job_id, job_state = job.id, job.state.value
        found.append(
            ScheduleStatus(
                name=name,
                published=published.get(name, {}),
                conductors=sorted(runners.get(name, [])),
                next_tick=nexts.get(name),
                last_tick=last,
                last_job_id=job_id,
                last_job_state=job_state,
            )
        )
    return found


def load_schedules(spec: str) -> list[Schedule]:
    """Import schedules from ``"package.module:attribute"``: a ``Schedule`` or a sequence
    of them.

    Raises:
        ConfigurationError: the spec is malformed, the module cannot be imported, or the
            attribute holds something else.
    """
    value = load_attribute(spec, "schedules")
    schedules = [value] if isinstance(value, Schedule) else value
    if not isinstance(schedules, (list, tuple)) or not all(
        isinstance(s, Schedule) for s in schedules
    ):
        raise ConfigurationError(f"{spec!r} is not a Schedule or a list of them")
    return list(schedules)
