"""`SoloGate`: lets a conductor's jobs run side by side, or one job alone.

A job that already failed to finish (its conductor crashed, or lost its claim) and is on its
last attempt runs alone: if a neighbour kills the process (a poison job), that must not spend
the last attempt of a job that did nothing wrong; and if the job itself is the poison, it takes
no neighbour down with it. Jobs asking to run alone wait for the running ones to end, and hold
off new ones meanwhile (so a steady stream of jobs cannot starve them).
"""

from __future__ import annotations

import contextlib

import anyio

from aioconductor.models import Job

__all__ = ["SoloGate", "last_attempt_after_unfinished"]


def last_attempt_after_unfinished(job: Job) -> bool:
    """Whether ``job`` should run with no other job beside it: it is on its last attempt,
    and an earlier one ended unfinished (the process may have crashed).

    A job posted with ``max_attempts=1`` never does: its first attempt says nothing against it.
    """
    return 1 < job.attempts == job.max_attempts


class SoloGate:
    """Shared holds for ordinary jobs; an exclusive hold for a job that must run alone."""

    def __init__(self) -> None:
        self._shared = 0
        self._solo_waiting = 0
        self._solo = False
        self._changed = anyio.Event()

    @property
    def solo_waiting(self) -> int:
        """How many jobs wait to run alone."""
        return self._solo_waiting

    def hold(self, alone: bool) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the gate for one job's run (``async with gate.hold(alone):``): shared, or
        ``alone``."""
        return _Hold(self, alone)

    async def _enter(self, alone: bool) -> None:
        if alone:
            await self._enter_alone()
            return
        while self._solo or self._solo_waiting:
            await self._wait()
        self._shared += 1

    def _leave(self, alone: bool) -> None:
        if alone:
            self._solo = False
            self._notify()
            return
        self._shared -= 1
        if self._solo_waiting and not self._shared:
            self._notify()

    async def _enter_alone(self) -> None:
        self._solo_waiting += 1
        try:
            while self._solo or self._shared:
                await self._wait()
            self._solo = True
        finally:
            self._solo_waiting -= 1
            if not self._solo and not self._solo_waiting:
                # Cancelled while waiting: the shared holds it held off may go.
                self._notify()

    async def _wait(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


class _Hold(contextlib.AbstractAsyncContextManager[None]):
    # A class, not an async generator: every job run holds one while it runs, and a
    # generator's frame and wrapper were among the largest objects a job in flight held.
    __slots__ = ("_alone", "_gate")

    def __init__(self, gate: SoloGate, alone: bool) -> None:
        self._gate = gate
        self._alone = alone

    async def __aenter__(self) -> None:
        await self._gate._enter(self._alone)

    async def __aexit__(self, *exc_info: object) -> None:
        self._gate._leave(self._alone)
