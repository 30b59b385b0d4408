"""`JobTasks`: the tasks of one conductor run's jobs, a task group made for many short tasks.

A conductor starts a task for every job it claims. anyio's task group spends about 8 us and
1.5 KiB on each task it starts (a handle, a cancel scope and an event of its own, a wrapper
coroutine), a tenth of a job's whole cost on a fast board; an asyncio task costs a quarter of
that. These are asyncio tasks, each under an anyio cancel scope of its own, which
:meth:`JobTasks.cancel` cancels: a job's shielded clean-up (giving its claim back when the
conductor is cancelled) is shielded as it is under a task group, where a plain ``task.cancel()``
would pass through the shield.

As a task group does, leaving ``async with JobTasks() as tasks:`` waits for every task, cancels
them all first if the block raised or was cancelled, and raises the first error a task raised
(cancelling the others then). A task started once the tasks are cancelled starts cancelled: a
claimed job always reaches its run, which gives the claim back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVarTuple

import anyio

__all__ = ["JobTasks"]

Args = TypeVarTuple("Args")


class JobTasks:
    """Starts, cancels and waits for a conductor run's job tasks (see the module)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._scopes: set[anyio.CancelScope] = set()
        self._cancelled = False
        self._error: BaseException | None = None
        self._none_left = asyncio.Event()
        self._none_left.set()

    def __len__(self) -> int:
        return len(self._tasks)

    async def __aenter__(self) -> JobTasks:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.cancel()
        try:
            await self._none_left.wait()
        except BaseException:
            # Cancelled while waiting: stop the tasks, and still outlive them.
            self.cancel()
            with anyio.CancelScope(shield=True):
                while self._tasks:
                    await self._none_left.wait()
            raise
        if exc is None and self._error is not None:
            raise self._error

    def start(self, fn: Callable[[*Args], Awaitable[None]], *args: *Args, name: str) -> None:
        """Run ``fn(*args)`` in a task of its own, named ``name``."""
        task = asyncio.get_running_loop().create_task(self._run(fn, args), name=name)
        self._tasks.add(task)
        self._none_left.clear()
        task.add_done_callback(self._ended)

    def cancel(self) -> None:
        """Cancel every task, and every task started from now on."""
        self._cancelled = True
        for scope in self._scopes:
            scope.cancel()

    async def _run(self, fn: Callable[[*Args], Awaitable[None]], args: tuple[*Args]) -> None:
        with anyio.CancelScope() as scope:
            if self._cancelled:
                scope.cancel()
            self._scopes.add(scope)
            try:
                await fn(*args)
            finally:
                self._scopes.discard(scope)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            error = task.exception()
            if error is not None and self._error is None:
                self._error = error
                self.cancel()
        if not self._tasks:
            self._none_left.set()
