"""Event names and the `Notifier` that delivers them to sync or async listeners.

A listener that raises is logged and skipped: an observer can never break the conductor's loop or
an engine's run.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

__all__ = ["Event", "Listener", "Notifier"]

logger = logging.getLogger("aioconductor.events")


class Event(enum.StrEnum):
    """Every event the conductor and the engine emit (TaskFlow's names where they exist)."""

    JOB_CLAIMED = "job_claimed"
    JOB_CONSUMED = "job_consumed"
    JOB_ABANDONED = "job_abandoned"
    #: The owner gave the claim back on purpose (a graceful stop): the attempt is not spent.
    JOB_RELEASED = "job_released"
    #: The flow ended ``REVERTED``/``FAILURE`` and the job was scheduled to run again
    #: (details hold ``retry``, its number, and ``delay``).
    JOB_RETRIED = "job_retried"
    JOB_TRASHED = "job_trashed"
    #: The job was cancelled (``board.cancel``) and its run stopped the flow to revert it
    #: (details hold ``reason`` and ``seen``: ``running`` when the run learned of it while the
    #: flow ran, ``claimed`` when the job was flagged when claimed); ``job_consumed`` with
    #: outcome ``CANCELLED`` follows.
    JOB_CANCELLING = "job_cancelling"
    #: The conductor that purges for its fleet deleted finished jobs past their retention
    #: (details hold ``conductor`` and a count per state: ``complete``, ``trashed``).
    JOBS_PURGED = "jobs_purged"
    #: A conductor posted a schedule's tick (details hold ``schedule``, ``tick`` and
    #: ``job_id``); only the conductor that posted it emits this.
    SCHEDULE_TICKED = "schedule_ticked"
    LEASE_LOST = "lease_lost"
    COMPILATION_START = "compilation_start"
    COMPILATION_END = "compilation_end"
    PREPARATION_START = "preparation_start"
    PREPARATION_END = "preparation_end"
    VALIDATION_START = "validation_start"
    VALIDATION_END = "validation_end"
    RUNNING_START = "running_start"
    RUNNING_END = "running_end"
    #: A flow changed state; details hold ``flow``, ``state``, ``old_state``.
    FLOW_STATE = "flow_state"
    #: An atom changed state; details hold ``flow``, ``atom``, ``state``, ``old_state``.
    ATOM_STATE = "atom_state"


class Listener(Protocol):
    """A callback for events: a plain function or an ``async def``."""

    def __call__(self, event: str, details: Mapping[str, Any]) -> Awaitable[None] | None: ...


class Notifier:
    """Delivers events to the listeners registered for them (or for every event)."""

    def __init__(self) -> None:
        self._listeners: dict[str | None, list[Listener]] = {}

    def register(self, event: str | None, listener: Listener) -> None:
        """Call ``listener(event, details)`` for ``event``, or for every event when it is None."""
        self._listeners.setdefault(event, []).append(listener)

    def deregister(self, event: str | None, listener: Listener) -> None:
        """Stop calling ``listener`` for ``event``; unknown pairs are ignored."""
        listeners = self._listeners.get(event, [])
        if listener in listeners:
            listeners.remove(listener)

    def has_listeners(self, event: str) -> bool:
        """Whether anything listens to ``event``: callers skip building details when not."""
        return bool(self._listeners.get(event) or self._listeners.get(None))

    async def notify(self, event: str, details: Mapping[str, Any]) -> None:
        """Call every listener of ``event``; a listener's exception is logged, never raised."""
        for listener in (*self._listeners.get(event, ()), *self._listeners.get(None, ())):
            try:
                outcome = listener(event, details)
                if outcome is not None and inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                logger.exception("listener %r failed on event %s", listener, event)
