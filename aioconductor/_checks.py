"""Checks of settings shared by boards, stores and conductors, with one clear error each."""

from __future__ import annotations

import math

from aioconductor.errors import ConfigurationError

__all__ = ["MAX_LEASE", "check_lease"]

#: The longest lease accepted, in seconds (a day): a longer one would leave a dead owner's job
#: stuck for longer than anyone waits, and some backends cannot store an unbounded one.
MAX_LEASE = 86_400.0


def check_lease(value: object, what: str = "lease") -> float:
    """Return ``value`` as float seconds if it is in (0, :data:`MAX_LEASE`].

    Raises:
        ConfigurationError: it is not a number, or out of range (``inf`` and ``nan`` included).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{what} must be a number of seconds, got {value!r}")
    seconds = float(value)
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_LEASE):
        raise ConfigurationError(
            f"{what} must be more than 0 and at most {MAX_LEASE:g} seconds, got {value!r}"
        )
    return seconds
