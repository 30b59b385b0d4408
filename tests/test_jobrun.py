"""One job's run on its own: a :class:`JobRun` needs a board, a store and flows, no conductor."""

from __future__ import annotations

from typing import Any

from aioconductor import Engine, FlowRegistry, JobState, Outcome, linear, task
from aioconductor.boards.memory import MemoryJobBoard
from aioconductor.conductor.jobrun import JobRun, RunContext
from aioconductor.conductor.solo import SoloGate
from aioconductor.conductor.stats import ConductorStats
from aioconductor.engine import Flow
from aioconductor.events import Notifier
from aioconductor.models import Claim, Job
from aioconductor.persistence.memory import MemoryStore

flows = FlowRegistry()


@flows.register("greet")
def greet_flow(**args: Any) -> Any:
    @task(provides="greeting")
    async def greet(name: str) -> str:
        return f"hello {name}"

    return linear("greet", greet)


@flows.register("greet-twice")
def greet_twice_flow(**args: Any) -> Any:
    @task(provides="greeting")
    async def greet(name: str) -> str:
        return f"hello {name}"

    @task
    async def sign(greeting: str, signature: str) -> None:
        return None

    return linear("greet-twice", greet, sign)


def context(board: MemoryJobBoard, store: MemoryStore, events: list[str]) -> RunContext:
    notifier = Notifier()
    for event in ("job_claimed", "job_consumed", "job_trashed"):
        notifier.register(event, lambda event, details: events.append(event))

    def make_engine(job: Job, claim: Claim, flow: Flow) -> Engine:
        return Engine(flow, store=store, book_id=job.id, token=claim.token, inputs=job.args)

    return RunContext(
        conductor="alone",
        board=board,
        lease=30.0,
        flows=flows,
        notifier=notifier,
        stats=ConductorStats(),
        gate=SoloGate(),
        make_engine=make_engine,
        running={},
        isolate_last_attempts=True,
        private_store=None,
    )


async def test_a_job_run_consumes_its_job_and_counts_it() -> None:
    events: list[str] = []
    async with MemoryJobBoard() as board, MemoryStore() as store:
        await board.post("j", "greet", {"name": "world"})
        [(job, claim)] = await board.claim_batch("owner", 1)
        run = JobRun(context(board, store, events), job, claim)
        await run.run()
        done = await board.get(job.id)
    assert done.state is JobState.COMPLETE and done.outcome is Outcome.SUCCESS
    assert done.result == {"greeting": "hello world"}
    assert run.final and not run.context.running
    assert run.context.stats.succeeded == 1
    assert events == ["job_claimed", "job_consumed"]


async def test_a_job_run_trashes_a_job_whose_flow_is_unknown() -> None:
    events: list[str] = []
    async with MemoryJobBoard() as board, MemoryStore() as store:
        await board.post("j", "no-such-flow")
        [(job, claim)] = await board.claim_batch("owner", 1)
        run = JobRun(context(board, store, events), job, claim)
        await run.run()
        done = await board.get(job.id)
    assert done.state is JobState.TRASHED and "no-such-flow" in (done.trash_reason or "")
    assert run.context.stats.trashed == 1
    assert events == ["job_claimed", "job_trashed"]


async def test_a_job_trashed_before_it_ran_leaves_no_logbook() -> None:
    events: list[str] = []
    async with MemoryJobBoard() as board, MemoryStore() as store:
        # "sign" needs a "signature" that nobody gives: the flow cannot run.
        await board.post("j", "greet-twice", {"name": "world"})
        [(job, claim)] = await board.claim_batch("owner", 1)
        await JobRun(context(board, store, events), job, claim).run()
        done = await board.get(job.id)
        books = [book.uuid async for book in store.logbooks()]
    assert done.state is JobState.TRASHED and "signature" in (done.trash_reason or "")
    assert books == []
