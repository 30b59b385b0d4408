"""``Engine.revert``: what a cancelled job's owner does. It reverts, newest first, every task
that ran or was running (as the store says), runs nothing more, and ends the flow REVERTED."""

from __future__ import annotations

import collections
from typing import Any

import anyio

from aioconductor.engine import Engine, Task, linear
from aioconductor.events import Event
from aioconductor.persistence import Store
from aioconductor.persistence.models import AtomState, FlowState
from tests.engine.test_resume import make_gate, run_until_started_then_cancel, steps
from tests.persistence.conftest import store, store_backend

__all__ = ["store", "store_backend"]  # the fixtures: every store backend in turn


async def test_a_stopped_run_is_reverted_newest_first_without_running_more(store: Store) -> None:
    counts: collections.Counter[str] = collections.Counter()
    order: list[str] = []
    gates: dict[str, Any] = {"c": make_gate()}
    first = Engine(steps(counts, gates), store=store, book_id="job", inputs={"x": 1})
    await run_until_started_then_cancel(first, gates["c"]["started"])
    gates.clear()
    second = Engine(steps(counts, gates), store=store, book_id="job", inputs={"x": 1})
    second.notifier.register(
        Event.ATOM_STATE,
        lambda event, details: (
            order.append(details["atom"]) if details["state"] == "REVERTED" else None
        ),
    )
    result = await second.revert()
    assert result.state is FlowState.REVERTED
    assert result.provided == {}
    assert counts == {"a": 1, "b": 1, "c": 1, "revert a": 1, "revert b": 1, "revert c": 1}
    assert order == ["c", "b", "a"]
    (detail,) = (await store.get_logbook("job")).flows.values()
    assert detail.state is FlowState.REVERTED
    states = {name: atom.state for name, atom in detail.atoms.items()}
    assert states.pop("d", AtomState.PENDING) is AtomState.PENDING
    assert states == {"a": AtomState.REVERTED, "b": AtomState.REVERTED, "c": AtomState.REVERTED}


async def test_the_same_engine_reverts_after_its_run_was_stopped(store: Store) -> None:
    counts: collections.Counter[str] = collections.Counter()
    gates: dict[str, Any] = {"b": make_gate()}
    engine = Engine(steps(counts, gates), store=store, book_id="job", inputs={"x": 1})
    engine.fresh = True
    await run_until_started_then_cancel(engine, gates["b"]["started"])
    result = await engine.revert()
    assert result.state is FlowState.REVERTED
    assert counts == {"a": 1, "b": 1, "revert a": 1, "revert b": 1}


async def test_with_nothing_saved_nothing_runs_or_reverts(store: Store) -> None:
    counts: collections.Counter[str] = collections.Counter()
    engine = Engine(steps(counts, {}), store=store, book_id="never-ran", inputs={"x": 1})
    result = await engine.revert()
    assert result.state is FlowState.REVERTED and counts == {}
    (detail,) = (await store.get_logbook("never-ran")).flows.values()
    assert detail.state is FlowState.REVERTED
    assert {atom.state for atom in detail.atoms.values()} <= {AtomState.PENDING}


async def test_a_flow_that_ended_is_left_as_it_is(store: Store) -> None:
    counts: collections.Counter[str] = collections.Counter()
    done = await Engine(steps(counts, {}), store=store, book_id="job", inputs={"x": 1}).run()
    assert done.state is FlowState.SUCCESS
    again = Engine(steps(counts, {}), store=store, book_id="job", inputs={"x": 1})
    result = await again.revert()
    assert result.state is FlowState.SUCCESS
    assert result.provided == done.provided
    assert counts == {"a": 1, "b": 1, "c": 1, "d": 1}


class FailsToRevert(Task):
    def __init__(self) -> None:
        super().__init__("stuck", provides="stuck")

    async def execute(self) -> int:
        return 1

    async def revert(self, **kwargs: Any) -> None:
        raise RuntimeError("cannot undo")


async def test_a_revert_that_fails_ends_the_flow_failure(store: Store) -> None:
    counts: collections.Counter[str] = collections.Counter()
    gates: dict[str, Any] = {"b": make_gate()}

    def flow() -> Any:
        return linear("f", FailsToRevert(), *steps(counts, gates).children[:2])

    first = Engine(flow(), store=store, book_id="job", inputs={"x": 1})
    await run_until_started_then_cancel(first, gates["b"]["started"])
    gates.clear()
    result = await Engine(flow(), store=store, book_id="job", inputs={"x": 1}).revert()
    assert result.state is FlowState.FAILURE
    assert counts["revert a"] == 1 and counts["revert b"] == 1
    (detail,) = (await store.get_logbook("job")).flows.values()
    assert detail.state is FlowState.FAILURE
    assert detail.atoms["stuck"].revert_failure is not None


async def test_a_cancelled_revert_is_resumed_by_the_next(store: Store) -> None:
    counts: collections.Counter[str] = collections.Counter()
    gates: dict[str, Any] = {"c": make_gate()}
    await run_until_started_then_cancel(
        Engine(steps(counts, gates), store=store, book_id="job", inputs={"x": 1}),
        gates["c"]["started"],
    )
    gates.clear()
    gates["revert b"] = make_gate()
    reverting = Engine(steps(counts, gates), store=store, book_id="job", inputs={"x": 1})
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def go() -> None:
                await reverting.revert()

            tg.start_soon(go)
            await gates["revert b"]["started"].wait()
            tg.cancel_scope.cancel()
    gates.clear()
    resumed = Engine(steps(counts, gates), store=store, book_id="job", inputs={"x": 1})
    result = await resumed.revert()
    assert result.state is FlowState.REVERTED
    assert counts["revert a"] == 1 and counts["revert c"] == 1
    assert counts["a"] == counts["b"] == counts["c"] == 1 and counts["d"] == 0
