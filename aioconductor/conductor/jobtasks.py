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
import anyio.abc

__all__ = ["JobTasks"]

Args = TypeVarTuple("Args")


class JobTasks:
    """Starts, cancels and waits for a conductor run's job tasks (see the module)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._scopes: set[anyio.CancelScope] = set()
        self._cancelled = False
        self._closing = False
        self._error: BaseException | None = None
        self._none_left = asyncio.Event()
        self._none_left.set()
        self._group: anyio.abc.TaskGroup | None = None

    def __len__(self) -> int:
        return len(self._tasks)

    async def __aenter__(self) -> JobTasks:
        # The block runs in a task group of its own, as it would in a task group of job
        # tasks: a task's error cancels the block, and the watcher in it hears at once when
        # the block is cancelled from outside (the block itself may be in a shielded call).
        group = self._group = anyio.create_task_group()
        await group.__aenter__()
        group.start_soon(self._watch)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        group = self._group
        assert group is not None, "JobTasks used outside async with"
        if exc is not None:
            self.cancel()
        try:
            await self._outlive_tasks()
        except BaseException as cancelled:
            exc_type, exc, tb = type(cancelled), cancelled, cancelled.__traceback__
        self._closing = True
        group.cancel_scope.cancel()
        suppressed = await group.__aexit__(exc_type, exc, tb)
        if self._error is not None:
            raise self._error
        if exc is not None and not suppressed:
            raise exc
        return suppressed

    def start(self, fn: Callable[[*Args], Awaitable[None]], *args: *Args, name: str) -> None:
        """Run ``fn(*args)`` in a task of its own, named ``name``."""
        task = asyncio.get_running_loop().create_task(self._run(fn, args), name=name)
        self._tasks.add(task)
        self._none_left.clear()
        task.add_done_callback(self._ended)

    async def all_ended(self) -> None:
        """Wait until no task is left (the tasks started meanwhile included)."""
        while self._tasks:
            await self._none_left.wait()

    def cancel(self) -> None:
        """Cancel every task, and every task started from now on."""
        self._cancelled = True
        for scope in self._scopes:
            scope.cancel()

    async def _outlive_tasks(self) -> None:
        """Wait until no task is left; cancelled meanwhile, cancel them and still outlive
        them (shielded), then let the cancellation go on."""
        try:
            await self.all_ended()
        except BaseException:
            self.cancel()
            with anyio.CancelScope(shield=True):
                await self.all_ended()
            raise

    async def _watch(self) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            if not self._closing:
                self.cancel()  # the block was cancelled: from outside, or by a task's error

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
                if self._group is not None and not self._closing:
                    self._group.cancel_scope.cancel()
        if not self._tasks:
            self._none_left.set()
