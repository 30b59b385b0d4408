"""`Engine`: compiles a flow, loads or creates its logbook, validates it and runs it.

Every state change is saved to the store by the run's journal (:mod:`.journal`, carrying the
claim's fencing ``token``), so a new engine on the same store and logbook resumes a flow that
stopped: finished tasks are not run again, and a revert under way goes on reverting. The
runner (:mod:`.runner`) schedules the atoms, its completer (:mod:`.completer`) handles their
failures.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import anyio

from aioconductor.engine.compiler import CompiledFlow
from aioconductor.engine.compiler import Node
from aioconductor.engine.compiler import compilation_key
from aioconductor.engine.compiler import compile_flow
from aioconductor.engine.compiler import keep_compilation
from aioconductor.engine.journal import FINAL
from aioconductor.engine.journal import Journal
from aioconductor.engine.patterns import Flow
from aioconductor.engine.patterns import linear
from aioconductor.engine.runner import Runner
from aioconductor.engine.task import Task
from aioconductor.errors import FlowFailed
from aioconductor.events import Event
from aioconductor.events import Notifier
from aioconductor.failure import Failure
from aioconductor.persistence.base import Store
from aioconductor.persistence.memory import MemoryStore
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import FlowState

__all__ = ["Engine", "EngineResult", "run_flow"]

#: Seconds a cancelled engine may spend saving its suspension.
SUSPEND_TIMEOUT = 5.0


@dataclass
class EngineResult:
    """How a flow run ended.

    Attributes:
        state: ``SUCCESS``, ``REVERTED`` (a task failed and the flow was reverted) or
            ``FAILURE`` (a revert failed too).
        results: the inputs plus every value the flow's atoms provided.
        provided: only the values the flow's atoms provided.
        failure: what made the flow revert; None on success.
        failed_task: the name of the task (or retry controller) that raised ``failure``.
    """

    state: FlowState
    results: dict[str, Any] = field(default_factory=dict)
    provided: dict[str, Any] = field(default_factory=dict)
    failure: Failure | None = None
    failed_task: str | None = None


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
        created_run: the run's flow detail, created in logbook ``book_id`` already (with the
            job's claim, by a store that shares the board's server: see
            :mod:`aioconductor.persistence.runs`); the run starts from it without a write.

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
        created_run: FlowDetail | None = None,
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
        #: What is saved of the run, once prepared: all the engine's reads and writes.
        self._journal: Journal | None = None
        self._validated = False
        #: Whether ``_compiled`` is a kept compilation, shared with other engines: it is
        #: never validated (bound) again for other inputs.
        self._shared = False
        self.fresh = fresh
        self.created_run = created_run

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
        self._compiled, self._shared = compile_flow(self.flow), False
        await self._emit(Event.COMPILATION_END)

    async def prepare(self) -> None:
        """Load the logbook and the flow's detail from the store, or create them."""
        await self._prepare(self._first_task)

    async def _prepare(self, first: Callable[[], Node | None]) -> None:
        if self._compiled is None:
            await self.compile()
        await self._emit(Event.PREPARATION_START)
        if self._own_store and not self.store.connected:
            await self.store.connect()
        self._journal = await Journal.open(
            self.store,
            book_id=self.book_id,
            book_name=self.book_name,
            detail_name=self.detail_name,
            token=self.token,
            notifier=self.notifier,
            flow_name=self.flow.name,
            fresh=self.fresh,
            first=first(),
            created_run=self.created_run,
        )
        await self._emit(Event.PREPARATION_END)

    def _first_task(self) -> Node | None:
        """The node a new run starts with, if it is the only one and a task."""
        assert self._compiled is not None
        return self._compiled.first

    async def validate(self) -> None:
        """Check that every atom's requirements are met by the inputs or earlier atoms.

        A flow validated before with the same shape and input names (by any engine) is not
        compiled or validated again: its compilation is shared.

        Raises:
            CompilationError: naming each atom and the names it misses.
        """
        # Before anything is saved: a flow that cannot run leaves no logbook behind.
        if self._compiled is None or self._shared:
            await self._emit(Event.COMPILATION_START)
            key = compilation_key(self.flow, self.inputs)
            kept = self.flow.compilations.get(key)
            self._compiled = kept if kept is not None else compile_flow(self.flow)
            self._shared = kept is not None
            await self._emit(Event.COMPILATION_END)
        else:
            key = None
        await self._emit(Event.VALIDATION_START)
        if not self._shared:
            self._compiled.validate(self.inputs)
            if key is not None:
                # Compiled here for these inputs, validated: engines to come share it.
                keep_compilation(self.flow, key, self._compiled)
                self._shared = True
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
        if self._journal is None:
            await self.prepare()
        journal = self._journal
        assert self._compiled is not None and journal is not None
        runner = Runner(self._compiled, journal, self.inputs)
        return await self._saved_run(journal, runner, runner.run)

    async def revert(self) -> EngineResult:
        """Stop the flow for good without running any more of it: revert, newest first, every
        task that ran (or was running when its run stopped), as the store says, and end the
        flow ``REVERTED`` (``FAILURE`` if a revert failed). What a cancelled job's owner does.

        The logbook is read afresh (the stopped run's last write may or may not have landed);
        with no saved progress there is nothing to revert. A flow that already ended is left as
        it is, and its saved outcome returned.

        Raises:
            CompilationError: the flow is not valid.
            Exception: any error of the store, as raised.
        """
        self.fresh = False
        self.created_run = None
        self._journal = None
        await self.validate()  # binds each atom's arguments, reverts' too
        await self._prepare(lambda: None)
        journal = self._journal
        assert self._compiled is not None and journal is not None
        runner = Runner(self._compiled, journal, self.inputs)
        return await self._saved_run(journal, runner, runner.completer.revert_all)

    async def _saved_run(
        self, journal: Journal, runner: Runner, body: Callable[[], Awaitable[FlowState]]
    ) -> EngineResult:
        """Run ``body`` (a run or a revert, to the flow's end state) between ``running_start``
        and ``running_end``, and save the end; a flow that already ended is not run again."""
        if journal.flow.state in FINAL:
            return self._result(journal.flow.state, runner)
        await self._emit(Event.RUNNING_START)
        try:
            state = await body()
            await journal.end_flow(state)
        except anyio.get_cancelled_exc_class():
            # Cancelled from outside: save the suspension even so, then let the cancel go on.
            with anyio.move_on_after(SUSPEND_TIMEOUT, shield=True):
                await journal.suspend()
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
        failed = runner.completer.failures.items()
        task = next((name for name, f in failed if f is failure), None) if failure else None
        return EngineResult(state, dict(results), provided, failure, task)


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
