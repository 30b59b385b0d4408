"""Cancellation suspends a flow with its progress saved; a new engine resumes it."""

from __future__ import annotations

import collections
import contextlib
from typing import Any

import anyio
import pytest

from aioconductor.engine import Engine, Task, linear, unordered
from aioconductor.errors import ClaimLost
from aioconductor.events import Event, Notifier
from aioconductor.persistence.memory import MemoryStore
from aioconductor.persistence.models import AtomDetail, AtomState, FlowState, Intention
from tests.engine.conftest import state_changes
from tests.persistence.conftest import StoreBackend, store_backend

__all__ = ["store_backend"]  # the fixture: every store backend in turn


class Counted(Task):
    """Counts executions and reverts; waits for ``gates[name]`` while that gate is set up."""

    def __init__(self, name: str, counts: collections.Counter[str], gates: dict[str, Any]) -> None:
        super().__init__(name, provides=name)
        self.counts = counts
        self.gates = gates

    async def execute(self, x: int) -> str:
        self.counts[self.name] += 1
        gate = self.gates.get(self.name)
        if gate is not None:
            gate["started"].set()
            await gate["release"].wait()
        if self.gates.get("fail") == self.name:
            raise RuntimeError(f"{self.name} failed")
        return f"{self.name}:{x}"

    async def revert(self, **kwargs: Any) -> None:
        self.counts[f"revert {self.name}"] += 1
        gate = self.gates.get(f"revert {self.name}")
        if gate is not None:
            gate["started"].set()
            await gate["release"].wait()


def make_gate() -> dict[str, anyio.Event]:
    return {"started": anyio.Event(), "release": anyio.Event()}


def steps(counts: collections.Counter[str], gates: dict[str, Any]) -> Any:
    return linear("f", *(Counted(n, counts, gates) for n in ("a", "b", "c", "d")))


async def run_until_started_then_cancel(engine: Engine, started: anyio.Event) -> None:
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def go() -> None:
                await engine.run()
                pytest.fail("the engine should have been cancelled")

            tg.start_soon(go)
            await started.wait()
            tg.cancel_scope.cancel()


async def test_cancel_then_resume_does_not_rerun_finished_tasks() -> None:
    counts: collections.Counter[str] = collections.Counter()
    gates: dict[str, Any] = {"c": make_gate()}
    async with MemoryStore() as store:
        first = Engine(steps(counts, gates), store=store, book_id="job", inputs={"x": 1})
        await run_until_started_then_cancel(first, gates["c"]["started"])
        (detail,) = (await store.get_logbook("job")).flows.values()
        assert detail.state is FlowState.SUSPENDED
        assert detail.atoms["b"].state is AtomState.SUCCESS
        assert detail.atoms["c"].state is AtomState.RUNNING

        gates.clear()
        notifier = Notifier()
        flow_states: list[str] = []
        notifier.register(Event.FLOW_STATE, lambda e, d: flow_states.append(d["state"]))
        second = Engine(
            steps(counts, gates), store=store, book_id="job", inputs={"x": 1}, notifier=notifier
        )
        result = await second.run()
    assert result.state is FlowState.SUCCESS
    assert counts == {"a": 1, "b": 1, "c": 2, "d": 1}  # only the interrupted task ran again
    assert flow_states == ["RESUMING", "RUNNING", "SUCCESS"]
    uninterrupted = await Engine(steps(collections.Counter(), {}), inputs={"x": 1}).run()
    assert result.results == uninterrupted.results
    assert result.provided == {n: f"{n}:1" for n in "abcd"}


async def test_a_fresh_engine_saves_its_book_running_in_one_write() -> None:
    counts: collections.Counter[str] = collections.Counter()
    notifier = Notifier()
    flow_states: list[tuple[str, str]] = []
    notifier.register(
        Event.FLOW_STATE, lambda e, d: flow_states.append((d["old_state"], d["state"]))
    )
    async with MemoryStore() as store:
        engine = Engine(
            steps(counts, {}), store=store, book_id="job", inputs={"x": 1}, notifier=notifier
        )
        engine.fresh = True
        await engine.prepare()
        (detail,) = (await store.get_logbook("job")).flows.values()
        # Created RUNNING: no update of the flow detail was needed (its version is unbumped).
        assert detail.state is FlowState.RUNNING and detail.version == 0
        result = await engine.run()
        (detail,) = (await store.get_logbook("job")).flows.values()
    assert result.state is FlowState.SUCCESS and detail.state is FlowState.SUCCESS
    # Observers see the same transitions as when RUNNING is saved on its own.
    assert flow_states == [("PENDING", "RUNNING"), ("RUNNING", "SUCCESS")]


class CountingStore(MemoryStore):
    """Counts writes; fails the flow's end (the write that carries atoms) while ``fail_end``."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.fail_end = False

    async def _save_logbook(self, book: Any, token: int | None) -> Any:
        self.writes += 1
        return await super()._save_logbook(book, token)

    async def _update_flow_detail(
        self, book_uuid: str, flow: Any, token: int | None, atoms: tuple[Any, ...]
    ) -> Any:
        self.writes += 1
        if atoms and self.fail_end:
            raise ClaimLost("refused for the test")
        return await super()._update_flow_detail(book_uuid, flow, token, atoms)

    async def _update_atom_detail(
        self, book_uuid: str, flow_uuid: str, atom: Any, token: int | None
    ) -> Any:
        self.writes += 1
        return await super()._update_atom_detail(book_uuid, flow_uuid, atom, token)

    async def _update_atom_details(
        self, book_uuid: str, flow_uuid: str, atoms: tuple[Any, ...], token: int | None
    ) -> Any:
        self.writes += 1
        return await super()._update_atom_details(book_uuid, flow_uuid, atoms, token)


async def test_a_fresh_run_of_a_chain_saves_each_step_with_the_next() -> None:
    counts: collections.Counter[str] = collections.Counter()
    notifier, seen = state_changes()
    store = CountingStore()
    async with store:
        engine = Engine(
            steps(counts, {}), store=store, book_id="job", inputs={"x": 1}, notifier=notifier
        )
        engine.fresh = True
        await engine.prepare()
        (started,) = (await store.get_logbook("job")).flows.values()
        assert started.atoms["a"].state is AtomState.RUNNING
        result = await engine.run()
        (ended,) = (await store.get_logbook("job")).flows.values()
    assert result.state is FlowState.SUCCESS and ended.state is FlowState.SUCCESS
    assert {name: atom.state for name, atom in ended.atoms.items()} == dict.fromkeys(
        "abcd", AtomState.SUCCESS
    )
    assert ended.atoms["d"].result == "d:1" and ended.atoms["d"].version == 2
    # 10 writes saved one by one; 5 here: the logbook with a RUNNING, each task's end with the
    # next one's start, and d's end with the flow's.
    assert store.writes == 5
    # Observers see every transition, in the order of a run that saves them one by one.
    steps_of = [
        (n, old, new)
        for n in "abcd"
        for old, new in [("PENDING", "RUNNING"), ("RUNNING", "SUCCESS")]
    ]
    assert seen == [("flow", "PENDING", "RUNNING"), *steps_of, ("flow", "RUNNING", "SUCCESS")]


async def test_a_last_task_whose_end_was_not_saved_runs_again_on_resume() -> None:
    counts: collections.Counter[str] = collections.Counter()
    store = CountingStore()
    async with store:
        store.fail_end = True
        first = Engine(steps(counts, {}), store=store, book_id="job", inputs={"x": 1}, fresh=True)
        with pytest.raises(ClaimLost):
            await first.run()
        (detail,) = (await store.get_logbook("job")).flows.values()
        assert detail.state is FlowState.RUNNING
        assert detail.atoms["c"].state is AtomState.SUCCESS
        assert detail.atoms["d"].state is AtomState.RUNNING, "its end was refused with the flow's"

        store.fail_end = False
        result = await Engine(steps(counts, {}), store=store, book_id="job", inputs={"x": 1}).run()
    assert result.state is FlowState.SUCCESS
    assert counts == {"a": 1, "b": 1, "c": 1, "d": 2}


async def test_a_flow_with_several_first_tasks_saves_none_with_its_start() -> None:
    counts: collections.Counter[str] = collections.Counter()
    flow = unordered("f", Counted("a", counts, {}), Counted("b", counts, {}))
    async with MemoryStore() as store:
        engine = Engine(flow, store=store, book_id="job", inputs={"x": 1}, fresh=True)
        await engine.prepare()
        (started,) = (await store.get_logbook("job")).flows.values()
        # Either may be reverted before the other starts: neither is RUNNING before it runs.
        assert started.atoms == {}
        result = await engine.run()
    assert result.state is FlowState.SUCCESS and counts == {"a": 1, "b": 1}


async def test_a_fresh_engine_that_finds_a_book_resumes_from_it() -> None:
    counts: collections.Counter[str] = collections.Counter()
    gates: dict[str, Any] = {"c": make_gate()}
    async with MemoryStore() as store:
        first = Engine(steps(counts, gates), store=store, book_id="job", inputs={"x": 1})
        await run_until_started_then_cancel(first, gates["c"]["started"])
        gates.clear()
        # Told (wrongly) that no book exists: the saved progress still wins.
        second = Engine(steps(counts, gates), store=store, book_id="job", inputs={"x": 1})
        second.fresh = True
        result = await second.run()
        book = await store.get_logbook("job")
    assert result.state is FlowState.SUCCESS
    assert counts == {"a": 1, "b": 1, "c": 2, "d": 1}
    resumed = [f for f in book.flows.values() if f.state is FlowState.SUCCESS]
    assert len(resumed) == 1 and resumed[0].atoms["b"].state is AtomState.SUCCESS


async def test_resume_in_the_middle_of_a_revert_goes_on_reverting() -> None:
    counts: collections.Counter[str] = collections.Counter()
    gates: dict[str, Any] = {"fail": "c", "revert b": make_gate()}
    async with MemoryStore() as store:
        first = Engine(steps(counts, gates), store=store, book_id="job", inputs={"x": 1})
        await run_until_started_then_cancel(first, gates["revert b"]["started"])
        (detail,) = (await store.get_logbook("job")).flows.values()
        assert detail.state is FlowState.SUSPENDED
        assert detail.atoms["b"].state is AtomState.REVERTING
        assert detail.atoms["a"].state is AtomState.SUCCESS  # not reverted yet

        gates.pop("revert b")
        result = await Engine(
            steps(counts, gates), store=store, book_id="job", inputs={"x": 1}
        ).run()
        (detail,) = (await store.get_logbook("job")).flows.values()
    assert result.state is FlowState.REVERTED
    assert result.failure is not None and result.failure.message == "c failed"
    # Nothing executed again; the revert went on from b, then a.
    assert counts == {"a": 1, "b": 1, "c": 1, "revert c": 1, "revert b": 2, "revert a": 1}
    assert {n: a.state for n, a in detail.atoms.items()} == dict.fromkeys("abc", AtomState.REVERTED)


async def test_a_finished_flow_is_not_run_again() -> None:
    counts: collections.Counter[str] = collections.Counter()
    async with MemoryStore() as store:
        first = await Engine(steps(counts, {}), store=store, book_id="j", inputs={"x": 2}).run()
        again = await Engine(steps(counts, {}), store=store, book_id="j", inputs={"x": 2}).run()
    assert again.state is FlowState.SUCCESS and again.provided == first.provided
    assert counts == dict.fromkeys("abcd", 1)


async def test_a_stale_token_gets_claim_lost_out_of_run() -> None:
    counts: collections.Counter[str] = collections.Counter()
    gates: dict[str, Any] = {"b": make_gate()}
    async with MemoryStore() as store:
        engine = Engine(steps(counts, gates), store=store, book_id="job", token=1, inputs={"x": 1})
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def go() -> None:
                    with pytest.raises(ClaimLost):
                        await engine.run()

                tg.start_soon(go)
                await gates["b"]["started"].wait()
                # A new owner writes with a newer token.
                book = await store.get_logbook("job")
                await store.save_logbook(book, token=2)
                gates["b"]["release"].set()
        (detail,) = (await store.get_logbook("job")).flows.values()
    assert counts == {"a": 1, "b": 1}  # nothing ran after the lost claim, nothing reverted
    assert detail.atoms["b"].state is AtomState.RUNNING


async def test_resume_during_a_retry_revert() -> None:
    from aioconductor.engine import Times

    counts: collections.Counter[str] = collections.Counter()
    gates: dict[str, Any] = {"fail": "b", "revert a": make_gate()}

    def flow() -> Any:
        return linear("f", *(Counted(n, counts, gates) for n in ("a", "b")), retry=Times(2))

    async with MemoryStore() as store:
        first = Engine(flow(), store=store, book_id="job", inputs={"x": 1})
        await run_until_started_then_cancel(first, gates["revert a"]["started"])
        gates.clear()  # the second attempt succeeds
        result = await Engine(flow(), store=store, book_id="job", inputs={"x": 1}).run()
    assert result.state is FlowState.SUCCESS
    assert counts == {"a": 2, "b": 2, "revert b": 1, "revert a": 2}


class _Stop(Exception):
    """The process died here."""


@pytest.mark.parametrize("how", ["crash", "cancel"])
async def test_a_failure_saved_for_a_retry_is_retried_on_resume(
    store_backend: StoreBackend, how: str
) -> None:
    # The run stops after b's FAILURE (intention RETRY) is saved but before its retry
    # controller's decision is: the resumed run reverts and retries the pattern as the saved
    # intention says, and the flow succeeds.
    from aioconductor.engine import Times

    counts: collections.Counter[str] = collections.Counter()
    gates: dict[str, Any] = {"fail": "b"}

    def flow() -> Any:
        return linear("f", *(Counted(n, counts, gates) for n in ("a", "b")), retry=Times(3))

    store = await store_backend.open()
    save = store.update_atom_detail
    scope = anyio.CancelScope()

    async def stop_before_the_decision(
        book_uuid: str, flow_uuid: str, atom: AtomDetail, *, token: int | None = None
    ) -> AtomDetail:
        if atom.kind == "retry" and atom.intention is Intention.RETRY:
            if how == "crash":
                raise _Stop
            scope.cancel()
            await anyio.lowlevel.checkpoint()
        return await save(book_uuid, flow_uuid, atom, token=token)

    store.update_atom_detail = stop_before_the_decision  # type: ignore[method-assign]
    first = Engine(flow(), store=store, book_id="job", inputs={"x": 1})
    with anyio.fail_after(10), scope:
        with pytest.raises(_Stop) if how == "crash" else contextlib.nullcontext():
            await first.run()
    assert scope.cancelled_caught is (how == "cancel")
    (detail,) = (await store.get_logbook("job")).flows.values()
    assert detail.atoms["b"].state is AtomState.FAILURE
    assert detail.atoms["b"].intention is Intention.RETRY

    gates.clear()  # the second attempt succeeds
    resumed = await store_backend.open()
    result = await Engine(flow(), store=resumed, book_id="job", inputs={"x": 1}).run()
    assert result.state is FlowState.SUCCESS, result.failure
    assert result.provided == {"a": "a:1", "b": "b:1"}
    assert counts == {"a": 2, "b": 2, "revert b": 1, "revert a": 1}
    (detail,) = (await resumed.get_logbook("job")).flows.values()
    assert len(detail.atoms["f.retry"].meta["history"]) == 1  # the failed attempt counts
