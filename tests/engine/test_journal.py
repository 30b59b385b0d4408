"""The journal: the one writer of a run's saved atoms, and what it saves together."""

from __future__ import annotations

from typing import Any

from aioconductor.engine import Engine, Task, Times, linear
from aioconductor.engine.journal import Journal
from aioconductor.events import Notifier
from aioconductor.failure import Failure
from aioconductor.persistence.memory import MemoryStore
from aioconductor.persistence.models import AtomDetail, AtomState, FlowState, Intention

from .conftest import Log, Step, open_journal, state_changes


class RecordingStore(MemoryStore):
    """Records every write: which atoms it saved (name, state, intention), and the flow's
    state when the write saved the flow."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str | None, list[tuple[str, str, str]]]] = []

    def _record(self, flow: str | None, atoms: Any) -> None:
        self.writes.append((flow, [(a.name, a.state, a.intention) for a in atoms]))

    async def save_logbook(self, book: Any, *, token: int | None = None) -> Any:
        for flow in book.flows.values():
            self._record(flow.state, flow.atoms.values())
        return await super().save_logbook(book, token=token)

    async def update_flow_detail(
        self, book_uuid: str, flow: Any, *, token: int | None = None, atoms: Any = ()
    ) -> Any:
        self._record(flow.state, atoms)
        return await super().update_flow_detail(book_uuid, flow, token=token, atoms=atoms)

    async def update_atom_detail(
        self, book_uuid: str, flow_uuid: str, atom: Any, *, token: int | None = None
    ) -> Any:
        self._record(None, [atom])
        return await super().update_atom_detail(book_uuid, flow_uuid, atom, token=token)

    async def update_atom_details(
        self, book_uuid: str, flow_uuid: str, atoms: Any, *, token: int | None = None
    ) -> Any:
        self._record(None, atoms)
        return await super().update_atom_details(book_uuid, flow_uuid, atoms, token=token)


async def _open(store: MemoryStore, flow: Any, notifier: Notifier) -> Journal:
    journal, _ = await open_journal(store, flow, notifier)
    return journal


async def _saved(store: MemoryStore) -> dict[str, AtomDetail]:
    (flow,) = (await store.get_logbook("job")).flows.values()
    return flow.atoms


async def test_a_change_saved_ahead_is_reported_when_it_happens_not_saved_again(
    log: Log,
) -> None:
    notifier, seen = state_changes()
    store = RecordingStore()
    async with store:
        journal = await _open(store, linear("f", Step("a", log), Step("b", log)), notifier)
        assert len(store.writes) == 1  # the logbook, with the flow and a RUNNING
        await journal.start_flow()
        await journal.start(0)
        await journal.succeed(0, "a-done", then=1)
        await journal.start(1)
        journal.succeed_last(1, "b-done")
        assert (await _saved(store))["b"].state is AtomState.RUNNING
        await journal.end_flow(FlowState.SUCCESS)
        saved = await _saved(store)
    assert store.writes == [
        ("RUNNING", [("a", "RUNNING", "EXECUTE")]),
        (None, [("a", "SUCCESS", "EXECUTE"), ("b", "RUNNING", "EXECUTE")]),
        ("SUCCESS", [("b", "SUCCESS", "EXECUTE")]),
    ]
    assert saved["b"].result == "b-done" and saved["b"].meta["seq"] == 2
    assert seen == [
        ("flow", "PENDING", "RUNNING"),
        ("a", "PENDING", "RUNNING"),
        ("a", "RUNNING", "SUCCESS"),
        ("b", "PENDING", "RUNNING"),
        ("b", "RUNNING", "SUCCESS"),
        ("flow", "RUNNING", "SUCCESS"),
    ]
    assert journal.details == [saved["a"], saved["b"]]  # the store's copies, versions too


async def test_after_every_write_the_journal_holds_the_stores_copy(log: Log) -> None:
    # What the runner and the completer read is never older than what was saved: a write
    # made with it would be refused as a version conflict.
    async with MemoryStore() as store:
        journal = await _open(store, linear("f", Step("a", log), Step("b", log)), Notifier())
        failure = Failure.from_exception(RuntimeError("b failed"))
        steps = [
            lambda: journal.start(0),
            lambda: journal.succeed(0, "a-done"),
            lambda: journal.start(1),
            lambda: journal.fail(1, failure, Intention.REVERT),
            lambda: journal.reverting(1, Intention.REVERT),
            lambda: journal.reverted(1, object()),  # not JSON: not saved
            lambda: journal.reverting(0, Intention.REVERT),
            lambda: journal.revert_failed(0, failure),
        ]
        for step in steps:
            await step()
            saved = await _saved(store)
            held = [d for d in journal.details if d.name in saved]
            assert held == [saved[d.name] for d in held]
    assert saved["b"].state is AtomState.REVERTED and saved["b"].revert_result is None
    assert saved["a"].state is AtomState.FAILURE and saved["a"].revert_failure == failure
    assert journal.succeeded == 0


class Flaky(Task):
    """Fails its first ``failures`` runs."""

    def __init__(self, name: str, failures: int) -> None:
        super().__init__(name, provides=name)
        self.failures = failures
        self.runs = 0

    async def execute(self) -> int:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError(f"{self.name} failed")
        return self.runs


async def test_a_retried_pattern_saves_each_change_once_in_order(log: Log) -> None:
    retried = linear("sub", Step("inner", log), Flaky("flaky", 1), retry=Times(2))
    flow = linear("f", Step("before", log), retried)
    store = RecordingStore()
    async with store:
        result = await Engine(flow, store=store, book_id="job").run()
    assert result.state is FlowState.SUCCESS
    assert store.writes == [
        ("RUNNING", [("before", "RUNNING", "EXECUTE")]),
        (None, [("before", "SUCCESS", "EXECUTE")]),
        (None, [("sub.retry", "SUCCESS", "EXECUTE")]),
        (None, [("inner", "RUNNING", "EXECUTE")]),
        (None, [("inner", "SUCCESS", "EXECUTE")]),
        (None, [("flaky", "RUNNING", "EXECUTE")]),
        (None, [("flaky", "FAILURE", "RETRY")]),
        # The controller's decision, then the pattern's revert, newest first.
        (None, [("sub.retry", "SUCCESS", "RETRY")]),
        (None, [("flaky", "REVERTING", "RETRY")]),
        (None, [("flaky", "REVERTED", "RETRY")]),
        (None, [("inner", "REVERTING", "RETRY")]),
        (None, [("inner", "REVERTED", "RETRY")]),
        (None, [("sub.retry", "SUCCESS", "EXECUTE")]),
        (None, [("inner", "RUNNING", "EXECUTE")]),
        (None, [("inner", "SUCCESS", "EXECUTE")]),
        (None, [("flaky", "RUNNING", "EXECUTE")]),
        ("SUCCESS", [("flaky", "SUCCESS", "EXECUTE")]),
    ]


async def test_each_task_run_is_stamped_with_its_start_and_end() -> None:
    import time

    from aioconductor.engine import Engine, Task, linear
    from aioconductor.persistence.memory import MemoryStore

    class Nap(Task):
        async def execute(self) -> int:
            return 1

    before = time.time()
    async with MemoryStore() as store:
        engine = Engine(linear("f", Nap("a", provides="a"), Nap("b", provides="b")), store=store)
        await engine.run()
        (flow,) = (await store.get_logbook(engine.book_id)).flows.values()
    for atom in flow.atoms.values():
        assert before <= atom.meta["started"] <= atom.meta["ended"] <= time.time()
    assert flow.atoms["a"].meta["ended"] <= flow.atoms["b"].meta["started"]


async def _created_run(store: MemoryStore, first: str | None) -> Any:
    """A logbook ``job`` holding a new run of flow ``f`` as a fused claim creates it."""
    from aioconductor.persistence.models import LogBook
    from aioconductor.persistence.runs import new_run

    created = new_run("flow-1", "f", first, 1.0)
    await store.save_logbook(LogBook(uuid="job", name="job", flows={created.uuid: created}))
    return created


async def _run_from(store: MemoryStore, created: Any, log: Log, notifier: Notifier) -> Any:
    """Run flow ``f`` (tasks ``a`` then ``b``) in logbook ``job`` from the run ``created``."""
    flow = linear("f", Step("a", log), Step("b", log))
    engine = Engine(
        flow, store=store, book_id="job", notifier=notifier, fresh=True, created_run=created
    )
    return await engine.run()


async def test_a_run_created_with_its_claim_starts_without_a_write(log: Log) -> None:
    notifier, seen = state_changes()
    store = RecordingStore()
    async with store:
        created = await _created_run(store, "a")
        store.writes.clear()
        result = await _run_from(store, created, log, notifier)
        saved = await _saved(store)
    assert result.state is FlowState.SUCCESS and log.executed == ["a", "b"]
    # Nothing written before the first task's end: the flow and "a" were RUNNING already.
    assert store.writes == [
        (None, [("a", "SUCCESS", "EXECUTE"), ("b", "RUNNING", "EXECUTE")]),
        ("SUCCESS", [("b", "SUCCESS", "EXECUTE")]),
    ]
    assert saved["a"].state is AtomState.SUCCESS and saved["a"].meta["started"] == 1.0
    # Told as if written here.
    assert seen[:2] == [("flow", "PENDING", "RUNNING"), ("a", "PENDING", "RUNNING")]


async def test_a_created_run_of_another_shape_is_read_as_saved_progress(log: Log) -> None:
    """A created run this run would not have created (its first task another): the logbook
    is read, and the run resumes from it (its stray atom ignored), writing as a resume does."""
    store = RecordingStore()
    async with store:
        created = await _created_run(store, "other")
        result = await _run_from(store, created, log, Notifier())
        book = await store.get_logbook("job")
    assert result.state is FlowState.SUCCESS and log.executed == ["a", "b"]
    assert list(book.flows) == [created.uuid]  # no second detail
    assert book.flows[created.uuid].state is FlowState.SUCCESS
