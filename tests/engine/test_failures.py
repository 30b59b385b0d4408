"""Failures: what ran is reverted newest first, the failure is saved, and the flow says so."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aioconductor.engine import Engine, Failure, FlowFailed, Task, linear, run_flow, task, unordered
from aioconductor.errors import TaskTimeout
from aioconductor.events import Event, Notifier
from aioconductor.persistence.memory import MemoryStore
from aioconductor.persistence.models import AtomState, FlowState
from tests.persistence.conftest import StoreBackend, store_backend

from .conftest import Log, Step

__all__ = ["store_backend"]  # the fixture: every store backend in turn


async def test_failure_in_a_linear_flow_reverts_earlier_tasks_newest_first(log: Log) -> None:
    flow = linear(
        "five",
        Step("s1", log),
        Step("s2", log),
        Step("s3", log, fail=True),
        Step("s4", log),
        Step("s5", log),
    )
    async with MemoryStore() as store:
        result = await Engine(flow, store=store, book_id="book").run()
        saved = (await store.get_logbook("book")).flows
    assert result.state is FlowState.REVERTED
    assert log.executed == ["s1", "s2", "s3"]
    assert log.reverted == ["s3", "s2", "s1"]
    assert result.failure is not None and result.failure.check(RuntimeError)
    assert result.failure.message == "s3 failed"
    (detail,) = saved.values()
    assert detail.state is FlowState.REVERTED
    atom = detail.atoms["s3"]
    assert atom.failure is not None and atom.failure.exc_type == "builtins.RuntimeError"
    assert "Traceback" in atom.failure.traceback and "s3 failed" in atom.failure.traceback
    assert {n: a.state for n, a in detail.atoms.items()} == dict.fromkeys(
        ["s1", "s2", "s3"], AtomState.REVERTED
    )


async def test_run_flow_raises_flow_failed_with_the_failure(log: Log) -> None:
    with pytest.raises(FlowFailed) as caught:
        await run_flow(linear("f", Step("a", log), Step("b", log, fail=True)))
    failure = caught.value.failure
    assert isinstance(failure, Failure) and failure.check(RuntimeError)
    assert "b failed" in str(caught.value)


async def test_revert_receives_result_and_flow_failures() -> None:
    seen: dict[str, Any] = {}

    class Charge(Task):
        async def execute(self, amount: int) -> str:
            return f"charged {amount}"

        async def revert(self, amount: int, *, result: Any, flow_failures: Any) -> None:
            seen.update(amount=amount, result=result, failures=flow_failures)

    @task
    async def explode() -> None:
        raise ValueError("no")

    with pytest.raises(FlowFailed):
        await run_flow(linear("f", Charge(provides="c"), explode), {"amount": 7})
    assert seen["amount"] == 7 and seen["result"] == "charged 7"
    assert seen["failures"]["explode"].check(ValueError)


async def test_a_failing_revert_ends_the_flow_in_failure(log: Log) -> None:
    class BadUndo(Step):
        async def revert(self, **kwargs: Any) -> None:
            raise OSError("cannot undo")

    flow = linear("f", Step("a", log), BadUndo("b", log), Step("c", log, fail=True))
    async with MemoryStore() as store:
        result = await Engine(flow, store=store, book_id="bk").run()
        (detail,) = (await store.get_logbook("bk")).flows.values()
    assert result.state is FlowState.FAILURE
    assert log.reverted == ["c", "a"]  # the others are still reverted
    b = detail.atoms["b"]
    assert b.state is AtomState.FAILURE and b.revert_failure is not None
    assert b.revert_failure.check(OSError)
    assert detail.state is FlowState.FAILURE


async def test_unordered_failure_cancels_the_running_sibling(log: Log) -> None:
    cancelled = anyio.Event()
    started = anyio.Event()

    @task(provides="slow")
    async def slow() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    @task
    async def fail() -> None:
        await started.wait()
        raise RuntimeError("sibling failed")

    with anyio.fail_after(5):
        result = await Engine(unordered("u", slow, fail)).run()
    assert cancelled.is_set()
    assert result.state is FlowState.REVERTED
    assert result.failure is not None and result.failure.message == "sibling failed"


async def test_task_timeout_fails_and_reverts(log: Log) -> None:
    @task(timeout=0.05)
    async def sleepy() -> None:
        await anyio.sleep(10)

    with anyio.fail_after(5):
        result = await Engine(linear("f", Step("a", log), sleepy)).run()
    assert result.state is FlowState.REVERTED
    assert result.failure is not None and result.failure.check(TaskTimeout)
    assert "sleepy" in result.failure.message
    assert log.reverted == ["a"]


async def test_a_non_json_result_fails_the_task_clearly(log: Log) -> None:
    @task(provides="thing")
    async def makes_object() -> object:
        return object()

    with pytest.raises(FlowFailed) as caught:
        await run_flow(linear("f", Step("a", log), makes_object))
    failure = caught.value.failure
    assert isinstance(failure, Failure)
    assert "makes_object" in failure.message and "JSON" in failure.message
    assert log.reverted == ["a"]


@pytest.mark.parametrize("result", [{1: "a", "1": "b"}, [{"ok": {2.5: "x"}}]])
async def test_a_result_with_a_key_that_is_not_a_str_fails_the_task(
    log: Log, result: object
) -> None:
    # The store would refuse it (it would not read back as it was): the task fails and the
    # flow is reverted, rather than every write of the job failing.
    @task(provides="thing")
    async def keyed() -> object:
        return result

    with pytest.raises(FlowFailed) as caught:
        await run_flow(linear("f", Step("a", log), keyed))
    failure = caught.value.failure
    assert failure is not None and "is not a string" in failure.message
    assert log.reverted == ["a"]


async def test_events_report_every_phase_and_state_change(log: Log) -> None:
    notifier = Notifier()
    events: list[tuple[str, dict[str, Any]]] = []
    notifier.register(None, lambda event, details: events.append((event, dict(details))))
    await Engine(linear("f", Step("a", log)), notifier=notifier).run()
    names = [e for e, _ in events]
    for phase in ("compilation", "preparation", "validation", "running"):
        assert names.index(f"{phase}_start") < names.index(f"{phase}_end")
    atoms = [(d["atom"], d["old_state"], d["state"]) for e, d in events if e == Event.ATOM_STATE]
    assert atoms == [("a", "PENDING", "RUNNING"), ("a", "RUNNING", "SUCCESS")]
    flows = [(d["old_state"], d["state"]) for e, d in events if e == Event.FLOW_STATE]
    assert flows == [("PENDING", "RUNNING"), ("RUNNING", "SUCCESS")]


async def test_a_reverted_flow_reports_no_value_of_a_reverted_task(
    log: Log, store_backend: StoreBackend
) -> None:
    # What a reverted task provided is undone with it: neither the run's result nor a later
    # read of the ended flow (by a store opened afresh) reports it; inputs stay. Every store.
    flow = linear("f", Step("a", log), Step("b", log), Step("c", log, fail=True))
    store = await store_backend.open()
    result = await Engine(flow, store=store, book_id="job", inputs={"x": 1}).run()
    assert result.state is FlowState.REVERTED
    assert result.provided == {}
    assert result.results == {"x": 1}
    reopened = await store_backend.open()
    again = await Engine(flow, store=reopened, book_id="job", inputs={"x": 1}).run()
    assert (again.state, again.provided, again.results) == (FlowState.REVERTED, {}, {"x": 1})


async def test_a_failed_revert_keeps_the_values_of_what_was_not_reverted(log: Log) -> None:
    class Stuck(Step):
        async def revert(self, **kwargs: Any) -> None:
            raise RuntimeError("cannot undo")

    flow = linear("f", Step("a", log), Stuck("b", log), Step("c", log, fail=True))
    result = await Engine(flow).run()
    assert result.state is FlowState.FAILURE
    assert result.provided == {"b": "b-done"}
