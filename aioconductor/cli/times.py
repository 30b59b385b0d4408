"""Times and durations as the command line prints them: ISO 8601 (local, or UTC with
``--utc``) and short human durations (``1.2 s``, ``3 m 4 s``)."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime

__all__ = ["ago", "human_duration", "when"]


def when(ts: float | None, *, utc: bool = False) -> str:
    """``ts`` (epoch seconds) as ISO 8601 with its offset, e.g. ``2026-12-05T12:30:01+01:00``
    in local time (``+00:00`` with ``utc``); ``-`` for None."""
    if ts is None:
        return "-"
    moment = datetime.fromtimestamp(ts, UTC)
    return (moment if utc else moment.astimezone()).isoformat(timespec="seconds")


def human_duration(seconds: float) -> str:
    """``seconds`` for a person: ``8 ms``, ``1.2 s``, ``45 s``, ``3 m 4 s``, ``2 h 5 m``,
    ``3 d 4 h`` (negative durations get a ``-``)."""
    if seconds < 0:
        return "-" + human_duration(-seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    for unit, size, small, small_size in (
        ("d", 86_400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if whole >= size:
            big, rest = divmod(whole, size)
            part = rest // small_size
            return f"{big} {unit} {part} {small}" if part else f"{big} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def ago(ts: float, now: float) -> str:
    """How ``ts`` stands to ``now``: ``3 m 4 s ago`` or ``in 25 s``."""
    delta = now - ts
    return f"{human_duration(delta)} ago" if delta >= 0 else f"in {human_duration(-delta)}"
