"""The journal: what is saved of one flow run, and the engine's only link to the store.

Every change to the saved run goes through a :class:`Journal`: the flow's state, and each
atom's state, result, failure and marks (``intention``; ``meta["seq"]``, which orders finished
atoms so reverts run newest first after a resume; ``meta["started"]`` and ``meta["ended"]``,
epoch seconds of the atom's last run, for people; a retry controller's ``meta["history"]``, its
failed attempts). It saves each change, tells listeners (``ATOM_STATE``, ``FLOW_STATE``), and
keeps the store's copy of every atom detail: nobody else holds a detail across a write.

Some changes are saved together with the next one, where a crash between them could not
matter (a RUNNING atom is run again on resume, as after a crash mid-task):

- a new logbook is created with the flow RUNNING, and its only first task too (or it was,
  with the job's claim: ``created_run``);
- in a chain, a task's end is saved with the next task's start;
- the flow's last task's end is saved with the flow's end.

The change saved ahead is then only reported when it happens.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import KW_ONLY
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from aioconductor._payload import non_str_key
from aioconductor.engine.compiler import Node
from aioconductor.engine.logbooks import create_run
from aioconductor.engine.retry import Attempt
from aioconductor.errors import LogBookNotFound
from aioconductor.events import Event
from aioconductor.events import Notifier
from aioconductor.failure import Failure
from aioconductor.persistence.base import Store
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import AtomState
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import FlowState
from aioconductor.persistence.models import Intention

__all__ = ["FINAL", "Journal"]

logger = logging.getLogger("aioconductor.engine")

#: The states a flow run ends in.
FINAL = frozenset({FlowState.SUCCESS, FlowState.REVERTED, FlowState.FAILURE})

_SUCCESS = AtomState.SUCCESS
_RUNNING = AtomState.RUNNING
_EXECUTE = Intention.EXECUTE
#: The states of an atom that leave nothing to decide or finish on resume.
_BLANK = frozenset({AtomState.PENDING, _RUNNING, _SUCCESS})


@dataclass(eq=False, slots=True)
class Journal:
    """What is saved of one flow run; open one with :meth:`open`.

    Args:
        store: where the run is saved.
        flow: the flow's detail, as saved.
        book_id: the logbook's id.
        token: the claim's fencing token, carried by every write.
        notifier: told of every state change.
        flow_name: the flow's name, as events give it.
    """

    store: Store
    #: The flow's detail as last saved or read (its atoms as of then).
    flow: FlowDetail
    _: KW_ONLY
    book_id: str
    token: int | None
    notifier: Notifier
    flow_name: str
    _flow_uuid: str = field(init=False)
    #: One atom detail per node of the flow, as the store last gave it (see :meth:`load`).
    details: list[AtomDetail] = field(init=False, default_factory=list)
    #: The highest ``meta["seq"]`` given so far.
    seq: int = field(init=False, default=0)
    #: How many atoms are in ``SUCCESS``: the runner's end check costs O(1) per task.
    succeeded: int = field(init=False, default=0)
    #: Whether the flow was created RUNNING, and which atom with it.
    _created_running: bool = field(init=False, default=False)
    _created_atom: int | None = field(init=False, default=None)
    #: The atom saved RUNNING ahead of its start, and its state before.
    _ahead: tuple[int, AtomState] | None = field(init=False, default=None)
    #: The atom whose SUCCESS is to be saved with the flow's end.
    _final: int | None = field(init=False, default=None)
    #: Whether the run started by :meth:`load` found nothing saved: no failure to decide
    #: again, no revert or retry to finish.
    blank: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._flow_uuid = self.flow.uuid

    @classmethod
    async def open(
        cls,
        store: Store,
        *,
        book_id: str,
        book_name: str,
        detail_name: str,
        token: int | None,
        notifier: Notifier,
        flow_name: str,
        fresh: bool,
        first: Node | None,
        created_run: FlowDetail | None = None,
    ) -> Journal:
        """Read the flow's detail named ``detail_name`` from logbook ``book_id``, or create it.

        Args:
            book_name: the name of a new logbook.
            fresh: the logbook cannot exist yet: create it without reading it first.
            first: the node a new run starts with, if it is the only one (a task): created
                RUNNING with the flow.
            created_run: the run's detail, created already (with the job's claim, see
                :mod:`aioconductor.persistence.runs`): the run starts from it, as from a detail
                created here, if it is the one this run would create (its name
                ``detail_name``, holding ``first`` alone); else the logbook is read.

        The other arguments are as for the constructor.

        Returns:
            The journal of the run.
        """
        created = False
        if created_run is not None and _is_new_run(created_run, detail_name, first):
            flow, created = created_run, True
        elif fresh and created_run is None:
            flow, created = await create_run(store, book_id, book_name, detail_name, token, first)
        else:
            try:
                book = await store.get_logbook(book_id)
            except LogBookNotFound:
                flow, created = await create_run(
                    store, book_id, book_name, detail_name, token, first
                )
            else:
                found = [f for f in book.flows.values() if f.name == detail_name]
                if found:
                    flow = found[0]
                else:
                    flow = await store.update_flow_detail(
                        book_id, FlowDetail(name=detail_name), token=token
                    )
        journal = cls(
            store, flow, book_id=book_id, token=token, notifier=notifier, flow_name=flow_name
        )
        if created:
            journal._created_running = True
            journal._created_atom = None if first is None else first.index
        return journal

    def load(self, nodes: Sequence[Node]) -> list[AtomDetail]:
        """Start a run: take the flow's atoms as saved, one per node (a new one where none was).

        Returns:
            :attr:`details`.
        """
        saved = self.flow.atoms
        details: list[AtomDetail] = []
        seq = succeeded = 0
        blank = True
        for node in nodes:
            detail = saved.get(node.name)
            if detail is None:
                detail = AtomDetail(name=node.name, kind="retry" if node.is_retry else "task")
            else:
                seq = max(seq, detail.meta.get("seq", 0))
                succeeded += detail.state is _SUCCESS
                blank = blank and detail.state in _BLANK and detail.intention is _EXECUTE
            details.append(detail)
        self.details, self.seq, self.succeeded = details, seq, succeeded
        self.blank = blank
        self._final = None
        # Only the first run of a new logbook starts with its first atom saved.
        created, self._created_atom = self._created_atom, None
        self._ahead = None if created is None else (created, AtomState.PENDING)
        return details

    def history(self, index: int) -> list[Attempt]:
        """The failed attempts saved with retry controller ``index``."""
        saved = self.details[index].meta.get("history", [])
        return [_attempt_from_json(a) for a in saved]

    # -- a task's run ----------------------------------------------------------------------

    async def start(self, index: int) -> None:
        """Save atom ``index`` RUNNING, cleared of what an earlier run of it left."""
        ahead = self._ahead
        if ahead is not None:
            self._ahead = None
            if ahead[0] == index:
                # Saved so (and cleared) with the flow's creation or the previous task's end.
                if ahead[1] is not _RUNNING:
                    await self._emit_atom(self.details[index].name, _RUNNING, ahead[1])
                return
        _clear(self.details[index])
        await self._save(index, _RUNNING)

    async def succeed(self, index: int, result: Any, then: int | None = None) -> None:
        """Save atom ``index`` SUCCESS with ``result``, and atom ``then`` RUNNING in the same
        write (``then`` runs next, nothing can come between: its :meth:`start` saves nothing)."""
        done = self.details[index]
        done.result = result
        self.seq += 1
        done.meta["seq"] = self.seq
        _ended(done)
        if then is None:
            await self._save(index, _SUCCESS)
            return
        starting = self.details[then]
        old, old_next = done.state, starting.state
        self._set_state(done, _SUCCESS)
        _clear(starting)
        self._set_state(starting, _RUNNING)
        self.details[index], self.details[then] = await self.store.update_atom_details(
            self.book_id, self._flow_uuid, [done, starting], token=self.token
        )
        self._ahead = (then, old_next)
        if old is not _SUCCESS:
            await self._emit_atom(done.name, _SUCCESS, old)

    def succeed_last(self, index: int, result: Any) -> None:
        """Atom ``index`` ended the flow with ``result``: its SUCCESS is saved with the
        flow's end by :meth:`end_flow` (until then a crash leaves it RUNNING)."""
        done = self.details[index]
        done.result = result
        self.seq += 1
        done.meta["seq"] = self.seq
        _ended(done)
        self._set_state(done, _SUCCESS)
        self._final = index

    async def fail(self, index: int, failure: Failure, intention: Intention) -> None:
        """Save atom ``index`` FAILURE with ``failure``, to be handled as ``intention`` says."""
        detail = self.details[index]
        detail.failure = failure
        self.seq += 1
        detail.meta["seq"] = self.seq
        _ended(detail)
        detail.intention = intention
        await self._save(index, AtomState.FAILURE)

    # -- retry controllers ---------------------------------------------------------------------

    async def attempt(self, index: int, value: Any, history: list[Attempt]) -> None:
        """Save retry controller ``index`` SUCCESS: an attempt of its pattern starts with
        ``value``, after the failed ones in ``history``."""
        detail = self.details[index]
        detail.intention = Intention.EXECUTE
        detail.result = value
        detail.failure = None
        self.seq += 1
        detail.meta["seq"] = self.seq
        detail.meta["history"] = [_attempt_to_json(a) for a in history]
        await self._save(index, _SUCCESS)

    async def intend(
        self, index: int, intention: Intention, history: list[Attempt] | None = None
    ) -> None:
        """Save what is to become of atom ``index`` (for a retry controller, with its failed
        attempts: ``RETRY`` means its pattern is being reverted to run again)."""
        detail = self.details[index]
        detail.intention = intention
        if history is not None:
            detail.meta["history"] = [_attempt_to_json(a) for a in history]
        await self._save(index, detail.state)

    def reset(self, index: int) -> None:
        """Atom ``index`` is to run again (its pattern is retried): PENDING, not saved yet."""
        self._set_state(self.details[index], AtomState.PENDING)

    # -- reverting -----------------------------------------------------------------------------

    async def reverting(self, index: int, intention: Intention) -> None:
        """Save atom ``index`` REVERTING, its revert done for ``intention``."""
        self.details[index].intention = intention
        await self._save(index, AtomState.REVERTING)

    async def reverted(self, index: int, outcome: Any) -> None:
        """Save atom ``index`` REVERTED; ``outcome`` (what its revert returned) if JSON."""
        self.details[index].revert_result = outcome if _is_json(outcome) else None
        await self._save(index, AtomState.REVERTED)

    async def revert_failed(self, index: int, failure: Failure) -> None:
        """Save atom ``index`` FAILURE: its revert raised ``failure``."""
        self.details[index].revert_failure = failure
        await self._save(index, AtomState.FAILURE)

    async def revert_controller(self, index: int, intention: Intention) -> None:
        """Save retry controller ``index`` REVERTED (it has nothing to undo), its failed
        attempts forgotten, for ``intention``."""
        detail = self.details[index]
        detail.intention = intention
        detail.meta.pop("history", None)
        await self._save(index, AtomState.REVERTED)

    # -- the flow ----------------------------------------------------------------------------

    async def start_flow(self) -> None:
        """Save the flow RUNNING (RESUMING first if it ran before)."""
        if self._created_running:
            self._created_running = False
            await self._emit_flow(FlowState.RUNNING, FlowState.PENDING)
            return
        if self.flow.state is not FlowState.PENDING:
            await self._save_flow(FlowState.RESUMING)
        await self._save_flow(FlowState.RUNNING)

    async def end_flow(self, state: FlowState) -> None:
        """Save the flow's end, in ``state``, with its last task's (see :meth:`succeed_last`)."""
        await self._save_flow(state, self._final)

    async def suspend(self) -> None:
        """Save the flow SUSPENDED, unless it ended; a failure to save is only logged (the
        atoms' saved states still allow a resume)."""
        try:
            # Re-read: the write that the cancel interrupted may have reached the store.
            book = await self.store.get_logbook(self.book_id)
            current = book.flows.get(self._flow_uuid)
            if current is None or current.state in FINAL:
                return
            old = current.state
            current.state = FlowState.SUSPENDED
            self.flow = await self.store.update_flow_detail(self.book_id, current, token=self.token)
        except Exception as exc:
            logger.warning("flow %r: could not save its suspension: %r", self.flow_name, exc)
            return
        await self._emit_flow(FlowState.SUSPENDED, old)

    # -- saving ------------------------------------------------------------------------------

    def _set_state(self, detail: AtomDetail, state: AtomState) -> None:
        self.succeeded += (state is _SUCCESS) - (detail.state is _SUCCESS)
        detail.state = state

    async def _save(self, index: int, state: AtomState) -> None:
        detail = self.details[index]
        old = detail.state
        self._set_state(detail, state)
        self.details[index] = await self.store.update_atom_detail(
            self.book_id, self._flow_uuid, detail, token=self.token
        )
        if old is not state:
            await self._emit_atom(detail.name, state, old)

    async def _save_flow(self, state: FlowState, final: int | None = None) -> None:
        flow = self.flow
        old = flow.state
        flow.state = state
        atoms = [] if final is None else [self.details[final]]
        self.flow = await self.store.update_flow_detail(
            self.book_id, flow, token=self.token, atoms=atoms
        )
        if final is not None:
            self._final = None
            name = self.details[final].name
            self.details[final] = self.flow.atoms[name]
            await self._emit_atom(name, _SUCCESS, _RUNNING)
        await self._emit_flow(state, old)

    async def _emit_atom(self, atom: str, state: AtomState, old: AtomState) -> None:
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

    async def _emit_flow(self, state: FlowState, old: FlowState) -> None:
        if self.notifier.has_listeners(Event.FLOW_STATE):
            await self.notifier.notify(
                Event.FLOW_STATE,
                {"flow": self.flow_name, "book_id": self.book_id, "state": state, "old_state": old},
            )


def _is_new_run(flow: FlowDetail, name: str, first: Node | None) -> bool:
    """Whether ``flow`` is what this run would create: named ``name``, RUNNING, holding
    ``first`` RUNNING and nothing else (nothing if no ``first``)."""
    if flow.name != name or flow.state is not FlowState.RUNNING:
        return False
    atoms = flow.atoms
    if first is None:
        return not atoms
    atom = atoms.get(first.name)
    return len(atoms) == 1 and atom is not None and atom.state is _RUNNING


def _clear(detail: AtomDetail) -> None:
    """Clear what an earlier run of the atom left, before it runs (again), and stamp when
    this run starts (``meta["started"]``, epoch seconds)."""
    detail.intention = Intention.EXECUTE
    detail.result = detail.failure = detail.revert_failure = detail.revert_result = None
    detail.meta.pop("seq", None)
    detail.meta.pop("ended", None)
    detail.meta["started"] = time.time()


def _ended(detail: AtomDetail) -> None:
    """Stamp when the atom's run ended (``meta["ended"]``, epoch seconds)."""
    detail.meta["ended"] = time.time()


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
