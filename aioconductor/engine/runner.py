"""The runner: schedules a compiled flow's nodes, each as soon as its predecessors succeeded.

Nodes run in the runner's task group; a worker that finishes a node runs the next ready one
itself, so a linear flow costs one worker in all.

The runner saves nothing itself: its :class:`~aioconductor.engine.journal.Journal` does. Nor
does it decide what a failure leads to: its
:class:`~aioconductor.engine.completer.Completer` does, and the runner applies the strategy.
A retry blocks its pattern, stops the pattern's running nodes, has them reverted and runs the
pattern again, while the rest of the flow goes on; otherwise the task group is cancelled and
the whole flow reverted.
"""

from __future__ import annotations

from typing import Any

import anyio
from anyio.abc import TaskGroup

from aioconductor.engine.compiler import CompiledFlow
from aioconductor.engine.completer import Completer
from aioconductor.engine.journal import Journal
from aioconductor.engine.task import Task
from aioconductor.failure import Failure
from aioconductor.persistence.models import AtomState
from aioconductor.persistence.models import FlowState
from aioconductor.persistence.models import Intention

__all__ = ["Runner"]

_SUCCESS = AtomState.SUCCESS


class Runner:
    """Runs (or resumes) one flow run; built by the engine, used once.

    Args:
        compiled: the flow, validated.
        journal: the run's journal: it loads the saved atoms, and saves every change.
        inputs: the flow's inputs.
    """

    __slots__ = (
        "_active",
        "_all_but_one",
        "_blocked",
        "_chain",
        "_error",
        "_reverting_all",
        "_scopes",
        "_tg",
        "_waiters",
        "_waiting",
        "compiled",
        "completer",
        "flow_name",
        "journal",
        "nodes",
        "storage",
    )

    def __init__(self, compiled: CompiledFlow, journal: Journal, inputs: dict[str, Any]) -> None:
        self.flow_name = compiled.name
        self.compiled = compiled
        self.nodes = nodes = compiled.nodes
        self.journal = journal
        details = journal.load(nodes)
        #: Inputs plus every value provided (and not reverted) so far.
        self.storage: dict[str, Any] = dict(inputs)
        for node, detail in zip(nodes, details, strict=True):
            state = detail.state
            if state is _SUCCESS or (state is AtomState.REVERTING and detail.failure is None):
                atom = node.atom
                if isinstance(atom, Task):
                    self.storage.update(atom.published(detail.result))
                elif atom.provides:
                    self.storage[atom.provides[0]] = detail.result
        self.completer = Completer(nodes, journal, self.storage, inputs)
        #: How many atoms succeeded when all but the one finishing did.
        self._all_but_one = len(nodes) - 1
        self._waiting: list[int] = []
        self._active: set[int] = set()
        self._scopes: dict[int, anyio.CancelScope] = {}
        self._blocked: set[int] = set()
        self._waiters: list[anyio.Event] = []
        self._reverting_all = False
        self._error: Exception | None = None
        self._tg: TaskGroup | None = None
        self._chain = False

    @property
    def failure(self) -> Failure | None:
        """The failure that made the flow revert, once it did."""
        return self.completer.failure

    async def run(self) -> FlowState:
        """Save the flow RUNNING, and run (or resume) it to its end.

        Returns:
            ``SUCCESS``, ``REVERTED``, or ``FAILURE`` (a revert failed).

        Raises:
            Exception: whatever the store raised; nothing is reverted then.
        """
        await self.journal.start_flow()
        completer = self.completer
        if not self.journal.blank:
            # A run saved before: finish what it was deciding, reverting or retrying.
            await completer.redecide()
            if completer.must_revert_all() or not await completer.finish_retries():
                return await completer.revert_all()
        self._recount()
        details = self.journal.details
        ready = [
            i for i, d in enumerate(details) if d.state is not _SUCCESS and not self._waiting[i]
        ]
        self._chain = self.compiled.chain
        if len(ready) == 1 and self._chain:
            # One node at a time, ever: its worker needs no task group to share with others.
            await self._drive(ready[0])
        elif ready:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for index in ready[1:]:
                    tg.start_soon(self._drive, index)
                await self._drive(ready[0])
        if self._error is not None:
            raise self._error
        if self._reverting_all:
            return await completer.revert_all()
        stuck = [d.name for d in self.journal.details if d.state is not _SUCCESS]
        if stuck:
            raise RuntimeError(f"flow {self.flow_name!r}: atoms {stuck!r} never ran")
        return FlowState.SUCCESS

    def _recount(self) -> None:
        details = self.journal.details
        self._waiting = [
            sum(1 for p in node.preds if details[p].state is not _SUCCESS) for node in self.nodes
        ]

    async def _drive(self, index: int | None) -> None:
        try:
            while index is not None and not self._reverting_all and not self._is_blocked(index):
                if self.nodes[index].is_retry:
                    index = await self._step_retry(index)
                else:
                    index = await self._step(index)
        except Exception as exc:
            # A storage (or internal) error: stop everything and let run() raise it as it is.
            if self._error is None:
                self._error = exc
            self._cancel_all()

    def _cancel_all(self) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def _is_blocked(self, index: int) -> bool:
        return bool(self._blocked) and any(r in self._blocked for r in self.nodes[index].scopes)

    async def _step(self, index: int) -> int | None:
        node = self.nodes[index]
        task = node.atom
        assert isinstance(task, Task)
        self._active.add(index)
        journal = self.journal
        storage = self.storage
        kwargs = {param: storage[key] for param, key in node.args}
        if node.scopes:
            # A retry of an enclosing pattern may stop it (see _retry), even while its start is
            # being saved: it then does not run at all (on a slow store, running it after the
            # retry had looked for scopes to cancel made the retry wait for it to finish).
            scope = self._scopes[index] = anyio.CancelScope()
            outcome = None
            try:
                await journal.start(index)
                if not scope.cancel_called:
                    with scope:
                        outcome = await _execute(task, kwargs)
            finally:
                del self._scopes[index]
            if outcome is None:
                # Stopped because its pattern is being retried: the retry reverts it.
                self._done(index)
                return None
            result, published, failure = outcome
        else:
            await journal.start(index)
            result, published, failure = await _execute(task, kwargs)
        if failure is not None:
            return await self._on_failure(index, failure)
        storage.update(published)
        if self._ends_flow():
            journal.succeed_last(index, result)
        else:
            await journal.succeed(index, result, self._next_in_chain(index))
        self._done(index)
        return self._release(index)

    def _ends_flow(self) -> bool:
        """Whether the node that just succeeded ends the flow: nothing else runs, fails or
        waits, and every other atom succeeded (it is not counted yet)."""
        if self._reverting_all or self._blocked or self._error is not None:
            return False
        return len(self._active) == 1 and self.journal.succeeded == self._all_but_one

    def _next_in_chain(self, index: int) -> int | None:
        """In a chain, the node that runs right after ``index`` (nothing can come between)."""
        if not self._chain or self._reverting_all or self._error is not None:
            return None
        (following,) = self.nodes[index].succs or (None,)
        if following is None or self._waiting[following] != 1:
            return None
        if self.journal.details[following].state is _SUCCESS:
            return None
        return following

    async def _step_retry(self, index: int) -> int | None:
        self._active.add(index)
        failure = await self.completer.attempt(index)
        if failure is not None:
            return await self._on_failure(index, failure)
        self._done(index)
        return self._release(index)

    def _done(self, index: int) -> None:
        self._active.discard(index)
        if self._waiters:
            for waiter in self._waiters:
                waiter.set()
            self._waiters.clear()

    def _release(self, index: int) -> int | None:
        """Count ``index`` as done for its successors; start those now ready, but keep one."""
        following: int | None = None
        waiting = self._waiting
        details = self.journal.details
        for succ in self.nodes[index].succs:
            waiting[succ] -= 1
            if waiting[succ] or details[succ].state is _SUCCESS:
                continue
            if following is None:
                following = succ
            elif self._tg is not None:
                self._tg.start_soon(self._drive, succ)
        return following

    # -- applying the completer's strategies -------------------------------------------------

    async def _on_failure(self, index: int, failure: Failure) -> int | None:
        completer = self.completer
        if self._reverting_all or self._is_blocked(index):
            # Another failure is already being handled; that handling reverts this atom too.
            intention = Intention.REVERT if self._reverting_all else Intention.RETRY
            await completer.record(index, failure, intention)
            self._done(index)
            return None
        retry = completer.on_failure(index, failure).retry
        if retry is None:
            self._reverting_all = True
            await completer.record(index, failure, Intention.REVERT)
            self._done(index)
            self._cancel_all()
            return None
        await completer.record(index, failure, Intention.RETRY)
        self._done(index)
        return await self._retry(retry, failure)

    async def _retry(self, r: int, failure: Failure) -> int | None:
        """Stop retry ``r``'s pattern, have it reverted, and run it again (from ``r``)."""
        completer = self.completer
        self._blocked.add(r)
        self._active.add(r)
        await completer.mark_retry(r)
        members = self.nodes[r].members
        for member in members:
            scope = self._scopes.get(member)
            if scope is not None:
                scope.cancel()
        while any(m in self._active for m in members):
            waiter = anyio.Event()
            self._waiters.append(waiter)
            await waiter.wait()
        if not await completer.revert_for_retry(r, failure):
            self._reverting_all = True
            self._done(r)
            self._cancel_all()
            return None
        delay = completer.delay(r)
        if delay > 0:
            await anyio.sleep(delay)
        completer.reset(r)
        self._blocked.discard(r)
        self._recount()
        self._done(r)
        return r


async def _execute(
    task: Task, kwargs: dict[str, Any]
) -> tuple[Any, dict[str, Any], Failure | None]:
    """Run ``task``: its result and what it publishes, or the failure it raised."""
    try:
        result = await task.run_execute(kwargs)
        return result, task.published(result), None
    except Exception as exc:
        return None, {}, Failure.from_exception(exc)
