"""How a conductor ends a run on every board: retries with backoff, releases on shutdown, and
the trash reason of a job whose attempts ran out."""

from __future__ import annotations

import collections
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from aioconductor import (
    Conductor,
    FlowRegistry,
    Job,
    JobBoard,
    JobState,
    Outcome,
    RetryPolicy,
    linear,
    open_board,
    open_store,
    task,
)
from aioconductor.boards.memory import MemoryJobBoard
from aioconductor.events import Event, Notifier
from aioconductor.persistence.memory import MemoryStore
from aioconductor.persistence.models import FlowState
from tests.boards.conftest import BoardBackend, backend

__all__ = ["backend"]  # the fixture: every board backend in turn

RUNS: collections.Counter[str] = collections.Counter()


def _flows(**register: Any) -> FlowRegistry:
    flows = FlowRegistry()

    @task(provides="done")
    async def flaky(key: str, fail_times: int) -> str:
        RUNS[key] += 1
        if RUNS[key] <= fail_times:
            raise RuntimeError(f"run {RUNS[key]} of {key} failed")
        return f"done after {RUNS[key]} runs"

    @flows.register("flaky", **register)
    def flaky_flow(**args: Any) -> Any:
        return linear("flaky", flaky)

    @task
    async def slow(key: str) -> None:
        RUNS[key] += 1
        await anyio.sleep(3600)

    @flows.register("slow")
    def slow_flow(**args: Any) -> Any:
        return linear("slow", slow)

    return flows


@pytest.fixture(autouse=True)
def _reset_runs() -> None:
    RUNS.clear()


async def _until_final(board: JobBoard, job_id: str, conductor: Conductor) -> Job:
    # Generous: the test broker (Tansu) can stall its state topic for some 30 s under the load
    # of a full run (docs/reliability.md); what is tested is what happens, not how fast.
    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            done = await board.wait_for(job_id)
            conductor.stop()
    return done


POLICY = RetryPolicy(retries=3, base=0.2, factor=2.0, max_delay=10.0, jitter=0.1)


async def test_a_job_that_fails_twice_then_succeeds_is_retried_with_backoff(
    backend: BoardBackend,
) -> None:
    # The backend's own store, where it has one: on Redis, the run's ending is then fused
    # with the board's verb (conductor/ending.py), and a retry must save the flow's end first.
    store_url = backend.space.store_url("conformance")
    async with backend.open(lease=5.0, poll_interval=0.05) as board, open_store(store_url) as store:
        job = await board.post("j", "flaky", {"key": "a", "fail_times": 2}, retry=POLICY)
        conductor = Conductor("c", board, store=store, flows=_flows(), lease=5.0)
        between: list[tuple[float, Job]] = []

        async def on_retried(event: str, details: dict[str, Any]) -> None:
            between.append((details["delay"], await board.get(job.id)))

        conductor.notifier.register(Event.JOB_RETRIED, on_retried)
        done = await _until_final(board, job.id, conductor)
        book = await store.get_logbook(job.id)

    assert done.state is JobState.COMPLETE and done.outcome is Outcome.SUCCESS
    assert done.result == {"done": "done after 3 runs"}
    assert RUNS["a"] == 3 and done.retries == 2 and done.attempts == 1
    assert [f["message"] for f in done.failures] == ["run 1 of a failed", "run 2 of a failed"]
    for number, (delay, scheduled) in enumerate(between, start=1):
        low, high = POLICY.base * 2 ** (number - 1) * 0.9, POLICY.base * 2 ** (number - 1) * 1.1
        assert low <= delay <= high
        assert scheduled.state is JobState.SCHEDULED and scheduled.retries == number
        assert scheduled.not_before is not None
        assert scheduled.not_before - scheduled.updated_at == pytest.approx(delay, abs=0.05)
    assert len(between) == 2
    # Each run was a fresh run of the flow, under a detail of its own.
    details = sorted((f.name, f.state) for f in book.flows.values())
    assert details == [
        ("flaky", FlowState.REVERTED),
        ("flaky (retry 1)", FlowState.REVERTED),
        ("flaky (retry 2)", FlowState.SUCCESS),
    ]


async def test_when_the_retries_run_out_the_job_is_consumed_with_its_last_outcome(
    backend: BoardBackend,
) -> None:
    one = RetryPolicy(retries=1, base=0.05)
    async with backend.open(lease=5.0, poll_interval=0.05) as board:
        job = await board.post("j", "flaky", {"key": "b", "fail_times": 5}, retry=one)
        done = await _until_final(board, job.id, Conductor("c", board, flows=_flows()))
    assert done.state is JobState.COMPLETE and done.outcome is Outcome.REVERTED
    assert RUNS["b"] == 2 and done.retries == 1
    assert done.result is not None and done.result["failure"]["message"] == "run 2 of b failed"


async def test_the_flow_s_registered_policy_applies_and_a_posted_one_wins() -> None:
    flows = _flows(retry=RetryPolicy(retries=2, base=0.01))
    async with MemoryJobBoard(poll_interval=0.05) as board:
        registered = await board.post("j", "flaky", {"key": "r", "fail_times": 9})
        done = await _until_final(board, registered.id, Conductor("c", board, flows=flows))
        assert (RUNS["r"], done.retries, done.outcome) == (3, 2, Outcome.REVERTED)
        posted = await board.post(
            "j", "flaky", {"key": "p", "fail_times": 9}, retry=RetryPolicy(retries=0)
        )
        done = await _until_final(board, posted.id, Conductor("c", board, flows=flows))
        assert (RUNS["p"], done.retries, done.outcome) == (1, 0, Outcome.REVERTED)


async def test_a_job_without_a_policy_is_consumed_after_one_failed_run() -> None:
    async with MemoryJobBoard(poll_interval=0.05) as board:
        job = await board.post("j", "flaky", {"key": "n", "fail_times": 1})
        done = await _until_final(board, job.id, Conductor("c", board, flows=_flows()))
    assert (RUNS["n"], done.retries, done.outcome) == (1, 0, Outcome.REVERTED)


async def _run_until_started_then_stop(conductor: Conductor, key: str, runs: int) -> None:
    """Run ``conductor`` until its slow job started its ``runs``-th run, then stop it with
    a drain that times out (the job is suspended and its claim given back)."""
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            while RUNS[key] < runs:
                await anyio.sleep(0.01)
            conductor.stop()


async def test_a_graceful_stop_past_its_drain_gives_the_attempt_back(
    backend: BoardBackend,
) -> None:
    async with backend.open(lease=5.0, poll_interval=0.05) as board, MemoryStore() as store:
        job = await board.post("j", "slow", {"key": "s"}, max_attempts=2)
        for restart in range(1, 5):
            conductor = Conductor(
                f"c{restart}", board, store=store, flows=_flows(), drain_timeout=0.05
            )
            await _run_until_started_then_stop(conductor, "s", restart)
            assert conductor.stats.released == 1 and conductor.stats.abandoned == 0
            released = await board.get(job.id)
            assert released.state is JobState.UNCLAIMED
            # Two give-backs; past that cap, a release spends the attempt.
            spent = max(0, restart - 2)
            assert (released.attempts, released.releases, released.abandons) == (
                spent,
                min(restart, 2),
                spent,
            )
        # Two give-backs, then two spent: the next claim is its third, past max_attempts.
        final = await _until_final(board, job.id, Conductor("c", board, flows=_flows()))
    assert final.state is JobState.TRASHED and RUNS["s"] == 4
    assert "2 abandoned" in (final.trash_reason or "")
    assert "2 claims given back on shutdown were not counted" in (final.trash_reason or "")


async def test_cancelling_the_conductor_releases_its_jobs() -> None:
    async with MemoryJobBoard(poll_interval=0.05) as board:
        job = await board.post("j", "slow", {"key": "x"})
        conductor = Conductor("c", board, flows=_flows())
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                while not RUNS["x"]:
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
        released = await board.get(job.id)
    assert released.state is JobState.UNCLAIMED
    assert (released.attempts, released.releases, released.abandons) == (0, 1, 0)


async def test_a_conductor_cancelled_while_it_claims_with_free_slots_stops_claiming() -> None:
    """Cancelled while a claim (shielded) is under way and slots are free: the claimed jobs
    are given back and the dispatcher starts no other claim, although slots stay free and the
    jobs given back are claimable again at once: none is claimed over and over until its
    attempts run out and it is trashed."""
    cancelled = anyio.Event()
    late_claims = 0

    class SlowClaims(MemoryJobBoard):
        async def claim_batch(self, owner: str, limit: int, **kwargs: Any) -> Any:
            nonlocal late_claims
            late_claims += cancelled.is_set()
            await anyio.sleep(0.005)
            return await super().claim_batch(owner, min(limit, 2), **kwargs)

    async with SlowClaims(poll_interval=0.05) as board:
        jobs = [await board.post(f"j{n}", "slow", {"key": f"k{n}"}) for n in range(20)]
        conductor = Conductor("c", board, flows=_flows(), max_concurrency=64)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                while sum(RUNS.values()) < 4:
                    await anyio.lowlevel.checkpoint()
                cancelled.set()
                tg.cancel_scope.cancel()
        after = [await board.get(job.id) for job in jobs]
    assert late_claims == 0
    # The claim under way's jobs, started once the conductor was cancelled, never ran.
    assert sum(RUNS.values()) == 4
    # Given back: the four running, and the claim under way's (two, maybe the same again).
    assert {job.state for job in after} == {JobState.UNCLAIMED}
    assert conductor.stats.released <= 6 and conductor.stats.trashed == 0


async def test_the_trash_reason_says_how_the_earlier_runs_ended() -> None:
    async with MemoryJobBoard(poll_interval=0.05) as board:
        job = await board.post("j", "flaky", {"key": "t", "fail_times": 0}, max_attempts=3)
        await board.abandon(await board.claim(job.id, "storage-failed"))
        await board.release(await board.claim(job.id, "shut-down"))
        for _ in range(2):  # two owners died: their leases ran out
            await board.claim(job.id, "dead", lease=0.05)
            await anyio.sleep(0.1)
        done = await _until_final(board, job.id, Conductor("c", board, flows=_flows()))
    assert done.state is JobState.TRASHED and not RUNS["t"]
    assert done.trash_reason == (
        "claimed 4 times, more than max_attempts=3; of the 3 runs before: 2 ended without a "
        "word (the process died, or its lease expired or was lost), 1 abandoned (a storage or "
        "internal failure, or a release past the cap of 3 give-backs); 1 claims given back on "
        "shutdown were not counted"
    )


class _SlowClaimBoard(MemoryJobBoard):
    """A claim call that returns its jobs only after ``claiming`` is set and a while passed:
    time for the conductor to be told to stop meanwhile."""

    claiming: anyio.Event

    async def _claim_batch(self, owner: str, lease: float, limit: int) -> Any:
        jobs = await super()._claim_batch(owner, lease, limit)
        if jobs:
            self.claiming.set()
            await anyio.sleep(0.2)
        return jobs


@pytest.mark.parametrize("drain", [False, True], ids=["stop-now", "drain-times-out"])
async def test_jobs_claimed_while_the_conductor_stops_are_given_back(drain: bool) -> None:
    async with _SlowClaimBoard(poll_interval=0.05) as board:
        board.claiming = anyio.Event()
        jobs = [await board.post(f"j{n}", "slow", {"key": f"w{n}"}) for n in range(3)]
        conductor = Conductor("c", board, flows=_flows(), drain_timeout=0.1)
        released: list[tuple[str, str]] = []
        conductor.notifier.register(
            Event.JOB_RELEASED, lambda e, d: released.append((d["reason"], d["job_name"]))
        )
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                await board.claiming.wait()
                conductor.stop(drain=drain)  # the claim call is still under way
        ended = [await board.get(job.id) for job in jobs]
    assert conductor.stats.claimed == 3 and conductor.stats.released == 3
    assert {(j.state, j.attempts, j.releases, j.abandons) for j in ended} == {
        (JobState.UNCLAIMED, 0, 1, 0)
    }
    assert not any(RUNS[f"w{n}"] for n in range(3))  # released before their flows began
    assert released == [("stopping", f"j{n}") for n in range(3)]


async def test_a_result_too_large_for_the_board_runs_the_last_task_once(
    backend: BoardBackend,
) -> None:
    """A consume refused for its result's size is abandoned; the flow's end is saved all the
    same (fused with the consume or not), so the next run resumes past the task, never runs
    it again, and the job is trashed when its attempts run out."""
    flows = FlowRegistry()

    @task(provides="big")
    async def big(key: str) -> str:
        RUNS[key] += 1
        return "x" * 4096

    @flows.register("big")
    def big_flow(**args: Any) -> Any:
        return linear("big", big)

    store_url = backend.space.store_url("conformance")
    async with (
        backend.open(lease=5.0, poll_interval=0.05, max_payload_bytes=2048) as board,
        open_store(store_url) as store,
    ):
        job = await board.post("j", "big", {"key": "b"}, max_attempts=2)
        conductor = Conductor("c", board, store=store, flows=flows, lease=5.0)
        done = await _until_final(board, job.id, conductor)
    assert done.state is JobState.TRASHED
    assert RUNS["b"] == 1


class _SlowRenewBoard(MemoryJobBoard):
    """A claim call that returns its jobs with little of their lease left, and a renewal that
    sets ``renewing`` and takes a while: the conductor renews each claim before its run
    starts, and is told to stop meanwhile."""

    renewing: anyio.Event

    async def _claim_batch(self, owner: str, lease: float, limit: int) -> Any:
        jobs = await super()._claim_batch(owner, lease, limit)
        if jobs:
            await anyio.sleep(lease - 0.1)
        return jobs

    async def _renew(self, claim: Any, lease: float) -> Any:
        self.renewing.set()
        await anyio.sleep(0.2)
        return await super()._renew(claim, lease)


async def test_a_job_whose_claim_is_renewed_as_the_conductor_stops_is_given_back() -> None:
    async with _SlowRenewBoard(poll_interval=0.05) as board:
        board.renewing = anyio.Event()
        job = await board.post("j", "slow", {"key": "r"})
        conductor = Conductor("c", board, flows=_flows(), lease=1.2, drain_timeout=1.0)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                await board.renewing.wait()
                conductor.stop()  # the renewal before the run is under way
        ended = await board.get(job.id)
    assert (ended.state, ended.attempts, ended.releases) == (JobState.UNCLAIMED, 0, 1)
    assert not RUNS["r"]  # released before its flow began


class _Forwarding(Notifier):
    """A user's notifier that forwards every event (to a bus, say): it keeps no listeners."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def has_listeners(self, event: str) -> bool:
        return True

    async def notify(self, event: str, details: Any) -> None:
        self.seen.append(str(event))


@pytest.mark.parametrize("fused", [False, True], ids=["two-files", "one-file-fused"])
async def test_a_notifier_that_answers_has_listeners_itself_hears_the_engine(
    tmp_path: Any, fused: bool
) -> None:
    # A fused ending gives each job's engine a notifier that holds events until the flow's end
    # is saved: it must ask the conductor's notifier who listens, not read its listeners.
    flows = FlowRegistry()

    @task(provides="s")
    async def add(x: int) -> int:
        return x + 1

    flows.register("f", lambda **args: linear("f", add))
    board_file = tmp_path / "a.db"
    store_file = board_file if fused else tmp_path / "b.db"
    notifier = _Forwarding()
    async with (
        open_board(f"sqlite:///{board_file}") as board,
        open_store(f"sqlite:///{store_file}") as store,
    ):
        assert (store.fused_ending(board) is not None) is fused  # type: ignore[attr-defined]
        job = await board.post("j", flow="f", args={"x": 1})
        async with Conductor("c", board, store=store, flows=flows, notifier=notifier) as c:
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(c.run)
                    await board.wait_for(job.id)
                    c.stop()
    assert str(Event.ATOM_STATE) in notifier.seen, notifier.seen
    assert str(Event.RUNNING_END) in notifier.seen, notifier.seen
