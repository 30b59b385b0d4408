"""Checks of a conductor's options, each refusing with one clear ``ConfigurationError``."""

from __future__ import annotations

from collections.abc import Iterable

from aioconductor._payload import MAX_NAME_LENGTH
from aioconductor._payload import validate_name
from aioconductor.errors import ConfigurationError
from aioconductor.errors import FlowNotFound
from aioconductor.errors import PayloadError
from aioconductor.registry import FlowRegistry
from aioconductor.schedules import Schedule

__all__ = [
    "MAX_CONDUCTOR_NAME",
    "check_count",
    "check_drain_timeout",
    "check_name",
    "check_schedules",
]

#: The longest conductor name: the owner id on the board (name, "-", 32 hex digits) must fit
#: the boards' limit of MAX_NAME_LENGTH characters.
MAX_CONDUCTOR_NAME = MAX_NAME_LENGTH - 33


def check_name(name: object) -> str:
    """``name`` if a board will take the owner id made from it.

    Raises:
        ConfigurationError: it is not a str, is empty, holds a NUL or is too long.
    """
    if isinstance(name, str) and len(name) > MAX_CONDUCTOR_NAME:
        raise ConfigurationError(
            f"a conductor name is at most {MAX_CONDUCTOR_NAME} characters, got {len(name)}"
        )
    try:
        return validate_name("conductor name", name)
    except PayloadError as exc:
        raise ConfigurationError(str(exc).replace("the job's ", "the ")) from None


def check_count(what: str, value: object) -> None:
    """Refuse ``value`` unless it is a whole number >= 1 (a bool is not).

    Raises:
        ConfigurationError: naming ``what``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be a whole number >= 1, got {value!r}")


def check_drain_timeout(value: object) -> float:
    """``value`` as float seconds if it is a number >= 0 (``inf``: wait for ever).

    Raises:
        ConfigurationError: it is not a number, is negative or is ``nan``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigurationError(f"drain_timeout must be a number of seconds >= 0, got {value!r}")
    return float(value)


def check_schedules(schedules: Iterable[Schedule], flows: FlowRegistry) -> tuple[Schedule, ...]:
    """``schedules`` if each is a ``Schedule`` with a name of its own, a registered flow and
    args that fit the flow's args model.

    Raises:
        ConfigurationError: naming the schedule and what is wrong.
    """
    checked = tuple(schedules)
    names: set[str] = set()
    for schedule in checked:
        if not isinstance(schedule, Schedule):
            raise ConfigurationError(f"schedules must be Schedule objects, got {schedule!r:.80}")
        if schedule.name in names:
            raise ConfigurationError(f"two schedules are named {schedule.name!r}")
        names.add(schedule.name)
        try:
            flows.check_args(schedule.flow, schedule.job_args)
        except (FlowNotFound, PayloadError) as exc:
            raise ConfigurationError(f"schedule {schedule.name!r}: {exc}") from None
    return checked
