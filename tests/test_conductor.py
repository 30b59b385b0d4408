"""The conductor end to end, on the memory and SQLite boards, in one event loop."""

from __future__ import annotations

import collections
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioconductor import (
    BackendUnavailable,
    Conductor,
    ConfigurationError,
    FlowRegistry,
    JobBoard,
    JobState,
    Outcome,
    Store,
    linear,
    open_board,
    open_store,
)
from aioconductor.boards.memory import MemoryJobBoard
from aioconductor.models import Claim
from aioconductor.persistence.memory import MemoryStore
from aioconductor.persistence.models import AtomDetail

from . import apps
from .apps import flows
from .backends import Space, params


@pytest.fixture(autouse=True)
def _reset_apps() -> None:
    apps.EXECUTIONS.clear()
    apps.REVERTS.clear()
    apps.GATE.clear()


@pytest.fixture(params=["memory", "sqlite"])
async def board_and_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[JobBoard, Store]]:
    if request.param == "memory":
        board_url, store_url = f"memory://{uuid.uuid4().hex}", "memory://"
    else:
        board_url = store_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    async with open_board(board_url, poll_interval=0.05) as board, open_store(store_url) as store:
        yield board, store


async def run_until_finished(
    conductors: list[Conductor], board: JobBoard, job_ids: list[str], within: float = 60
) -> list[Any]:
    with anyio.fail_after(within):
        async with anyio.create_task_group() as tg:
            for conductor in conductors:
                tg.start_soon(conductor.run)
            done = [await board.wait_for(job_id) for job_id in job_ids]
            for conductor in conductors:
                conductor.stop()
    return done


async def test_thousand_jobs_through_four_conductors_each_consumed_once(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    board, store = board_and_store
    jobs = [await board.post(f"job-{n}", "steps", {"key": n}) for n in range(1000)]
    consumed: collections.Counter[str] = collections.Counter()
    conductors = [
        Conductor(f"c{i}", board, store=store, flows=flows, max_concurrency=16) for i in range(4)
    ]
    for conductor in conductors:
        conductor.notifier.register(
            "job_consumed", lambda event, details: consumed.update([details["job_id"]])
        )
    done = await run_until_finished(conductors, board, [job.id for job in jobs])
    assert all(job.state is JobState.COMPLETE and job.outcome is Outcome.SUCCESS for job in done)
    assert [job.result for job in done] == [
        {"first": f"first:{n}", "second": f"second:{n}", "third": f"third:{n}"} for n in range(1000)
    ]
    assert set(consumed) == {job.id for job in jobs} and set(consumed.values()) == {1}
    assert all(count == 1 for count in apps.EXECUTIONS.values())
    assert len(apps.EXECUTIONS) == 3000
    assert sum(c.stats.consumed for c in conductors) == 1000
    # All four took part (claims spread over the conductors).
    assert sum(1 for c in conductors if c.stats.claimed) >= 2


async def test_a_failing_flow_is_reverted_and_consumed(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    board, store = board_and_store
    job = await board.post("fails", "fails", {"key": 1})
    conductor = Conductor("c", board, store=store, flows=flows)
    [done] = await run_until_finished([conductor], board, [job.id])
    assert done.state is JobState.COMPLETE and done.outcome is Outcome.REVERTED
    assert done.result["failure"]["exc_type"] == "builtins.RuntimeError"
    assert "boom 1" in done.result["failure"]["message"]
    assert "Traceback" in done.result["failure"]["traceback"]
    assert done.attempts == 1
    assert apps.REVERTS[("first", 1)] == 1


@pytest.mark.parametrize(
    ("flow", "args", "reason"),
    [
        ("no-such-flow", {"key": 1}, "no flow is registered as 'no-such-flow'"),
        ("needs-x", {"key": 1}, "the args do not fit flow 'needs-x'"),
        ("factory-raises", {"key": 1}, "this factory is broken"),
        ("steps", {}, "key"),
    ],
)
async def test_jobs_that_can_never_run_are_trashed_with_a_reason(
    board_and_store: tuple[JobBoard, Store], flow: str, args: dict[str, Any], reason: str
) -> None:
    board, store = board_and_store
    bad = await board.post("bad", flow, args)
    good = await board.post("good", "noop", {"key": 2})
    conductor = Conductor("c", board, store=store, flows=flows)
    bad_done, good_done = await run_until_finished([conductor], board, [bad.id, good.id])
    assert bad_done.state is JobState.TRASHED and reason in (bad_done.trash_reason or "")
    assert bad_done.attempts == 1
    assert good_done.state is JobState.COMPLETE and good_done.result == {"echo": 2}


async def test_a_job_past_max_attempts_is_trashed_without_running(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    board, store = board_and_store
    job = await board.post("tired", "steps", {"key": 7}, max_attempts=2)
    for _ in range(2):  # two runs that never reached an end
        await board.abandon(await board.claim(job.id, "crashed-owner"))
    conductor = Conductor("c", board, store=store, flows=flows)
    [done] = await run_until_finished([conductor], board, [job.id])
    assert done.state is JobState.TRASHED and done.attempts == 3
    assert "max_attempts=2" in (done.trash_reason or "")
    assert not apps.EXECUTIONS


async def _until(condition: Any) -> None:
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.01)


def _started(key: str) -> bool:
    return apps.EXECUTIONS[("first", key)] > 0


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "not-isolated"])
async def test_a_job_on_its_last_attempt_after_an_unfinished_one_runs_alone(
    isolate: bool,
) -> None:
    async with MemoryJobBoard() as board:
        for gate in ("a", "last", "late"):
            apps.GATE[gate] = anyio.Event()
        early = [await board.post(f"e{n}", "steps", {"key": f"e{n}", "gate": "a"}) for n in (1, 2)]
        conductor = Conductor(
            "c", board, flows=flows, max_concurrency=8, isolate_last_attempts=isolate
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            await _until(lambda: _started("e1") and _started("e2"))
            # A job whose first run never ended (its conductor died), on its last attempt.
            last = await board.post(
                "last", "steps", {"key": "last", "gate": "last"}, max_attempts=2
            )
            await board.abandon(await board.claim(last.id, "crashed-owner"))
            await _until(lambda: last.id in conductor.running)
            late = await board.post("late", "steps", {"key": "late", "gate": "late"})
            await _until(lambda: late.id in conductor.running)
            if not isolate:
                await _until(lambda: _started("last") and _started("late"))
            else:
                # Claimed, its lease kept, but it waits for the jobs already running; the
                # job claimed after it waits for it.
                await anyio.sleep(0.1)
                assert not _started("last") and not _started("late")
                apps.GATE["a"].set()
                await _until(lambda: _started("last"))
                await anyio.sleep(0.1)
                assert not _started("late"), "a job ran beside the one running alone"
                assert [(await board.get(j.id)).state for j in early] == [JobState.COMPLETE] * 2
            for gate in ("a", "last", "late"):
                apps.GATE[gate].set()
            done = [await board.wait_for(job.id) for job in (*early, last, late)]
            conductor.stop()
    assert all(job.state is JobState.COMPLETE for job in done)
    assert done[2].attempts == 2


class FailingStore(MemoryStore):
    """A store whose atom writes fail, like a database that went away."""

    async def _update_atom_detail(
        self, book_uuid: str, flow_uuid: str, atom: AtomDetail, token: int | None
    ) -> AtomDetail:
        raise BackendUnavailable("the store is down")

    async def _update_atom_details(
        self, book_uuid: str, flow_uuid: str, atoms: tuple[AtomDetail, ...], token: int | None
    ) -> list[AtomDetail]:
        raise BackendUnavailable("the store is down")


async def test_a_storage_failure_abandons_the_job() -> None:
    async with MemoryJobBoard() as board, FailingStore() as store:
        job = await board.post("j", "steps", {"key": 1})
        conductor = Conductor("c", board, store=store, flows=flows)
        abandoned = anyio.Event()
        conductor.notifier.register("job_abandoned", lambda e, d: abandoned.set())
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            with anyio.fail_after(5):
                await abandoned.wait()
            conductor.stop(drain=False)
        got = await board.get(job.id)
        assert got.state in (JobState.UNCLAIMED, JobState.CLAIMED, JobState.TRASHED)
        assert got.state is not JobState.COMPLETE and got.outcome is None
        assert conductor.stats.abandoned >= 1 and conductor.stats.consumed == 0


class UnrenewableBoard(MemoryJobBoard):
    """A board on which renewals fail, so the conductor's lease runs out."""

    async def _renew(self, claim: Claim, lease: float) -> Claim:
        raise BackendUnavailable("renew is broken on this board")


async def test_a_stolen_claim_stops_the_engine_and_the_new_owner_finishes() -> None:
    backend = uuid.uuid4().hex
    store = MemoryStore()
    async with (
        UnrenewableBoard(backend_name=backend) as doomed_board,
        MemoryJobBoard(backend_name=backend) as board,
        store,
    ):
        apps.GATE["g"] = anyio.Event()
        job = await board.post("j", "steps", {"key": 1, "gate": "g"})
        doomed = Conductor("doomed", doomed_board, store=store, flows=flows, lease=0.6)
        lost = anyio.Event()
        doomed.notifier.register("lease_lost", lambda e, d: lost.set())
        async with anyio.create_task_group() as tg:
            tg.start_soon(doomed.run)
            with anyio.fail_after(10):
                await lost.wait()
            # Keep the doomed conductor from claiming the job again once the lease expires.
            doomed.stop()
            await doomed.wait()
            assert doomed.stats.consumed == 0
            # The doomed owner's engine stopped with "second" running; the job is the
            # next owner's once the lease has run out.
            heir = Conductor("heir", board, store=store, flows=flows, lease=5)
            tg.start_soon(heir.run)
            apps.GATE["g"].set()
            with anyio.fail_after(10):
                done = await board.wait_for(job.id)
            heir.stop()
        assert done.state is JobState.COMPLETE and done.claim is not None
        assert done.claim.owner == heir.owner and done.attempts == 2
        assert apps.EXECUTIONS[("first", 1)] == 1  # not re-run: its result came from the store
        assert apps.EXECUTIONS[("third", 1)] == 1
        assert doomed.stats.consumed == 0 and doomed.stats.lease_lost == 1


async def test_max_concurrency_is_never_exceeded() -> None:
    async with MemoryJobBoard() as board:
        jobs = [await board.post(f"j{n}", "sleepy", {"key": n, "seconds": 0.01}) for n in range(60)]
        conductor = Conductor("c", board, flows=flows, max_concurrency=7)
        running = 0
        peak = 0

        def track(event: str, details: Any) -> None:
            nonlocal running, peak
            running += 1 if event == "running_start" else -1
            peak = max(peak, running)

        conductor.notifier.register("running_start", track)
        conductor.notifier.register("running_end", track)
        await run_until_finished([conductor], board, [job.id for job in jobs])
        assert peak == 7 and conductor.stats.peak_running == 7
        assert conductor.stats.consumed == 60


async def test_stop_with_drain_lets_running_jobs_finish() -> None:
    async with MemoryJobBoard() as board:
        job = await board.post("j", "sleepy", {"key": 1, "seconds": 0.3})
        waiting = await board.post("w", "sleepy", {"key": 2, "seconds": 0.3}, priority=-1)
        conductor = Conductor("c", board, flows=flows, max_concurrency=1)
        started = anyio.Event()
        conductor.notifier.register("running_start", lambda e, d: started.set())
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            await started.wait()
            conductor.stop()
            with anyio.fail_after(5):
                await conductor.wait()
        assert (await board.get(job.id)).state is JobState.COMPLETE
        # Stop means stop claiming: the waiting job was never taken.
        assert (await board.get(waiting.id)).attempts == 0


async def test_stop_without_drain_suspends_and_releases() -> None:
    async with MemoryJobBoard() as board:
        store = MemoryStore()
        await store.connect()
        job = await board.post("j", "sleepy", {"key": 1, "seconds": 30})
        conductor = Conductor("c", board, store=store, flows=flows)
        started = anyio.Event()
        conductor.notifier.register("running_start", lambda e, d: started.set())
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            await started.wait()
            await anyio.sleep(0.05)
            conductor.stop(drain=False)
            with anyio.fail_after(5):
                await conductor.wait()
        got = await board.get(job.id)
        # Released on purpose: the attempt is given back.
        assert got.state is JobState.UNCLAIMED and (got.attempts, got.releases) == (0, 1)
        book = await store.get_logbook(job.id)
        [flow] = book.flows.values()
        assert flow.state == "SUSPENDED"
        assert flow.atoms["first"].state == "SUCCESS"
        assert conductor.stats.released == 1 and not conductor.running


async def test_drain_timeout_suspends_what_is_still_running() -> None:
    async with MemoryJobBoard() as board:
        job = await board.post("j", "sleepy", {"key": 1, "seconds": 30})
        conductor = Conductor("c", board, flows=flows, drain_timeout=0.2)
        started = anyio.Event()
        conductor.notifier.register("running_start", lambda e, d: started.set())
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            await started.wait()
            conductor.stop()
            with anyio.fail_after(5):
                await conductor.wait()
        assert (await board.get(job.id)).state is JobState.UNCLAIMED


async def test_cancelling_run_releases_claims() -> None:
    async with MemoryJobBoard() as board:
        jobs = [await board.post(f"j{n}", "sleepy", {"key": n, "seconds": 30}) for n in range(5)]
        conductor = Conductor("c", board, flows=flows)
        with anyio.move_on_after(0.3):
            await conductor.run()
        assert not conductor.is_running and not conductor.running
        for job in jobs:
            got = await board.get(job.id)
            assert got.state is JobState.UNCLAIMED and (got.attempts, got.releases) == (0, 1)
        assert await board.conductors() == []


async def test_run_max_dispatches_and_run_again() -> None:
    async with MemoryJobBoard() as board:
        jobs = [await board.post(f"j{n}", "noop", {"key": n}) for n in range(5)]
        conductor = Conductor("c", board, flows=flows)
        with anyio.fail_after(5):
            await conductor.run(max_dispatches=2)
        assert conductor.stats.consumed == 2
        states = [(await board.get(job.id)).state for job in jobs]
        assert states.count(JobState.COMPLETE) == 2
        with anyio.fail_after(5):
            await conductor.run(max_dispatches=3)
        assert [(await board.get(job.id)).state for job in jobs] == [JobState.COMPLETE] * 5


async def test_events_reach_sync_and_async_listeners_and_a_raising_one_is_harmless() -> None:
    async with MemoryJobBoard() as board:
        job = await board.post("j", "noop", {"key": 1})
        conductor = Conductor("c", board, flows=flows)
        seen: list[str] = []

        async def async_listener(event: str, details: Any) -> None:
            seen.append(f"async:{event}")

        def broken(event: str, details: Any) -> None:
            raise RuntimeError("listener bug")

        conductor.notifier.register(None, lambda e, d: seen.append(e))
        conductor.notifier.register("job_consumed", async_listener)
        conductor.notifier.register("job_claimed", broken)
        await run_until_finished([conductor], board, [job.id])
        for name in (
            "job_claimed",
            "compilation_start",
            "compilation_end",
            "validation_start",
            "validation_end",
            "running_start",
            "running_end",
            "job_consumed",
            "async:job_consumed",
        ):
            assert name in seen, name
        assert (await board.get(job.id)).state is JobState.COMPLETE


async def test_the_conductor_is_listed_while_it_runs() -> None:
    async with MemoryJobBoard() as board:
        conductor = Conductor("listed", board, flows=flows, max_concurrency=3)
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            with anyio.fail_after(5):
                while not await board.conductors():
                    await anyio.sleep(0.01)
            [info] = await board.conductors()
            assert info.name == "listed" and info.owner == conductor.owner
            assert info.meta["capacity"] == 3
            conductor.stop()
        assert await board.conductors() == []


class CountingBoard(MemoryJobBoard):
    """Counts claim attempts, to measure what an idle conductor costs."""

    claim_calls = 0
    batch_sizes: list[int]

    async def _claim_next(self, owner: str, lease: float) -> Any:
        self.claim_calls += 1
        return await super()._claim_next(owner, lease)

    async def _claim_batch(self, owner: str, lease: float, limit: int) -> Any:
        self.batch_sizes = [*getattr(self, "batch_sizes", []), limit]
        return await super()._claim_batch(owner, lease, limit)


class ThiefBoard(MemoryJobBoard):
    """Lets a thief take every claimable job just before the conductor's claim runs."""

    async def _claim_batch(self, owner: str, lease: float, limit: int) -> Any:
        while await super()._claim_next("thief", lease) is not None:
            pass
        return await super()._claim_batch(owner, lease, limit)


async def test_a_claim_for_an_announced_job_taken_by_another_is_a_conflict() -> None:
    async with ThiefBoard() as board:
        conductor = Conductor("late", board, flows=flows, sweep_interval=30)
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            await anyio.sleep(0.05)  # idle, after its first (empty) claim
            assert conductor.stats.claim_conflicts == 0
            await board.post("j", "noop", {"key": 1})
            with anyio.fail_after(5):
                while conductor.stats.claim_conflicts == 0:
                    await anyio.sleep(0.01)
            conductor.stop()
        assert conductor.stats.claim_conflicts == 1 and conductor.stats.claimed == 0


class SlowClaimBoard(MemoryJobBoard):
    """A claim that takes a while: long enough to cancel the conductor while it is in flight."""

    in_flight = anyio.Event()

    async def _claim_batch(self, owner: str, lease: float, limit: int) -> Any:
        jobs = await super()._claim_batch(owner, lease, limit)
        if jobs:
            self.in_flight.set()
            await anyio.sleep(0.2)
        return jobs


async def test_cancelling_run_while_a_claim_is_in_flight_gives_the_jobs_back() -> None:
    async with SlowClaimBoard() as board:
        board.in_flight = anyio.Event()
        for n in range(5):
            await board.post(f"j{n}", "noop", {"key": n})
        conductor = Conductor("c", board, flows=flows, max_concurrency=8)
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            await board.in_flight.wait()
            tg.cancel_scope.cancel()
        jobs = [job async for job in board.iterjobs()]
    # Not left claimed until their lease ran out: handed to tasks, which gave them back.
    assert {job.state for job in jobs} == {JobState.UNCLAIMED}
    assert conductor.stats.claimed == 5 and conductor.stats.released == 5
    assert {(job.attempts, job.releases) for job in jobs} == {(0, 1)}


async def test_free_slots_are_filled_by_one_claim_call() -> None:
    async with CountingBoard() as board:
        for n in range(40):
            await board.post(f"j{n}", "noop", {"key": n})
        conductor = Conductor("batch", board, flows=flows, max_concurrency=8)
        await conductor.run(max_dispatches=40)
        assert conductor.stats.consumed == 40 and conductor.stats.peak_running <= 8
        # The first call fills all 8 slots at once; in all, far fewer calls than jobs.
        assert board.batch_sizes[0] == 8 and len(board.batch_sizes) <= 20


async def test_the_next_claim_leaves_before_the_jobs_just_claimed_run() -> None:
    """With slots free, the dispatcher sends its next claim before the jobs it just started
    run: their work overlaps the claim's round trip instead of delaying it."""
    seen: list[str] = []

    class Recording(MemoryJobBoard):
        async def claim_batch(self, owner: str, limit: int, **kwargs: Any) -> Any:
            seen.append("claim")
            return await super().claim_batch(owner, limit, **kwargs)

    async with Recording() as board:
        for n in range(8):
            await board.post(f"j{n}", "noop", {"key": n})
        conductor = Conductor("c", board, flows=flows, max_concurrency=8, claim_batch_size=4)
        # The first thing a job's run does.
        conductor.notifier.register("job_claimed", lambda event, details: seen.append("run"))
        await conductor.run(max_dispatches=8)
    assert seen[:3] == ["claim", "claim", "run"], seen
    assert seen.count("run") == 8


async def test_batch_claims_never_exceed_max_dispatches_or_batch_size() -> None:
    async with CountingBoard() as board:
        for n in range(40):
            await board.post(f"j{n}", "noop", {"key": n})
        conductor = Conductor("batch", board, flows=flows, max_concurrency=64, claim_batch_size=4)
        await conductor.run(max_dispatches=10)
        assert conductor.stats.claimed == 10
        assert max(board.batch_sizes) <= 4
        assert await board.job_count(state=JobState.UNCLAIMED) == 30
        with pytest.raises(ConfigurationError):
            Conductor("bad", board, flows=flows, claim_batch_size=0)


async def test_an_idle_conductor_does_not_hammer_jobs_claimed_by_others() -> None:
    async with CountingBoard(poll_interval=0.05) as board:
        for n in range(100):
            job = await board.post(f"j{n}", "noop", {"key": n})
            await board.claim(job.id, "someone-else", lease=60)
        conductor = Conductor("idle", board, flows=flows, lease=1.0)
        with anyio.move_on_after(1.0):
            await conductor.run()
        # One claim attempt on start, then one per sweep (every min(lease, 5 s) = 1 s).
        assert board.claim_calls <= 3
        assert conductor.stats.claimed == 0


class _AsyncCallable:
    """A factory whose ``__call__`` is an ``async def``: registered, it returns a coroutine."""

    async def __call__(self, **args: Any) -> Any:
        return None


def _not_flows() -> FlowRegistry:
    registry = FlowRegistry()
    registry.register("none", lambda **args: None)
    registry.register("number", lambda **args: 42)
    registry.register("list", lambda **args: [linear("f")])
    registry.register("coroutine", _AsyncCallable())
    return registry


@pytest.mark.parametrize(
    ("flow", "reason"),
    [
        ("none", "returned NoneType None, not a Flow or a Task"),
        ("number", "returned int 42, not a Flow or a Task"),
        ("list", "returned list [<LinearFlow"),
        ("coroutine", "is an async function; a factory must return its flow directly"),
    ],
)
async def test_a_factory_that_returns_no_flow_trashes_its_job_at_once(
    board_and_store: tuple[JobBoard, Store], flow: str, reason: str
) -> None:
    # It can never succeed: trashed on its first claim, saying what the factory returned.
    board, store = board_and_store
    job = await board.post("bad", flow, {})
    conductor = Conductor("c", board, store=store, flows=_not_flows())
    [done] = await run_until_finished([conductor], board, [job.id])
    assert done.state is JobState.TRASHED and done.attempts == 1
    assert reason in (done.trash_reason or "")


def test_an_async_factory_is_refused_when_registered() -> None:
    async def build(**args: Any) -> Any:
        return linear("f")

    with pytest.raises(ConfigurationError, match="is an async function"):
        FlowRegistry().register("f", build)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "x" * 223}, "at most 222 characters"),
        ({"name": "a\x00b"}, "NUL"),
        ({"name": ""}, "non-empty string"),
        ({"name": "   "}, "non-empty string"),
        ({"name": 42}, "non-empty string"),
        ({"lease": 1e12}, "lease must be more than 0 and at most 86400 seconds"),
        ({"lease": float("inf")}, "lease must be"),
        ({"lease": 0}, "lease must be"),
        ({"max_concurrency": 1.5}, "max_concurrency must be a whole number"),
        ({"max_concurrency": 0}, "max_concurrency must be a whole number"),
        ({"claim_batch_size": True}, "claim_batch_size must be a whole number"),
        ({"drain_timeout": float("nan")}, "drain_timeout must be"),
        ({"sweep_interval": -1}, "sweep_interval must be"),
    ],
)
def test_options_no_claim_could_work_with_are_refused_at_construction(
    options: dict[str, Any], message: str
) -> None:
    kwargs: dict[str, Any] = {"name": "c", **options}
    with pytest.raises(ConfigurationError, match=message):
        Conductor(board=MemoryJobBoard(), flows=flows, **kwargs)


@pytest.mark.parametrize("name", ["x" * 222, "123", "1e5"])
@pytest.mark.parametrize("space", params(), indirect=True)
async def test_the_longest_name_allowed_claims_jobs(space: Space, name: str) -> None:
    """On every board, the longest name allowed, or one that looks like a number, claims jobs
    and is listed by its heartbeats (#16 item 8: only names no board takes are refused)."""
    url = space.board_url(f"names_{uuid.uuid4().hex[:8]}")
    async with open_board(url, poll_interval=0.05) as board:
        job = await board.post("j", "noop", {"key": 1})
        conductor = Conductor(name, board, flows=flows)
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                await tg.start(conductor.run)
                done = await board.wait_for(job.id)
                listed = [c.name for c in await board.conductors()]
                conductor.stop()
    assert done.state is JobState.COMPLETE
    assert listed == [name]


async def test_without_a_store_a_finished_job_leaves_no_logbook(tmp_path: Path) -> None:
    # The private store is read by this conductor alone: what it kept of a job that ended would
    # only grow. With a store of the user's, the logbooks stay.
    async with open_board(f"sqlite:///{tmp_path / 'jobs.db'}", poll_interval=0.05) as board:
        jobs = [await board.post(f"j{n}", "steps", {"key": n}) for n in range(50)]
        jobs += [await board.post("bad", "fails", {"key": 50})]
        private = Conductor("c", board, flows=flows)
        done = await run_until_finished([private], board, [job.id for job in jobs])
        assert all(job.state is JobState.COMPLETE for job in done)
        assert [book async for book in private.store.logbooks()] == []

        more = [await board.post(f"k{n}", "steps", {"key": f"k{n}"}) for n in range(5)]
        async with MemoryStore() as store:
            shared = Conductor("d", board, store=store, flows=flows)
            await run_until_finished([shared], board, [job.id for job in more])
            assert len([book async for book in store.logbooks()]) == 5


async def test_a_cancelled_close_still_closes_what_the_conductor_opened() -> None:
    board, store = MemoryJobBoard(), MemoryStore()
    with anyio.CancelScope() as scope:
        async with Conductor("c", board, store=store, flows=flows):
            assert board.connected and store.connected
            scope.cancel()
            await anyio.sleep(1)
    assert not board.connected and not store.connected


async def test_a_store_that_fails_to_open_leaves_no_board_open() -> None:
    class Down(MemoryStore):
        async def _connect(self) -> None:
            raise BackendUnavailable("the store is down")

    board = MemoryJobBoard()
    with pytest.raises(BackendUnavailable):
        async with Conductor("c", board, store=Down(), flows=flows):
            pytest.fail("entered")
    assert not board.connected


async def test_a_stop_without_drain_during_a_drain_ends_it_at_once() -> None:
    async with MemoryJobBoard(poll_interval=0.05) as board:
        job = await board.post("j", "sleepy", {"key": 1, "seconds": 30})
        conductor = Conductor("c", board, flows=flows, drain_timeout=20)
        claimed = anyio.Event()
        conductor.notifier.register("job_claimed", lambda e, d: claimed.set())
        with anyio.fail_after(5):  # far less than the drain timeout
            async with anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                await claimed.wait()
                conductor.stop()  # a graceful stop: the drain waits for the job...
                await anyio.sleep(0.2)
                conductor.stop(drain=False)  # ...until the second signal
        released = await board.get(job.id)
    assert released.state is JobState.UNCLAIMED and released.releases == 1
