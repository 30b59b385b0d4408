"""The completer: what a failure leads to, and the reverts it needs, apart from scheduling.

As in TaskFlow's completer, :meth:`Completer.on_failure` asks the retry controllers whose
patterns hold the failed atom, innermost first, and returns a :class:`Strategy`: run one
pattern again (``Decision.RETRY``), or revert the whole flow (``REVERT_ALL``, or ``REVERT``
with no enclosing controller left to ask). The runner applies it, as it alone knows what runs;
the completer reverts (newest first), and on resume finishes what a stopped run had decided
(or decides it again, when the run stopped before saving the decision).

What is saved:

- ``intention=REVERT`` on an atom marks a revert of the whole flow under way;
- a retry controller with ``intention=RETRY`` marks its pattern's revert-for-retry under way,
  and its ``meta["history"]`` holds the failed attempts.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aioconductor.engine.compiler import Node
from aioconductor.engine.journal import Journal
from aioconductor.engine.retry import Attempt
from aioconductor.engine.retry import Decision
from aioconductor.engine.retry import Retry
from aioconductor.engine.task import Task
from aioconductor.failure import Failure
from aioconductor.persistence.models import AtomState
from aioconductor.persistence.models import FlowState
from aioconductor.persistence.models import Intention

__all__ = ["REVERT_ALL", "Completer", "Strategy"]

logger = logging.getLogger("aioconductor.engine")

_REVERTIBLE = frozenset(
    {AtomState.SUCCESS, AtomState.FAILURE, AtomState.RUNNING, AtomState.REVERTING}
)


@dataclass(frozen=True, slots=True)
class Strategy:
    """What to do about a failure.

    Attributes:
        retry: the retry node whose pattern is to be reverted and run again; None to revert
            the whole flow.
    """

    retry: int | None


#: Revert the whole flow.
REVERT_ALL = Strategy(None)


class Completer:
    """Handles the failures of one flow run: decides, reverts, and retries' bookkeeping.

    Args:
        nodes: the flow's nodes.
        journal: the run's journal, loaded.
        storage: the run's values (inputs and what atoms provided), shared with the runner.
        inputs: the flow's inputs.
    """

    __slots__ = (
        "_inputs",
        "failure",
        "failures",
        "flow_name",
        "histories",
        "journal",
        "nodes",
        "revert_failed",
        "storage",
    )

    def __init__(
        self,
        nodes: list[Node],
        journal: Journal,
        storage: dict[str, Any],
        inputs: dict[str, Any],
    ) -> None:
        self.nodes = nodes
        self.journal = journal
        self.storage = storage
        self._inputs = inputs
        self.flow_name = journal.flow_name
        #: Atom name -> the failure it raised in this flow run.
        self.failures: dict[str, Failure] = {}
        #: The failure that made the flow revert, once it did.
        self.failure: Failure | None = None
        #: Retry node -> its failed attempts.
        self.histories: dict[int, list[Attempt]] = {}
        #: Whether a revert failed: the flow then ends in FAILURE.
        self.revert_failed = False
        first: tuple[int, Failure] | None = None
        for node, detail in zip(nodes, journal.details, strict=True):
            if node.is_retry:
                self.histories[node.index] = journal.history(node.index)
            failure = detail.failure
            if failure is not None:
                self.failures[node.name] = failure
                if detail.intention is Intention.REVERT:
                    seq = detail.meta.get("seq", 0)
                    if first is None or seq < first[0]:
                        first = (seq, failure)
        if first is not None:
            # The failure that started the saved revert of the flow: the earliest.
            self.failure = first[1]

    def inputs_of(self, node: Node) -> dict[str, Any]:
        """The values ``node`` requires that the run has (a controller's inputs)."""
        storage = self.storage
        return {key: storage[key] for _, key in node.args if key in storage}

    # -- deciding ------------------------------------------------------------------------------

    async def record(self, index: int, failure: Failure, intention: Intention) -> None:
        """Save that atom ``index`` failed, to be handled as ``intention`` says."""
        self.failures[self.nodes[index].name] = failure
        await self.journal.fail(index, failure, intention)

    def on_failure(self, index: int, failure: Failure) -> Strategy:
        """Decide what atom ``index`` failing with ``failure`` leads to (see the module)."""
        strategy = self._decide(self.nodes[index], failure)
        if strategy is REVERT_ALL:
            self.failure = failure
        return strategy

    def _decide(self, node: Node, failure: Failure) -> Strategy:
        for r in node.scopes:
            retry = self.nodes[r].atom
            assert isinstance(retry, Retry)
            history = self.histories[r]
            history.append(Attempt(self.journal.details[r].result, {node.name: failure}))
            try:
                decision = retry.on_failure(history, self.inputs_of(self.nodes[r]))
            except Exception:
                logger.exception("%r failed to decide; reverting flow %r", retry, self.flow_name)
                return REVERT_ALL
            if decision is Decision.RETRY:
                return Strategy(r)
            if decision is Decision.REVERT_ALL:
                return REVERT_ALL
        return REVERT_ALL

    async def redecide(self) -> None:
        """Decide again on failures saved for a retry whose decision was not saved: the run
        stopped (a crash, a cancel) between the two writes. Their controllers are asked again
        (with the attempts they saved), so the pattern is retried, not the flow reverted."""
        details = self.journal.details
        undecided = [
            i
            for i, d in enumerate(details)
            if d.state is AtomState.FAILURE
            and d.intention is Intention.RETRY
            and d.failure is not None
            and d.revert_failure is None
        ]
        undecided.sort(key=lambda i: details[i].meta.get("seq", 0))
        for index in undecided:
            scopes = self.nodes[index].scopes
            if any(details[r].intention is Intention.RETRY for r in scopes):
                continue  # its pattern's retry was saved: finish_retries() finishes it
            failure = details[index].failure
            assert failure is not None
            strategy = self._decide(self.nodes[index], failure)
            if strategy.retry is None:
                await self.journal.intend(index, Intention.REVERT)
                if self.failure is None:
                    self.failure = failure
            else:
                await self.mark_retry(strategy.retry)

    def must_revert_all(self) -> bool:
        """Whether the saved run was reverting the whole flow (or had to, and had not begun)."""
        details = self.journal.details
        retrying = {
            m
            for r, d in enumerate(details)
            if d.intention is Intention.RETRY and self.nodes[r].is_retry
            for m in self.nodes[r].members
        }
        return any(
            d.intention is Intention.REVERT
            or (d.state in (AtomState.FAILURE, AtomState.REVERTING) and i not in retrying)
            for i, d in enumerate(details)
        )

    # -- retries -------------------------------------------------------------------------------

    async def attempt(self, r: int) -> Failure | None:
        """Start an attempt of retry controller ``r``'s pattern: publish the controller's value
        for it, and save it.

        Returns:
            The failure the controller raised (or a value that is not JSON), if it did.
        """
        node = self.nodes[r]
        retry = node.atom
        assert isinstance(retry, Retry)
        history = self.histories[r]
        try:
            value = retry.execute(history, self.inputs_of(node))
            json.dumps(value, allow_nan=False)
        except Exception as exc:
            return Failure.from_exception(exc)
        if retry.provides:
            self.storage[retry.provides[0]] = value
        await self.journal.attempt(r, value, history)
        return None

    async def mark_retry(self, r: int) -> None:
        """Save that retry ``r``'s pattern is to be reverted and run again, with its attempts."""
        await self.journal.intend(r, Intention.RETRY, self.histories[r])

    async def finish_retries(self) -> bool:
        """Finish the saved reverts-for-retry (of a stopped run), so their patterns run again.

        Returns:
            False if a revert failed (the flow is then to be reverted).
        """
        for r, node in enumerate(self.nodes):
            if node.is_retry and self.journal.details[r].intention is Intention.RETRY:
                if not await self._revert(node.members, Intention.RETRY):
                    return False
                self.reset(r)
        return True

    async def revert_for_retry(self, r: int, failure: Failure) -> bool:
        """Revert retry ``r``'s pattern (its nodes stopped) to run it again.

        Returns:
            False if a revert failed: ``failure`` is then the flow's, to be reverted.
        """
        if await self._revert(self.nodes[r].members, Intention.RETRY):
            return True
        self.failure = failure
        return False

    def delay(self, r: int) -> float:
        """Seconds to wait before retry ``r``'s pattern runs again."""
        retry = self.nodes[r].atom
        assert isinstance(retry, Retry)
        return retry.delay(self.histories[r])

    def reset(self, r: int) -> None:
        """Retry ``r``'s pattern is to run again: its nodes PENDING, inner attempts forgotten."""
        journal = self.journal
        for index in (r, *self.nodes[r].members):
            journal.reset(index)
            if index != r and index in self.histories:
                self.histories[index] = []

    # -- reverting -----------------------------------------------------------------------------

    async def revert_all(self) -> FlowState:
        """Revert every atom that ran, newest first.

        Returns:
            ``REVERTED``, or ``FAILURE`` if a revert failed (in this run).
        """
        ok = await self._revert(range(len(self.nodes)), Intention.REVERT)
        return FlowState.REVERTED if ok and not self.revert_failed else FlowState.FAILURE

    async def _revert(self, indices: Iterable[int], intention: Intention) -> bool:
        """Revert those of ``indices`` that ran, newest first; False if a revert failed."""
        details = self.journal.details
        todo = [
            i
            for i in indices
            if details[i].state in _REVERTIBLE and details[i].revert_failure is None
        ]
        todo.sort(key=lambda i: details[i].meta.get("seq", math.inf), reverse=True)
        ok = True
        for index in todo:
            ok = await self._revert_node(index, intention) and ok
        if not ok:
            self.revert_failed = True
        return ok

    async def _revert_node(self, index: int, intention: Intention) -> bool:
        node = self.nodes[index]
        journal = self.journal
        if node.is_retry:
            self.histories[index] = []
            await journal.revert_controller(index, intention)
            self._unpublish(node)
            return True
        task = node.atom
        assert isinstance(task, Task)
        detail = journal.details[index]
        result = detail.failure if detail.failure is not None else detail.result
        await journal.reverting(index, intention)
        storage = self.storage
        kwargs = {param: storage[key] for param, key in node.args if key in storage}
        try:
            outcome = await task.run_revert(kwargs, result, self.failures)
        except Exception as exc:
            logger.warning("flow %r: reverting %r failed: %r", self.flow_name, node.name, exc)
            await journal.revert_failed(index, Failure.from_exception(exc))
            return False
        await journal.reverted(index, outcome)
        self._unpublish(node)
        return True

    def _unpublish(self, node: Node) -> None:
        """Forget what ``node`` provided (it was reverted): an input of that name shows again."""
        for key in node.atom.provides:
            if key in self._inputs:
                self.storage[key] = self._inputs[key]
            else:
                self.storage.pop(key, None)
