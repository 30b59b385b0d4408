"""A job's claim and its run's creation in one call (``conductor/starting.py``): the store's fused
claim on every backend whose store has one, and how runs started that way end, resume and
revert."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from aioconductor import Conductor, FlowRegistry, JobState, Outcome, linear, open_board, open_store
from aioconductor.conductor.starting import Starts
from aioconductor.errors import LogBookNotFound
from aioconductor.persistence.models import AtomState, FlowState
from aioconductor.persistence.runs import RunTemplate, new_run
from tests.apps import EXECUTIONS, REVERTS, Step
from tests.backends import BY_NAME

#: The backends whose store claims with the board and creates the runs in the same call.
FUSING = [BY_NAME[name].param() for name in ("memory", "sqlite", "redis", "postgres")]

TEMPLATES = {"noop": RunTemplate("noop", "echo")}


@pytest.fixture(autouse=True)
def _counters() -> None:
    EXECUTIONS.clear()
    REVERTS.clear()


@contextlib.asynccontextmanager
async def _opened(space: Any, tag: str) -> AsyncIterator[tuple[Any, Any, Any]]:
    """A board, a store on its URL, and their fused claim, as ``fused(owner, limit, lease,
    templates)``: the store's claim for ``templates``, made and called."""
    url = space.board_url(tag)
    async with open_board(url) as board, open_store(url) as store:

        async def fused(owner: str, limit: int, lease: float, templates: Any) -> Any:
            claim = store.fused_claim(board, templates)
            assert claim is not None
            return await claim(owner, limit, lease)

        yield board, store, fused


def _steps() -> FlowRegistry:
    """One flow registered as it is: two counted steps (they count executions and reverts)."""
    flows = FlowRegistry()
    flows.register(
        "steps", linear("steps", Step("first", provides="first"), Step("second", provides="second"))
    )
    return flows


async def _run_until_final(conductor: Conductor, board: Any, job_id: str) -> Any:
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            job = await board.wait_for(job_id)
            conductor.stop()
    return job


# -- the store's fused claim -----------------------------------------------------------------


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_a_fused_claim_claims_as_the_board_and_creates_each_new_runs_start(
    space: Any,
) -> None:
    async with _opened(space, "claims") as (board, store, fused):
        posted = [await board.post(f"n{n}", "noop", {"key": n}) for n in range(3)]
        other = await board.post("other", "steps", {"key": 9}, priority=5)
        claimed = await fused("owner", 10, 30.0, TEMPLATES)
        # The board's claim order (priority, then post order), tokens and leases.
        assert [job.id for job, _, _ in claimed] == [other.id, *(j.id for j in posted)]
        for job, claim, created in claimed:
            assert job.state is JobState.CLAIMED and claim.owner == "owner"
            assert claim.token == 1 and job.claim == claim
            assert (await board.get(job.id)).state is JobState.CLAIMED
            if job.flow != "noop":
                assert created is None  # no template: its engine creates its run
                with pytest.raises(LogBookNotFound):
                    await store.get_logbook(job.id)
                continue
            assert created is not None
            book = await store.get_logbook(job.id)
            assert book.name == job.name and book.token == claim.token
            # Saved as new_run builds it: the flow RUNNING, its first task RUNNING.
            assert book.flows == {created.uuid: created}
            assert created == new_run(
                created.uuid, "noop", "echo", created.atoms["echo"].meta["started"]
            )
            assert created.state is FlowState.RUNNING
            assert created.atoms["echo"].state is AtomState.RUNNING


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_a_fused_claim_creates_nothing_for_a_job_that_ran_before(space: Any) -> None:
    async with _opened(space, "again") as (board, store, fused):
        job = await board.post("n", "noop", {"key": 1})
        [(_, claim, created)] = await fused("owner", 1, 30.0, TEMPLATES)
        assert created is not None
        await board.release(claim)
        [(_, again, created_again)] = await fused("owner", 1, 30.0, TEMPLATES)
        assert again.token == claim.token + 1
        assert created_again is None
        book = await store.get_logbook(job.id)
        assert list(book.flows) == [created.uuid] and book.token == claim.token


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_a_fused_claim_leaves_an_existing_logbook_as_it_is(space: Any) -> None:
    from aioconductor.persistence.models import FlowDetail, LogBook

    async with _opened(space, "exists") as (board, store, fused):
        job = await board.post("n", "noop", {"key": 1})
        earlier = FlowDetail(name="earlier")
        await store.save_logbook(LogBook(uuid=job.id, name="kept", flows={earlier.uuid: earlier}))
        [(claimed, _, created)] = await fused("owner", 1, 30.0, TEMPLATES)
        assert claimed.id == job.id and created is None
        book = await store.get_logbook(job.id)
        assert book.name == "kept" and list(book.flows) == [earlier.uuid]


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_a_fused_claim_keeps_to_limit_keys(space: Any) -> None:
    async with _opened(space, "limited") as (board, store, fused):
        await board.set_limit("pay", 1)
        first = await board.post("p1", "noop", {"key": 1}, limit_key="pay")
        await board.post("p2", "noop", {"key": 2}, limit_key="pay")
        [(job, claim, created)] = await fused("owner", 5, 30.0, TEMPLATES)
        assert job.id == first.id and created is not None
        assert (await store.get_logbook(job.id)).flows == {created.uuid: created}
        assert await fused("owner", 5, 30.0, TEMPLATES) == []  # the key is full
        await board.consume(claim, outcome=Outcome.SUCCESS)
        [(second, _, created)] = await fused("owner", 5, 30.0, TEMPLATES)
        assert second.id != first.id and created is not None


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_a_fused_claim_refuses_bad_input_and_changes_nothing(space: Any) -> None:
    from aioconductor.errors import ConfigurationError, PayloadError

    async with _opened(space, "refused") as (board, store, fused):
        job = await board.post("n", "noop", {"key": 1})
        with pytest.raises(ConfigurationError):
            await fused("owner", 0, 30.0, TEMPLATES)
        with pytest.raises(PayloadError):
            await fused("", 1, 30.0, TEMPLATES)
        if space.backend == "postgres":  # its text cannot hold a NUL
            with pytest.raises(PayloadError):
                await fused("owner", 1, 30.0, {"noop": RunTemplate("no\x00op", "echo")})
        assert (await board.get(job.id)).state is JobState.UNCLAIMED
        with pytest.raises(LogBookNotFound):
            await store.get_logbook(job.id)


# -- runs started with their claims ----------------------------------------------------------


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_a_conductor_runs_a_flow_registered_as_it_is_from_its_claims_run(
    space: Any,
) -> None:
    flows = _steps()
    told: list[str] = []
    async with _opened(space, "runs") as (board, store, _):
        conductor = Conductor("c", board, store=store, flows=flows, retention=None)
        conductor.notifier.register(
            "atom_state", lambda e, d: told.append(f"{d['atom']} {d['old_state']}>{d['state']}")
        )
        job = await board.post("s", "steps", {"key": 1})
        done = await _run_until_final(conductor, board, job.id)
        assert done.outcome is Outcome.SUCCESS
        assert done.result == {"first": "first:1", "second": "second:1"}
        [flow] = (await store.get_logbook(job.id)).flows.values()
        assert flow.state is FlowState.SUCCESS
        assert EXECUTIONS == {("first", 1): 1, ("second", 1): 1}
    # Every change is told as it happens, the one saved with the claim too.
    assert told == [
        "first PENDING>RUNNING",
        "first RUNNING>SUCCESS",
        "second PENDING>RUNNING",
        "second RUNNING>SUCCESS",
    ]


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_a_run_created_with_a_claim_that_died_resumes_with_its_next_owner(
    space: Any,
) -> None:
    """The claim's owner died before the run started: the next owner (its claim's lease ran
    out) resumes the created run, runs its first task once, and ends the same flow detail."""
    async with _opened(space, "died") as (board, store, fused):
        job = await board.post("s", "steps", {"key": 2})
        templates = {"steps": RunTemplate("steps", "first")}
        [(_, claim, created)] = await fused("dead", 1, 0.2, templates)
        assert created is not None
        await anyio.sleep(0.5)  # the lease runs out
        conductor = Conductor("heir", board, store=store, flows=_steps(), retention=None)
        done = await _run_until_final(conductor, board, job.id)
        assert done.outcome is Outcome.SUCCESS
        book = await store.get_logbook(job.id)
        assert list(book.flows) == [created.uuid] and book.token == claim.token + 1
        assert book.flows[created.uuid].state is FlowState.SUCCESS
        assert EXECUTIONS == {("first", 2): 1, ("second", 2): 1}


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_a_job_cancelled_before_its_created_run_started_is_reverted(space: Any) -> None:
    """Cancelled while its first owner (dead) held it: its heir reverts the run from the
    store, the first task as saved RUNNING (a task saved RUNNING is reverted, as after a crash
    during it), and consumes it CANCELLED; no task runs."""
    async with _opened(space, "cancel") as (board, store, fused):
        job = await board.post("s", "steps", {"key": 3})
        templates = {"steps": RunTemplate("steps", "first")}
        [(_, _, created)] = await fused("dead", 1, 0.2, templates)
        assert created is not None
        await board.cancel(job.id, reason="no longer wanted")
        await anyio.sleep(0.5)
        conductor = Conductor("heir", board, store=store, flows=_steps(), retention=None)
        done = await _run_until_final(conductor, board, job.id)
        assert done.outcome is Outcome.CANCELLED
        flow = (await store.get_logbook(job.id)).flows[created.uuid]
        assert flow.state is FlowState.REVERTED
        assert flow.atoms["first"].state is AtomState.REVERTED
        assert EXECUTIONS == {} and REVERTS == {("first", 3): 1}


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_a_job_cancelled_before_its_run_began_reverts_nothing(space: Any) -> None:
    """Cancelled as its owner starts it, before its run (created with its claim) began: its
    first task never ran, so it is not reverted; the job is consumed CANCELLED."""
    async with _opened(space, "early") as (board, store, _):
        conductor = Conductor("c", board, store=store, flows=_steps(), retention=None)

        def cancel_at_once(event: str, details: dict[str, Any]) -> None:
            conductor.running[details["job_id"]].request_cancel("changed my mind")

        conductor.notifier.register("job_claimed", cancel_at_once)
        job = await board.post("s", "steps", {"key": 5})
        done = await _run_until_final(conductor, board, job.id)
        assert done.outcome is Outcome.CANCELLED
        [flow] = (await store.get_logbook(job.id)).flows.values()
        assert flow.state is FlowState.REVERTED and flow.atoms == {}
        assert EXECUTIONS == {} and REVERTS == {}


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_jobs_claimed_as_their_conductor_is_cancelled_are_given_back_unrun(
    space: Any,
) -> None:
    """The conductor is cancelled while its claim (shielded) is under way: the jobs it brings
    back are given back before any of their flow runs, though their runs were created with the
    claim and nothing else would pause before their first task's execute."""
    async with _opened(space, "cancelled") as (board, store, _):
        jobs = [await board.post(f"s{n}", "steps", {"key": n}) for n in range(3)]
        conductor = Conductor("c", board, store=store, flows=_steps(), retention=None)
        claim_batch = Starts.claim_batch
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:

                async def claim_then_cancel(self: Starts, *args: Any) -> Any:
                    claimed = await claim_batch(self, *args)
                    tg.cancel_scope.cancel()  # lands once the shielded claim is back
                    return claimed

                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(Starts, "claim_batch", claim_then_cancel)
                    tg.start_soon(conductor.run)
                    await anyio.sleep_forever()
        after = [await board.get(job.id) for job in jobs]
        assert EXECUTIONS == {}
        assert [(job.state, job.releases) for job in after] == [(JobState.UNCLAIMED, 1)] * 3
        for job in jobs:  # resumed by the next owner, from its created run
            [flow] = (await store.get_logbook(job.id)).flows.values()
            assert flow.state is FlowState.RUNNING


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_a_conductor_whose_engines_are_its_own_claims_unfused(space: Any) -> None:
    """A subclass that makes its engines itself may not start them from a created run: its
    claims create nothing, and each logbook holds its engine's run alone."""

    class Custom(Conductor):
        def make_engine(self, job: Any, claim: Any, flow: Any) -> Any:
            return super().make_engine(job, claim, flow)

    async with _opened(space, "custom") as (board, store, _):
        conductor = Custom("c", board, store=store, flows=_steps(), retention=None)
        job = await board.post("s", "steps", {"key": 6})
        done = await _run_until_final(conductor, board, job.id)
        assert done.outcome is Outcome.SUCCESS and conductor._starts.fused is None
        [flow] = (await store.get_logbook(job.id)).flows.values()
        assert flow.state is FlowState.SUCCESS


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_a_job_whose_args_miss_an_input_is_trashed_and_its_created_run_dropped(
    space: Any,
) -> None:
    async with _opened(space, "trash") as (board, store, _):
        conductor = Conductor("c", board, store=store, flows=_steps(), retention=None)
        job = await board.post("s", "steps", {"not_key": 1})
        done = await _run_until_final(conductor, board, job.id)
        assert done.state is JobState.TRASHED and "key" in (done.trash_reason or "")
        with pytest.raises(LogBookNotFound):
            await store.get_logbook(job.id)
        assert conductor.stats.trashed == 1


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_a_job_claimed_as_its_conductor_stops_resumes_with_its_next_owner(
    space: Any,
) -> None:
    """Given back before its created run started (the conductor was stopping): the next
    owner resumes it, and its tasks run once."""
    async with _opened(space, "stopping") as (board, store, _):
        job = await board.post("s", "steps", {"key": 4})
        first = Conductor("first", board, store=store, flows=_steps(), retention=None)
        claim_batch = Starts.claim_batch

        async def claim_then_stop(self: Starts, *args: Any) -> Any:
            # The conductor is asked to stop as its claim comes back: the run must not start.
            claimed = await claim_batch(self, *args)
            first.stop()
            return claimed

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Starts, "claim_batch", claim_then_stop)
            with anyio.fail_after(30):
                await first.run()
        assert first.stats.released == 1 and EXECUTIONS == {}
        [flow] = (await store.get_logbook(job.id)).flows.values()
        assert flow.state is FlowState.RUNNING
        heir = Conductor("heir", board, store=store, flows=_steps(), retention=None)
        done = await _run_until_final(heir, board, job.id)
        assert done.outcome is Outcome.SUCCESS
        assert list((await store.get_logbook(job.id)).flows) == [flow.uuid]
        assert EXECUTIONS == {("first", 4): 1, ("second", 4): 1}


# -- what is fused -----------------------------------------------------------------------------


def test_only_flows_registered_as_they_are_have_templates() -> None:
    from aioconductor import task
    from aioconductor.conductor.starting import run_templates
    from aioconductor.engine import unordered

    @task
    async def one() -> None: ...

    @task
    async def two() -> None: ...

    flows = FlowRegistry()
    flows.register("task", one)
    flows.register("chain", linear("chained", one, two))
    flows.register("branches", unordered("branches", one, two))
    flows.register("factory", lambda **args: linear("factory", one))
    # A name a store would refuse: left out (else every fused claim would fail on it).
    flows.register("nul", linear("n\x00ul", one))
    flows.register("surrogate", linear("ok", Step("\udc80")))
    assert run_templates(flows) == {
        "task": RunTemplate("task", "one"),
        "chain": RunTemplate("chained", "one"),
        "branches": RunTemplate("branches", None),  # two first tasks: the flow alone
    }


@pytest.mark.parametrize("space", [BY_NAME["postgres"].param()], indirect=True)
async def test_no_fused_claim_across_postgres_databases(space: Any) -> None:
    url = space.board_url("fused")
    other = url.replace("/test?", "/postgres?", 1)
    assert other != url
    async with open_store(url) as store:
        assert store.fused_claim(open_board(url), TEMPLATES) is not None
        assert store.fused_claim(open_board(other), TEMPLATES) is None
        assert store.fused_claim(open_board("memory://x"), TEMPLATES) is None
