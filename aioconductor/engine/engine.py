"""`Engine`: compiles a flow, loads or creates its logbook, validates it and runs it.

Every state change is saved to the store (carrying the claim's fencing ``token``), so a new
engine on the same store and logbook resumes a flow that stopped: finished tasks are not run
again, and a revert under way goes on reverting.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from aioconductor.engine.compiler import CompiledFlow, compile_flow
from aioconductor.engine.patterns import Flow, linear
from aioconductor.engine.runner import Runner
from aioconductor.engine.task import Task
from aioconductor.errors import FlowFailed, LogBookNotFound
from aioconductor.events import Event, Notifier
from aioconductor.failure import Failure
from aioconductor.persistence.base import Store
from aioconductor.persistence.memory import MemoryStore
from aioconductor.persistence.models import AtomDetail, AtomState, FlowDetail, FlowState, LogBook

__all__ = ["Engine", "EngineResult", "run_flow"]

logger = logging.getLogger("aioconductor.engine")

#: Seconds a cancelled engine may spend saving its suspension.
SUSPEND_TIMEOUT = 5.0

_FINAL = frozenset({FlowState.SUCCESS, FlowState.REVERTED, FlowState.FAILURE})


@dataclass
class EngineResult:
    """How a flow run ended.

    Attributes:
        state: ``SUCCESS``, ``REVERTED`` (a task failed and the flow was reverted) or
            ``FAILURE`` (a revert failed too).
        results: the inputs plus every value the flow's atoms provided.
        provided: only the values the flow's atoms provided.
        failure: what made the flow revert; None on success.
    """

    state: FlowState
    results: dict[str, Any] = field(default_factory=dict)
    provided: dict[str, Any] = field(default_factory=dict)
    failure: Failure | None = None


class Engine:
    """Runs one flow, saving its progress in a store's logbook.

    Args:
        flow: the flow to run (a pattern, or a single task).
        store: where progress is saved; a private ``MemoryStore`` when None.
        book_id: the logbook's id (the conductor passes the job's id); a new uuid when None.
        book_name: the logbook's name when it is created; the flow's name when None.
        token: the claim's fencing token, carried by every write to the store.
        inputs: the flow's inputs, bound to task parameters by name.
        notifier: receives the engine's events; a private one when None.
        fresh: the logbook ``book_id`` cannot exist yet (the conductor knows this on a job's
            first claim): it is created without being read first.
        detail_name: the name of the flow's detail in the logbook, which a run resumes from:
            the flow's name when None. A job retried under its retry policy runs each retry
            under a name of its own, so each is a fresh run.

    Raises:
        TypeError: ``flow`` is neither a ``Flow`` nor a ``Task`` (a retry controller alone is
            not a flow: give it to a pattern, ``linear("f", task, retry=Times(3))``).
    """

    def __init__(
        self,
        flow: Flow | Task,
        *,
        store: Store | None = None,
        book_id: str | None = None,
        book_name: str | None = None,
        token: int | None = None,
        inputs: Mapping[str, Any] | None = None,
        notifier: Notifier | None = None,
        fresh: bool = False,
        detail_name: str | None = None,
    ) -> None:
        if isinstance(flow, Task):
            flow = linear(flow.name, flow)
        elif not isinstance(flow, Flow):
            raise TypeError(f"an engine runs a Flow or a Task, not {_describe(flow)}")
        self.flow: Flow = flow
        self.store: Store = store if store is not None else MemoryStore()
        self._own_store = store is None
        self.book_id = book_id or str(uuid.uuid4())
        self.book_name = book_name or self.flow.name
        self.detail_name = detail_name or self.flow.name
        self.token = token
        self.inputs: dict[str, Any] = dict(inputs or {})
        self.notifier = notifier if notifier is not None else Notifier()
        self._compiled: CompiledFlow | None = None
        self._detail: FlowDetail | None = None
        self._validated = False
        self.fresh = fresh
        #: Whether the detail was created as RUNNING, so the run need not save that again.
        self._running_saved = False
        #: The node saved as RUNNING with the new logbook, whose step need not save that.
        self._started: int | None = None

    async def _emit(self, event: Event, **details: Any) -> None:
        if self.notifier.has_listeners(event):
            await self.notifier.notify(
                event, {"flow": self.flow.name, "book_id": self.book_id, **details}
            )

    async def compile(self) -> None:
        """Turn the flow into a graph of atoms.

        Raises:
            CompilationError: duplicate names or provides, a cycle, or a bad link.
        """
        await self._emit(Event.COMPILATION_START)
        self._compiled = compile_flow(self.flow)
        await self._emit(Event.COMPILATION_END)

    async def prepare(self) -> None:
        """Load the logbook and the flow's detail from the store, or create them."""
        if self._compiled is None:
            await self.compile()
        await self._emit(Event.PREPARATION_START)
        store = self.store
        if self._own_store and not store.connected:
            await store.connect()
        if self.fresh:
            self._detail = await self._create_book()
        else:
            try:
                book = await store.get_logbook(self.book_id)
            except LogBookNotFound:
                self._detail = await self._create_book()
            else:
                found = [f for f in book.flows.values() if f.name == self.detail_name]
                if found:
                    self._detail = found[0]
                else:
                    self._detail = await store.update_flow_detail(
                        self.book_id, FlowDetail(name=self.detail_name), token=self.token
                    )
        await self._emit(Event.PREPARATION_END)

    async def _create_book(self) -> FlowDetail:
        """Save a new logbook holding this flow's detail, already ``RUNNING`` (one write for
        two), and return the detail to run with.

        Should the logbook exist after all (``fresh`` was wrong), the store merges in the new
        detail and returns the whole book: the detail saved earlier for this flow wins, and the
        run resumes from it as if the book had been read first.
        """
        detail = FlowDetail(name=self.detail_name, state=FlowState.RUNNING)
        first = self._first_task()
        if first is not None:
            # The flow's only first step is certain to start now: save it RUNNING in the same
            # write (a crash before it starts leaves it RUNNING, which a resume runs again).
            name = self._compiled.nodes[first].name  # type: ignore[union-attr]
            detail.atoms[name] = AtomDetail(name=name, state=AtomState.RUNNING)
        book = LogBook(uuid=self.book_id, name=self.book_name, flows={detail.uuid: detail})
        book = await self.store.save_logbook(book, token=self.token)
        earlier = [
            f for f in book.flows.values() if f.name == self.detail_name and f.uuid != detail.uuid
        ]
        if earlier:
            return earlier[0]
        self._running_saved = True
        self._started = first
        return book.flows[detail.uuid]

    def _first_task(self) -> int | None:
        """The node a new run starts with, if it is the only one and a task."""
        assert self._compiled is not None
        roots = [i for i, node in enumerate(self._compiled.nodes) if not node.preds]
        if len(roots) != 1 or self._compiled.nodes[roots[0]].is_retry:
            return None
        return roots[0]

    async def validate(self) -> None:
        """Check that every atom's requirements are met by the inputs or earlier atoms.

        Raises:
            CompilationError: naming each atom and the names it misses.
        """
        if self._detail is None:
            await self.prepare()
        assert self._compiled is not None
        await self._emit(Event.VALIDATION_START)
        self._compiled.validate(self.inputs)
        self._validated = True
        await self._emit(Event.VALIDATION_END)

    async def run(self) -> EngineResult:
        """Run the flow to its end (compiling, preparing and validating first if needed).

        A flow whose logbook says it already ended is not run again: its saved outcome is
        returned.

        Returns:
            How the flow ended.

        Raises:
            CompilationError: the flow is not valid.
            Exception: any error of the store (``ClaimLost``, ``StoreError``, ...), as raised;
                the flow is not reverted then.
        """
        if not self._validated:
            await self.validate()
        assert self._compiled is not None and self._detail is not None
        runner = Runner(
            self._compiled,
            self._detail.atoms,
            self.inputs,
            store=self.store,
            book_id=self.book_id,
            flow_uuid=self._detail.uuid,
            token=self.token,
            notifier=self.notifier,
            started=self._started,
        )
        self._started = None
        if self._detail.state in _FINAL:
            return self._result(self._detail.state, runner)
        await self._emit(Event.RUNNING_START)
        try:
            if self._running_saved:
                self._running_saved = False
                await self._emit(
                    Event.FLOW_STATE, state=FlowState.RUNNING, old_state=FlowState.PENDING
                )
            else:
                if self._detail.state is not FlowState.PENDING:
                    await self._set_state(FlowState.RESUMING)
                await self._set_state(FlowState.RUNNING)
            state = await runner.run()
            await self._set_state(state, runner)
        except anyio.get_cancelled_exc_class():
            # Cancelled from outside: save the suspension even so, then let the cancel go on.
            with anyio.move_on_after(SUSPEND_TIMEOUT, shield=True):
                await self._suspend()
                await self._emit(Event.RUNNING_END, state=FlowState.SUSPENDED)
            raise
        except BaseException:
            with anyio.move_on_after(SUSPEND_TIMEOUT, shield=True):
                # Shielded so that the event is not lost if a cancel is also pending.
                await self._emit(Event.RUNNING_END, state=None)
            raise
        await self._emit(Event.RUNNING_END, state=state)
        return self._result(state, runner)

    def _result(self, state: FlowState, runner: Runner) -> EngineResult:
        results = runner.storage
        provided = {
            name: results[name]
            for node in runner.nodes
            for name in node.atom.provides
            if name in results
        }
        failure = None if state is FlowState.SUCCESS else runner.failure
        return EngineResult(state, dict(results), provided, failure)

    async def _set_state(self, state: FlowState, runner: Runner | None = None) -> None:
        """Save the flow in ``state``, with the atoms ``runner`` left for its end."""
        assert self._detail is not None
        old = self._detail.state
        self._detail.state = state
        atoms = runner.unsaved() if runner is not None else []
        self._detail = await self.store.update_flow_detail(
            self.book_id, self._detail, token=self.token, atoms=atoms
        )
        if runner is not None:
            await runner.saved_with_flow(self._detail.atoms)
        await self._emit(Event.FLOW_STATE, state=state, old_state=old)

    async def _suspend(self) -> None:
        """Save the flow as ``SUSPENDED`` (atoms are saved as they change already)."""
        assert self._detail is not None
        try:
            # Re-read: the write that the cancel interrupted may have reached the store.
            book = await self.store.get_logbook(self.book_id)
            current = book.flows.get(self._detail.uuid)
            if current is None or current.state in _FINAL:
                return
            old = current.state
            current.state = FlowState.SUSPENDED
            self._detail = await self.store.update_flow_detail(
                self.book_id, current, token=self.token
            )
        except Exception as exc:
            # The cancel is what the caller must see; the saved states still allow a resume.
            logger.warning("flow %r: could not save its suspension: %r", self.flow.name, exc)
            return
        await self._emit(Event.FLOW_STATE, state=FlowState.SUSPENDED, old_state=old)


def _describe(value: object) -> str:
    """``value`` as an error message names it: its type, and a short repr."""
    return f"{type(value).__name__} {value!r:.60}"


async def run_flow(
    flow: Flow | Task,
    inputs: Mapping[str, Any] | None = None,
    store: Store | None = None,
    **engine_kwargs: Any,
) -> dict[str, Any]:
    """Run ``flow`` to its end without a board (like TaskFlow's ``engines.run``).

    Args:
        flow: the flow (or single task) to run.
        inputs: the flow's inputs.
        store: where progress is saved; a private ``MemoryStore`` when None.
        **engine_kwargs: passed to :class:`Engine` (``book_id``, ``token``, ``notifier``, ...).

    Returns:
        The inputs plus every value the flow provided.

    Raises:
        FlowFailed: a task failed and the flow was reverted; ``.failure`` says what failed.
        CompilationError: the flow is not valid.
        TypeError: ``flow`` is neither a ``Flow`` nor a ``Task``.
    """
    engine = Engine(flow, store=store, inputs=inputs, **engine_kwargs)
    result = await engine.run()
    if result.state is FlowState.SUCCESS:
        return result.results
    raise FlowFailed(
        f"flow {engine.flow.name!r} ended {result.state}: {result.failure}",
        failure=result.failure,
    )
