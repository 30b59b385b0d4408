"""Retry controllers: attempts are counted, reverted between, and end as promised."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from aioconductor.engine import (
    AlwaysRevert,
    AlwaysRevertAll,
    Engine,
    Failure,
    FlowFailed,
    ForEach,
    ParameterizedForEach,
    Task,
    Times,
    linear,
    run_flow,
    unordered,
)
from aioconductor.persistence.memory import MemoryStore
from aioconductor.persistence.models import AtomDetail, AtomState, FlowState, Intention
from tests.persistence.conftest import StoreBackend, store_backend

from .conftest import Log, Step

__all__ = ["store_backend"]  # the fixture: every store backend in turn


class Flaky(Task):
    """Fails until it has been executed ``succeed_on`` times."""

    def __init__(self, name: str, log: Log, succeed_on: int, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.log = log
        self.succeed_on = succeed_on

    async def execute(self) -> int:
        self.log.executed.append(self.name)
        attempt = self.log.executed.count(self.name)
        if attempt < self.succeed_on:
            raise RuntimeError(f"attempt {attempt} failed")
        return attempt

    async def revert(self, **kwargs: Any) -> None:
        self.log.reverted.append(self.name)


async def test_times_retries_and_reverts_between_attempts(log: Log) -> None:
    flow = linear(
        "f",
        Step("before", log),
        linear("sub", Step("inner", log), Flaky("flaky", log, 3, provides="n"), retry=Times(3)),
    )
    results = await run_flow(flow)
    assert results["n"] == 3
    assert log.executed == ["before"] + ["inner", "flaky"] * 3
    # Between attempts the pattern is reverted newest first; "before" is never touched.
    assert log.reverted == ["flaky", "inner"] * 2


async def test_times_gives_up_after_its_attempts_and_reverts_everything(log: Log) -> None:
    flow = linear(
        "f",
        Step("before", log),
        linear("sub", Flaky("flaky", log, 99), retry=Times(2)),
    )
    result = await Engine(flow).run()
    assert result.state is FlowState.REVERTED
    assert log.executed.count("flaky") == 2
    assert log.reverted == ["flaky", "flaky", "before"]
    assert result.failure is not None and result.failure.message == "attempt 2 failed"


async def test_times_backoff_waits_between_attempts(log: Log) -> None:
    flow = linear("sub", Flaky("flaky", log, 3), retry=Times(3, backoff=0.05))
    started = time.monotonic()
    await run_flow(flow)
    assert time.monotonic() - started >= 0.05 + 0.1  # 0.05 then 0.1


async def test_times_publishes_the_attempt_number() -> None:
    seen: list[int] = []

    class Check(Task):
        async def execute(self, attempt: int) -> None:
            seen.append(attempt)
            if attempt < 3:
                raise RuntimeError("not yet")

    await run_flow(linear("f", Check(), retry=Times(5, provides="attempt")))
    assert seen == [1, 2, 3]


async def test_for_each_tries_each_value_until_one_works() -> None:
    tried: list[str] = []

    class Connect(Task):
        async def execute(self, host: str) -> str:
            tried.append(host)
            if host != "c":
                raise ConnectionError(host)
            return host

    flow = linear(
        "f", Connect(provides="used"), retry=ForEach(["a", "b", "c", "d"], provides="host")
    )
    results = await run_flow(flow)
    assert tried == ["a", "b", "c"] and results["used"] == "c"


async def test_for_each_fails_when_the_values_run_out() -> None:
    class Never(Task):
        async def execute(self, host: str) -> None:
            raise ConnectionError(host)

    with pytest.raises(FlowFailed) as caught:
        await run_flow(linear("f", Never(), retry=ForEach(["a", "b"], provides="host")))
    failure = caught.value.failure
    assert isinstance(failure, Failure) and failure.message == "b"


async def test_parameterized_for_each_reads_values_from_inputs() -> None:
    tried: list[int] = []

    class Try(Task):
        async def execute(self, port: int) -> int:
            tried.append(port)
            if port < 8002:
                raise OSError(port)
            return port

    retry = ParameterizedForEach(requires="ports", provides="port")
    results = await run_flow(
        linear("f", Try(provides="bound"), retry=retry), {"ports": [8000, 8001, 8002]}
    )
    assert tried == [8000, 8001, 8002] and results["bound"] == 8002


async def test_always_revert_passes_the_failure_to_the_parent_controller(log: Log) -> None:
    inner = linear("inner", Flaky("flaky", log, 2), retry=AlwaysRevert())
    outer = linear("outer", Step("setup", log), inner, retry=Times(2))
    results = await run_flow(outer)
    assert results["setup"] == "setup-done"
    # The inner pattern never retries itself: the outer one runs everything again.
    assert log.executed == ["setup", "flaky", "setup", "flaky"]
    assert log.reverted == ["flaky", "setup"]


async def test_always_revert_without_a_parent_reverts_the_flow(log: Log) -> None:
    flow = linear("f", Step("a", log), linear("inner", Flaky("x", log, 9), retry=AlwaysRevert()))
    result = await Engine(flow).run()
    assert result.state is FlowState.REVERTED and log.reverted == ["x", "a"]


async def test_always_revert_all_skips_the_parent_retry(log: Log) -> None:
    inner = linear("inner", Flaky("flaky", log, 2), retry=AlwaysRevertAll())
    outer = linear("outer", Step("setup", log), inner, retry=Times(5))
    result = await Engine(outer).run()
    assert result.state is FlowState.REVERTED
    assert log.executed == ["setup", "flaky"]  # the outer Times(5) was never asked
    assert log.reverted == ["flaky", "setup"]


async def test_retry_history_is_saved(log: Log) -> None:
    async with MemoryStore() as store:
        flow = linear("f", Flaky("flaky", log, 3), retry=Times(3))
        await Engine(flow, store=store, book_id="b").run()
        (detail,) = (await store.get_logbook("b")).flows.values()
    history = detail.atoms["f.retry"].meta["history"]
    assert [h["failures"]["flaky"]["message"] for h in history] == [
        "attempt 1 failed",
        "attempt 2 failed",
    ]


@pytest.mark.parametrize("when", ["running", "starting"])
async def test_a_retry_stops_a_running_sibling_reverts_it_and_runs_the_pattern_again(
    log: Log, store_backend: StoreBackend, when: str
) -> None:
    # A sibling still running when the pattern is retried is stopped (never ends RUNNING or
    # half-saved), reverted with the rest, and run again; the retried flow then succeeds, on
    # every store. A sibling whose start is still being saved then (a slow store's write, held
    # here until the retry is decided) does not run at all; it used to run for its full time
    # while the retry waited for it, as it did on PostgreSQL unaided (#16 item 1).
    class Slow(Task):
        def __init__(self) -> None:
            super().__init__("slow", provides="slow")
            self.stopped = 0

        async def execute(self) -> str:
            log.executed.append(self.name)
            if not log.reverted:  # the pattern's first attempt
                running.set()
                try:
                    await anyio.sleep(30)
                except anyio.get_cancelled_exc_class():
                    self.stopped += 1
                    raise
            return "slow-done"

        async def revert(self, **kwargs: Any) -> None:
            log.reverted.append(self.name)

    class FailsOnceSlowRuns(Flaky):
        async def execute(self) -> int:
            if when == "running" and not log.reverted:
                await running.wait()
            return await super().execute()

    running = anyio.Event()
    store = await store_backend.open()
    if when == "starting":
        save = store.update_atom_detail
        decided = anyio.Event()

        async def hold_the_siblings_start(
            book_uuid: str, flow_uuid: str, atom: AtomDetail, *, token: int | None = None
        ) -> AtomDetail:
            if atom.name == "slow" and atom.state is AtomState.RUNNING and not decided.is_set():
                await decided.wait()
            saved = await save(book_uuid, flow_uuid, atom, token=token)
            if atom.kind == "retry" and atom.intention is Intention.RETRY:
                decided.set()
            return saved

        store.update_atom_detail = hold_the_siblings_start  # type: ignore[method-assign]
    slow = Slow()
    flaky = FailsOnceSlowRuns("flaky", log, 2, provides="n")
    flow = unordered("pair", flaky, slow, retry=Times(3))
    with anyio.fail_after(10):
        result = await Engine(flow, store=store, book_id="job").run()
    assert result.state is FlowState.SUCCESS, result.failure
    assert result.provided == {"n": 2, "slow": "slow-done"}
    if when == "running":
        assert slow.stopped == 1
        assert sorted(log.executed) == ["flaky", "flaky", "slow", "slow"]
    else:
        assert slow.stopped == 0
        assert sorted(log.executed) == ["flaky", "flaky", "slow"]
    # The failed task is reverted too (it may have done part of its work).
    assert sorted(log.reverted) == ["flaky", "slow"]
    (saved,) = (await store.get_logbook("job")).flows.values()
    assert {name: saved.atoms[name].state for name in ("flaky", "slow")} == {
        "flaky": AtomState.SUCCESS,
        "slow": AtomState.SUCCESS,
    }
