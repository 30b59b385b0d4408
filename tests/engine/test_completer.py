"""The completer decides what a failure leads to, with no scheduler around it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aioconductor.engine import (
    AlwaysRevert,
    AlwaysRevertAll,
    Attempt,
    Decision,
    Flow,
    Retry,
    Times,
    linear,
)
from aioconductor.engine.completer import REVERT_ALL, Completer, Strategy
from aioconductor.events import Notifier
from aioconductor.failure import Failure
from aioconductor.persistence.memory import MemoryStore

from .conftest import Log, Step, open_journal


async def _completer(flow: Flow) -> tuple[Completer, dict[str, int]]:
    """A completer over a new run of ``flow``, and the flow's node indices by name."""
    store = MemoryStore()
    await store.connect()
    journal, compiled = await open_journal(store, flow, Notifier(), first_saved=False)
    completer = Completer(compiled.nodes, journal, {}, {})
    return completer, {node.name: node.index for node in compiled.nodes}


def _failure(message: str) -> Failure:
    return Failure.from_exception(RuntimeError(message))


async def test_times_retries_its_pattern_then_reverts_the_flow(log: Log) -> None:
    completer, at = await _completer(linear("f", Step("a", log), retry=Times(2)))
    assert completer.on_failure(at["a"], _failure("first")) == Strategy(at["f.retry"])
    assert completer.failure is None
    assert completer.on_failure(at["a"], _failure("second")) is REVERT_ALL
    assert completer.failure is not None and completer.failure.message == "second"
    assert [a.failures["a"].message for a in completer.histories[at["f.retry"]]] == [
        "first",
        "second",
    ]


async def test_revert_passes_the_failure_to_the_enclosing_controller(log: Log) -> None:
    inner = linear("inner", Step("a", log), retry=AlwaysRevert())
    completer, at = await _completer(linear("outer", inner, retry=Times(3)))
    assert completer.on_failure(at["a"], _failure("x")) == Strategy(at["outer.retry"])


async def test_revert_all_skips_the_enclosing_controller(log: Log) -> None:
    inner = linear("inner", Step("a", log), retry=AlwaysRevertAll())
    completer, at = await _completer(linear("outer", inner, retry=Times(3)))
    assert completer.on_failure(at["a"], _failure("x")) is REVERT_ALL
    assert completer.histories[at["outer.retry"]] == []  # never asked


async def test_a_controller_that_fails_to_decide_reverts_the_flow(log: Log) -> None:
    class Broken(Retry):
        def on_failure(self, history: Sequence[Attempt], inputs: Mapping[str, Any]) -> Decision:
            raise LookupError("no idea")

    completer, at = await _completer(linear("f", Step("a", log), retry=Broken()))
    assert completer.on_failure(at["a"], _failure("x")) is REVERT_ALL
