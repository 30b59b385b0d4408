"""The runner: executes a compiled flow's nodes, saving every state change, and reverts them.

Nodes run as soon as their predecessors succeeded, each in the runner's task group; a worker
that finishes a node runs the next ready one itself, so a linear flow costs one worker in all.

On a failure the nearest retry controller decides. ``RETRY`` blocks its pattern, stops the
pattern's running nodes, reverts its finished ones (newest first) and runs it again, while the
rest of the flow goes on. Otherwise the task group is cancelled and every finished, failed or
stopped node is reverted, newest first.

What is saved lets a new runner pick up where one stopped:

- an atom's ``meta["seq"]`` orders finished atoms, so reverts run newest first after a resume;
- ``intention=REVERT`` marks a revert of the whole flow under way;
- a retry node with ``intention=RETRY`` marks its pattern's revert-for-retry under way, and its
  ``meta["history"]`` holds the failed attempts.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from aioconductor._payload import non_str_key
from aioconductor.engine.compiler import CompiledFlow, Node
from aioconductor.engine.retry import Attempt, Decision, Retry
from aioconductor.engine.task import Task
from aioconductor.events import Event, Notifier
from aioconductor.failure import Failure
from aioconductor.persistence.base import Store
from aioconductor.persistence.models import AtomDetail, AtomState, FlowState, Intention

__all__ = ["Runner"]

logger = logging.getLogger("aioconductor.engine")

_REVERTIBLE = frozenset(
    {AtomState.SUCCESS, AtomState.FAILURE, AtomState.RUNNING, AtomState.REVERTING}
)


class Runner:
    """Runs (or resumes) one flow run; built by the engine, used once."""

    def __init__(
        self,
        compiled: CompiledFlow,
        saved: dict[str, AtomDetail],
        inputs: dict[str, Any],
        *,
        store: Store,
        book_id: str,
        flow_uuid: str,
        token: int | None,
        notifier: Notifier,
        started: int | None = None,
    ) -> None:
        self.flow_name = compiled.name
        self.nodes = compiled.nodes
        self.store = store
        self.book_id = book_id
        self.flow_uuid = flow_uuid
        self.token = token
        self.notifier = notifier
        self._inputs = inputs
        #: Inputs plus every value provided (and not reverted) so far.
        self.storage: dict[str, Any] = dict(inputs)
        #: Atom name -> the failure it raised in this flow run.
        self.failures: dict[str, Failure] = {}
        #: The failure that made the flow revert, once it did.
        self.failure: Failure | None = None
        self.details: list[AtomDetail] = []
        self.histories: list[list[Attempt]] = []
        self._seq = 0
        self._active: set[int] = set()
        self._scopes: dict[int, anyio.CancelScope] = {}
        self._blocked: set[int] = set()
        self._waiters: list[anyio.Event] = []
        self._reverting_all = False
        self._revert_failed = False
        self._error: Exception | None = None
        self._tg: TaskGroup | None = None
        #: The node whose RUNNING state was saved ahead (with the flow's start by the engine,
        #: or with the previous node's end in a chain) and its state before: its step does
        #: not write it again.
        self._started = None if started is None else (started, AtomState.PENDING)
        self._chain = False
        #: The node that ended the flow: its SUCCESS is saved with the flow's end, by the
        #: engine (see :meth:`unsaved` and :meth:`saved_with_flow`).
        self._final: int | None = None
        self._load(saved)

    # -- loading saved progress --------------------------------------------------------------

    def _load(self, saved: dict[str, AtomDetail]) -> None:
        for node in self.nodes:
            detail = saved.get(node.name)
            if detail is None:
                detail = AtomDetail(name=node.name, kind="retry" if node.is_retry else "task")
            self.details.append(detail)
            self._seq = max(self._seq, detail.meta.get("seq", 0))
            history = detail.meta.get("history", []) if node.is_retry else []
            self.histories.append([_attempt_from_json(a) for a in history])
            if detail.failure is not None:
                self.failures[node.name] = detail.failure
            if detail.state is AtomState.SUCCESS or (
                detail.state is AtomState.REVERTING and detail.failure is None
            ):
                self._publish(node, detail.result)
        self._succeeded = sum(1 for d in self.details if d.state is AtomState.SUCCESS)
        self._recount()
        triggers = [
            d for d in self.details if d.intention is Intention.REVERT and d.failure is not None
        ]
        if triggers:
            self.failure = min(triggers, key=lambda d: d.meta.get("seq", 0)).failure

    def _publish(self, node: Node, result: Any) -> None:
        atom = node.atom
        if isinstance(atom, Task):
            self.storage.update(atom.published(result))
        elif atom.provides:
            self.storage[atom.provides[0]] = result

    def _unpublish(self, node: Node) -> None:
        """Forget what ``node`` provided (it was reverted): an input of that name shows again."""
        for key in node.atom.provides:
            if key in self._inputs:
                self.storage[key] = self._inputs[key]
            else:
                self.storage.pop(key, None)

    def _recount(self) -> None:
        success = AtomState.SUCCESS
        self._waiting = [
            sum(1 for p in node.preds if self.details[p].state is not success)
            for node in self.nodes
        ]

    def _set_state(self, index: int, state: AtomState) -> None:
        """Set atom ``index``'s state, keeping the count of succeeded atoms."""
        detail = self.details[index]
        self._succeeded += (state is AtomState.SUCCESS) - (detail.state is AtomState.SUCCESS)
        detail.state = state

    def _must_revert_all(self) -> bool:
        retrying = {
            m
            for r, d in enumerate(self.details)
            if d.intention is Intention.RETRY and self.nodes[r].is_retry
            for m in self.nodes[r].members
        }
        return any(
            d.intention is Intention.REVERT
            or (d.state in (AtomState.FAILURE, AtomState.REVERTING) and i not in retrying)
            for i, d in enumerate(self.details)
        )

    # -- the run -----------------------------------------------------------------------------

    async def run(self) -> FlowState:
        """Run (or resume) the flow to its end.

        Returns:
            ``SUCCESS``, ``REVERTED``, or ``FAILURE`` (a revert failed).

        Raises:
            Exception: whatever the store raised; nothing is reverted then.
        """
        await self._redecide()
        if self._must_revert_all():
            return await self._revert_all()
        for r, node in enumerate(self.nodes):
            if node.is_retry and self.details[r].intention is Intention.RETRY:
                # A revert-for-retry was under way: finish it before running the pattern again.
                if not await self._revert_nodes(node.members, Intention.RETRY):
                    return await self._revert_all()
                self._reset_region(r)
        ready = [
            i
            for i, d in enumerate(self.details)
            if d.state is not AtomState.SUCCESS and not self._waiting[i]
        ]
        self._chain = self._is_chain()
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
            return await self._revert_all()
        stuck = [d.name for d in self.details if d.state is not AtomState.SUCCESS]
        if stuck:
            raise RuntimeError(f"flow {self.flow_name!r}: atoms {stuck!r} never ran")
        return FlowState.SUCCESS

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

    def _is_chain(self) -> bool:
        """Whether the flow is a line of tasks (no retry controller): then no two nodes can
        ever run at once, and a failure has nothing else to stop."""
        return all(
            len(node.succs) <= 1 and len(node.preds) <= 1 and not node.is_retry
            for node in self.nodes
        )

    def _cancel_all(self) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def _is_blocked(self, index: int) -> bool:
        return bool(self._blocked) and any(r in self._blocked for r in self.nodes[index].scopes)

    async def _step(self, index: int) -> int | None:
        node = self.nodes[index]
        task = node.atom
        assert isinstance(task, Task)
        _ready_to_run(self.details[index])
        self._active.add(index)
        ahead, self._started = self._started, None
        if ahead is not None and ahead[0] == index:
            await self._write(index, AtomState.RUNNING, saved=ahead[1])
        else:
            await self._write(index, AtomState.RUNNING)
        storage = self.storage
        kwargs = {param: storage[key] for param, key in node.args}
        if node.scopes:
            # A retry of an enclosing pattern may stop it (see _retry).
            scope = self._scopes[index] = anyio.CancelScope()
            outcome = None
            try:
                with scope:
                    outcome = await self._execute(task, kwargs)
            finally:
                del self._scopes[index]
            if outcome is None:
                # Stopped because its pattern is being retried: the retry reverts it.
                self._done(index)
                return None
            result, published, failure = outcome
        else:
            result, published, failure = await self._execute(task, kwargs)
        if failure is not None:
            return await self._on_failure(index, failure)
        storage.update(published)
        detail = self.details[index]
        detail.result = result
        self._seq += 1
        detail.meta["seq"] = self._seq
        if self._ends_flow(index):
            # Saved by the engine with the flow's end, in one write: until then a crash
            # leaves it RUNNING, and a resume runs it again, as after a crash mid-task.
            self._set_state(index, AtomState.SUCCESS)
            self._final = index
        elif (following := self._next_in_chain(index)) is not None:
            await self._write_with_next(index, following)
        else:
            await self._write(index, AtomState.SUCCESS)
        self._done(index)
        return self._release(index)

    def _next_in_chain(self, index: int) -> int | None:
        """In a chain, the node that runs right after ``index`` (nothing can come between)."""
        if not self._chain or self._reverting_all or self._error is not None:
            return None
        (following,) = self.nodes[index].succs or (None,)
        if following is None or self._waiting[following] != 1:
            return None
        if self.details[following].state is AtomState.SUCCESS:
            return None
        return following

    async def _write_with_next(self, index: int, following: int) -> None:
        """Save ``index`` SUCCESS and ``following`` RUNNING in one write: in a chain the next
        step starts at once (a crash between leaves it RUNNING, run again on resume)."""
        done, starting = self.details[index], self.details[following]
        old, old_next = done.state, starting.state
        self._set_state(index, AtomState.SUCCESS)
        _ready_to_run(starting)
        self._set_state(following, AtomState.RUNNING)
        self.details[index], self.details[following] = await self.store.update_atom_details(
            self.book_id, self.flow_uuid, [done, starting], token=self.token
        )
        self._started = (following, old_next)
        if old is not AtomState.SUCCESS:
            await self._emit_atom_state(done.name, AtomState.SUCCESS, old)

    @staticmethod
    async def _execute(
        task: Task, kwargs: dict[str, Any]
    ) -> tuple[Any, dict[str, Any], Failure | None]:
        """Run ``task``: its result and what it publishes, or the failure it raised."""
        try:
            result = await task.run_execute(kwargs)
            return result, task.published(result), None
        except Exception as exc:
            return None, {}, Failure.from_exception(exc)

    def _ends_flow(self, index: int) -> bool:
        """Whether ``index`` succeeding ends the flow: nothing else runs, fails or waits."""
        if self._reverting_all or self._blocked or self._error is not None:
            return False
        if len(self._active) != 1:
            return False
        # ``index`` itself is not SUCCESS yet: every other atom is.
        return self._succeeded == len(self.details) - 1

    def unsaved(self) -> list[AtomDetail]:
        """The atom details the engine must save with the flow's end (the flow's last task)."""
        return [] if self._final is None else [self.details[self._final]]

    async def saved_with_flow(self, atoms: dict[str, AtomDetail]) -> None:
        """Take the versions the store gave :meth:`unsaved` details, and tell listeners."""
        if self._final is None:
            return
        index, self._final = self._final, None
        self.details[index] = atoms[self.nodes[index].name]
        await self._emit_atom_state(self.details[index].name, AtomState.SUCCESS, AtomState.RUNNING)

    async def _step_retry(self, index: int) -> int | None:
        node = self.nodes[index]
        retry = node.atom
        assert isinstance(retry, Retry)
        self._active.add(index)
        try:
            value = retry.execute(self.histories[index], self._inputs_of(node))
            json.dumps(value, allow_nan=False)
        except Exception as exc:
            return await self._on_failure(index, Failure.from_exception(exc))
        detail = self.details[index]
        detail.intention = Intention.EXECUTE
        detail.result = value
        detail.failure = None
        self._seq += 1
        detail.meta["seq"] = self._seq
        detail.meta["history"] = [_attempt_to_json(a) for a in self.histories[index]]
        self._publish(node, value)
        await self._write(index, AtomState.SUCCESS)
        self._done(index)
        return self._release(index)

    def _inputs_of(self, node: Node) -> dict[str, Any]:
        return {key: self.storage[key] for _, key in node.args if key in self.storage}

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
        for succ in self.nodes[index].succs:
            waiting[succ] -= 1
            if waiting[succ] or self.details[succ].state is AtomState.SUCCESS:
                continue
            if following is None:
                following = succ
            elif self._tg is not None:
                self._tg.start_soon(self._drive, succ)
        return following

    # -- failures and retries ----------------------------------------------------------------

    async def _on_failure(self, index: int, failure: Failure) -> int | None:
        node = self.nodes[index]
        self.failures[node.name] = failure
        detail = self.details[index]
        detail.failure = failure
        self._seq += 1
        detail.meta["seq"] = self._seq
        if self._reverting_all or self._is_blocked(index):
            # Another failure is already being handled; that handling reverts this atom too.
            detail.intention = Intention.REVERT if self._reverting_all else Intention.RETRY
            await self._write(index, AtomState.FAILURE)
            self._done(index)
            return None
        retry_index = self._decide(node, failure)
        if retry_index is None:
            self._reverting_all = True
            self.failure = failure
            detail.intention = Intention.REVERT
            await self._write(index, AtomState.FAILURE)
            self._done(index)
            self._cancel_all()
            return None
        detail.intention = Intention.RETRY
        await self._write(index, AtomState.FAILURE)
        self._done(index)
        return await self._retry(retry_index, failure)

    async def _redecide(self) -> None:
        """Decide again on failures saved for a retry whose decision was not saved: the run
        stopped (a crash, a cancel) between the two writes. Their controllers are asked again
        (with the attempts they saved), so the pattern is retried, not the flow reverted."""
        undecided = [
            i
            for i, d in enumerate(self.details)
            if d.state is AtomState.FAILURE
            and d.intention is Intention.RETRY
            and d.failure is not None
            and d.revert_failure is None
        ]
        undecided.sort(key=lambda i: self.details[i].meta.get("seq", 0))
        for index in undecided:
            scopes = self.nodes[index].scopes
            if any(self.details[r].intention is Intention.RETRY for r in scopes):
                continue  # its pattern's retry was saved: run() finishes it
            detail = self.details[index]
            failure = detail.failure
            assert failure is not None
            retry_index = self._decide(self.nodes[index], failure)
            if retry_index is None:
                detail.intention = Intention.REVERT
                await self._write(index, AtomState.FAILURE)
                if self.failure is None:
                    self.failure = failure
            else:
                await self._mark_retry(retry_index)

    async def _mark_retry(self, r: int) -> None:
        """Save that retry ``r``'s pattern is to be reverted and run again, with its attempts."""
        detail = self.details[r]
        detail.intention = Intention.RETRY
        detail.meta["history"] = [_attempt_to_json(a) for a in self.histories[r]]
        await self._write(r, detail.state)

    def _decide(self, node: Node, failure: Failure) -> int | None:
        """The retry node whose pattern is to run again, or None to revert the whole flow."""
        for r in node.scopes:
            retry = self.nodes[r].atom
            assert isinstance(retry, Retry)
            history = self.histories[r]
            history.append(Attempt(self.details[r].result, {node.name: failure}))
            try:
                decision = retry.on_failure(history, self._inputs_of(self.nodes[r]))
            except Exception:
                logger.exception("%r failed to decide; reverting flow %r", retry, self.flow_name)
                return None
            if decision is Decision.RETRY:
                return r
            if decision is Decision.REVERT_ALL:
                return None
        return None

    async def _retry(self, r: int, failure: Failure) -> int | None:
        node = self.nodes[r]
        retry = node.atom
        assert isinstance(retry, Retry)
        self._blocked.add(r)
        self._active.add(r)
        await self._mark_retry(r)
        members = node.members
        for member in members:
            scope = self._scopes.get(member)
            if scope is not None:
                scope.cancel()
        while any(m in self._active for m in members):
            waiter = anyio.Event()
            self._waiters.append(waiter)
            await waiter.wait()
        if not await self._revert_nodes(members, Intention.RETRY):
            self._reverting_all = True
            self.failure = failure
            self._done(r)
            self._cancel_all()
            return None
        delay = retry.delay(self.histories[r])
        if delay > 0:
            await anyio.sleep(delay)
        self._reset_region(r)
        self._done(r)
        return r

    def _reset_region(self, r: int) -> None:
        for index in (r, *self.nodes[r].members):
            self._set_state(index, AtomState.PENDING)
            if index != r and self.nodes[index].is_retry:
                self.histories[index] = []
        self._blocked.discard(r)
        self._recount()

    # -- reverting ---------------------------------------------------------------------------

    async def _revert_all(self) -> FlowState:
        ok = await self._revert_nodes(range(len(self.nodes)), Intention.REVERT)
        return FlowState.REVERTED if ok and not self._revert_failed else FlowState.FAILURE

    async def _revert_nodes(self, indices: Iterable[int], intention: Intention) -> bool:
        """Revert those of ``indices`` that ran, newest first; False if a revert failed."""
        todo = [
            i
            for i in indices
            if self.details[i].state in _REVERTIBLE and self.details[i].revert_failure is None
        ]
        todo.sort(key=lambda i: self.details[i].meta.get("seq", math.inf), reverse=True)
        ok = True
        for index in todo:
            ok = await self._revert_node(index, intention) and ok
        if not ok:
            self._revert_failed = True
        return ok

    async def _revert_node(self, index: int, intention: Intention) -> bool:
        node = self.nodes[index]
        detail = self.details[index]
        detail.intention = intention
        if node.is_retry:
            self.histories[index] = []
            detail.meta.pop("history", None)
            await self._write(index, AtomState.REVERTED)
            self._unpublish(node)
            return True
        task = node.atom
        assert isinstance(task, Task)
        result = detail.failure if detail.failure is not None else detail.result
        await self._write(index, AtomState.REVERTING)
        kwargs = {param: self.storage[key] for param, key in node.args if key in self.storage}
        try:
            outcome = await task.run_revert(kwargs, result, self.failures)
        except Exception as exc:
            logger.warning("flow %r: reverting %r failed: %r", self.flow_name, node.name, exc)
            detail = self.details[index]
            detail.revert_failure = Failure.from_exception(exc)
            await self._write(index, AtomState.FAILURE)
            return False
        detail = self.details[index]
        detail.revert_result = outcome if _is_json(outcome) else None
        await self._write(index, AtomState.REVERTED)
        self._unpublish(node)
        return True

    # -- saving ------------------------------------------------------------------------------

    async def _write(self, index: int, state: AtomState, *, saved: AtomState | None = None) -> None:
        """Save atom ``index`` in ``state``; if it was ``saved`` so ahead, only tell listeners
        (``saved`` is then the state it had before)."""
        detail = self.details[index]
        old = detail.state if saved is None else saved
        self._set_state(index, state)
        if saved is None:
            self.details[index] = await self.store.update_atom_detail(
                self.book_id, self.flow_uuid, detail, token=self.token
            )
        if old is not state:
            await self._emit_atom_state(detail.name, state, old)

    async def _emit_atom_state(self, atom: str, state: AtomState, old: AtomState) -> None:
        if self.notifier.has_listeners(Event.ATOM_STATE):
            await self.notifier.notify(
                Event.ATOM_STATE,
                {
                    "flow": self.flow_name,
                    "book_id": self.book_id,
                    "atom": atom,
                    "state": state,
                    "old_state": old,
                },
            )


def _ready_to_run(detail: AtomDetail) -> None:
    """Clear what an earlier run of the atom left, before it runs (again)."""
    detail.intention = Intention.EXECUTE
    detail.result = detail.failure = detail.revert_failure = detail.revert_result = None
    detail.meta.pop("seq", None)


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
        return non_str_key(value) is None
    except (TypeError, ValueError, RecursionError):
        return False


def _attempt_to_json(attempt: Attempt) -> dict[str, Any]:
    failures = {name: f.model_dump(mode="json") for name, f in attempt.failures.items()}
    return {"value": attempt.value, "failures": failures}


def _attempt_from_json(data: dict[str, Any]) -> Attempt:
    failures = {name: Failure.model_validate(f) for name, f in data.get("failures", {}).items()}
    return Attempt(data.get("value"), failures)
