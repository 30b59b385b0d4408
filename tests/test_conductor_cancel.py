"""How a conductor stops a cancelled job on every board: it hears of the cancel (a push, its
next renewal, or the flag on the claim), stops the flow, reverts what ran and consumes the job
CANCELLED; never retried, never trashed for its attempts."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from aioconductor import (
    Conductor,
    Engine,
    FlowRegistry,
    Job,
    JobBoard,
    JobState,
    Outcome,
    RetryPolicy,
    linear,
    task,
)
from aioconductor.boards.memory import MemoryJobBoard
from aioconductor.conductor.jobrun import JobRun
from aioconductor.events import Event
from aioconductor.models import NotificationKind
from aioconductor.persistence.memory import MemoryStore
from aioconductor.persistence.models import AtomState, FlowState
from tests.boards.conftest import BoardBackend, backend

__all__ = ["backend"]  # the fixture: every board backend in turn

DONE: collections.Counter[str] = collections.Counter()


def _flows() -> FlowRegistry:
    flows = FlowRegistry()

    async def unbook(key: str, **_: Any) -> None:
        DONE[f"unbook {key}"] += 1

    @task(provides="booked", revert=unbook)
    async def book(key: str) -> str:
        DONE[f"book {key}"] += 1
        return f"room for {key}"

    async def refund(key: str, **_: Any) -> None:
        DONE[f"refund {key}"] += 1

    @task(provides="charged", revert=refund)
    async def charge(key: str) -> str:
        DONE[f"charge {key}"] += 1
        await anyio.sleep(3600)
        return "charged"

    @task
    async def mail(key: str) -> None:
        DONE[f"mail {key}"] += 1

    @flows.register("order")
    def order(**args: Any) -> Any:
        return linear("order", book, charge, mail)

    return flows


@pytest.fixture(autouse=True)
def _reset() -> None:
    DONE.clear()


@contextlib.asynccontextmanager
async def _running(conductor: Conductor) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(conductor.run)
        try:
            yield
        finally:
            conductor.stop()


async def _until(predicate: Any, within: float = 60) -> None:
    with anyio.fail_after(within):
        while not predicate():
            await anyio.sleep(0.01)


async def test_a_running_job_is_stopped_reverted_and_consumed_cancelled(
    backend: BoardBackend,
) -> None:
    async with (
        backend.open(lease=30.0, poll_interval=0.05) as board,
        backend.open(poll_interval=0.05) as operator,
        MemoryStore() as store,
    ):
        policy = RetryPolicy(retries=5, base=0.01)
        job = await board.post("o", "order", {"key": "a"}, retry=policy)
        conductor = Conductor("c", board, store=store, flows=_flows(), lease=30.0)
        seen: list[dict[str, Any]] = []
        conductor.notifier.register(Event.JOB_CANCELLING, lambda e, d: seen.append(d))
        async with _running(conductor):
            await _until(lambda: DONE["charge a"] == 1)
            await operator.cancel(job.id, reason="customer called")
            # The lease is 30 s: only the push (or the sweep) can have told the owner.
            with anyio.fail_after(20):
                done = await board.wait_for(job.id)
        book = await store.get_logbook(job.id)
    assert done.state is JobState.COMPLETE and done.outcome is Outcome.CANCELLED
    assert done.cancel_reason == "customer called" and done.retries == 0
    assert done.result == {"flow_state": "REVERTED"}
    assert DONE == {"book a": 1, "charge a": 1, "unbook a": 1, "refund a": 1}
    assert [d["seen"] for d in seen] == ["running"]
    assert conductor.stats.cancelled == 1 and conductor.stats.retried == 0
    (detail,) = book.flows.values()
    assert detail.state is FlowState.REVERTED


class DeafBoard(MemoryJobBoard):
    """A memory board whose streams drop CANCEL notifications: only renewals tell."""

    async def stream(self) -> Any:
        async for note in super().stream():
            if note.kind is not NotificationKind.CANCEL:
                yield note


async def test_without_a_push_the_next_renewal_tells_the_owner() -> None:
    async with DeafBoard(poll_interval=0.05) as board:
        job = await board.post("o", "order", {"key": "b"})
        conductor = Conductor("c", board, flows=_flows(), lease=1.5)
        async with _running(conductor):
            await _until(lambda: DONE["charge b"] == 1)
            await board.cancel(job.id)
            with anyio.fail_after(5):
                done = await board.wait_for(job.id)
    assert done.outcome is Outcome.CANCELLED
    assert DONE["refund b"] == 1 and DONE["unbook b"] == 1 and not DONE["mail b"]


async def _start_then_die(board: JobBoard, store: MemoryStore, job: Job) -> None:
    """Claim ``job`` as an owner that runs its flow until ``charge`` and then dies (its
    claim left to expire)."""
    claim = await board.claim(job.id, "doomed", lease=0.3)
    engine = Engine(
        _flows().get("order")(**job.args),
        store=store,
        book_id=job.id,
        token=claim.token,
        inputs=job.args,
    )
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run)
            await _until(lambda: DONE[f"charge {job.args['key']}"] == 1)
            tg.cancel_scope.cancel()


async def test_a_new_owner_of_a_flagged_job_reverts_it_without_running_more(
    backend: BoardBackend,
) -> None:
    async with backend.open(lease=5.0, poll_interval=0.05) as board, MemoryStore() as store:
        job = await board.post("o", "order", {"key": "c"}, max_attempts=1)
        await _start_then_die(board, store, job)
        flagged = await board.cancel(job.id, reason="owner gone")
        assert flagged.state is JobState.CLAIMED and flagged.cancel_requested
        conductor = Conductor("c", board, store=store, flows=_flows(), lease=5.0)
        seen: list[str] = []
        conductor.notifier.register(Event.JOB_CANCELLING, lambda e, d: seen.append(d["seen"]))
        async with _running(conductor):
            with anyio.fail_after(60):
                done = await board.wait_for(job.id)
        book = await store.get_logbook(job.id)
    # Its second claim is past max_attempts=1: cancelled all the same, not trashed.
    assert done.state is JobState.COMPLETE and done.outcome is Outcome.CANCELLED
    assert done.attempts == 2 and seen == ["claimed"]
    assert DONE == {"book c": 1, "charge c": 1, "unbook c": 1, "refund c": 1}
    (detail,) = book.flows.values()
    assert detail.state is FlowState.REVERTED
    assert detail.atoms["book"].state is AtomState.REVERTED


async def test_a_flagged_job_of_an_unknown_flow_is_consumed_cancelled() -> None:
    async with MemoryJobBoard(poll_interval=0.05) as board:
        job = await board.post("x", "no-such-flow")
        await board.claim(job.id, "doomed", lease=0.1)
        await board.cancel(job.id)
        await anyio.sleep(0.2)
        conductor = Conductor("c", board, flows=_flows())
        async with _running(conductor):
            with anyio.fail_after(10):
                done = await board.wait_for(job.id)
    assert done.outcome is Outcome.CANCELLED
    assert done.result is not None and "no-such-flow" in done.result["not_reverted"]


async def test_a_job_cancelled_before_it_is_claimed_never_runs(backend: BoardBackend) -> None:
    async with backend.open(lease=5.0, poll_interval=0.05) as board:
        job = await board.post("o", "order", {"key": "d"})
        cancelled = await board.cancel(job.id)
        other = await board.post("o", "order", {"key": "e"})
        conductor = Conductor("c", board, flows=_flows(), lease=5.0)
        async with _running(conductor):
            await _until(lambda: DONE["charge e"] == 1)
            await board.cancel(other.id)
            with anyio.fail_after(60):
                await board.wait_for(other.id)
    assert cancelled.outcome is Outcome.CANCELLED
    assert not DONE["book d"] and DONE["refund e"] == 1


async def test_a_cancel_pushed_before_the_run_started_its_flow_is_heard_at_once() -> None:
    async with MemoryJobBoard(poll_interval=0.05) as board:
        job = await board.post("o", "order", {"key": "f"})
        conductor = Conductor("c", board, flows=_flows(), lease=30.0)

        async def on_claimed(event: Any, details: Any) -> None:
            # The cancel lands just after the claim, while the run prepares its flow.
            await board.cancel(job.id, reason="now")
            await anyio.sleep(0.2)

        conductor.notifier.register(Event.JOB_CLAIMED, on_claimed)
        async with _running(conductor):
            with anyio.fail_after(5):  # by push: the lease (30 s) plays no part
                done = await board.wait_for(job.id)
    assert done.outcome is Outcome.CANCELLED


async def test_a_run_that_lost_its_claim_does_not_revert_on_a_late_cancel() -> None:
    store = MemoryStore()
    async with MemoryJobBoard() as board, store:
        job = await board.post("o", "order", {"key": "g"})
        conductor = Conductor("c", board, store=store, flows=_flows(), lease=1.0)
        [(job, claim)] = await board.claim_batch(conductor.owner, 1, lease=1.0)
        run = JobRun(conductor._run_context(), job, claim)
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.run)
            await _until(lambda: DONE["charge g"] == 1, within=5)
            await anyio.sleep(1.2)  # past the lease: another owner takes the job
            await board.claim(job.id, "other", lease=30.0)
            await run.renew_lease()  # the lease keeper: ClaimLost, the flow is stopped
            assert run.lease_lost
            flagged = await board.cancel(job.id, reason="the new owner's to stop")
            assert flagged.cancel_requested and flagged.owner == "other"
            run.request_cancel()  # the CANCEL push reaching the old owner's dispatcher
        assert not DONE["refund g"] and not DONE["unbook g"]
        assert (await board.get(job.id)).owner == "other"


async def test_a_flagged_job_whose_reverts_keep_dying_is_not_cycled_for_ever() -> None:
    async with MemoryJobBoard(poll_interval=0.05) as board:
        job = await board.post("o", "order", {"key": "h"}, max_attempts=1)
        await board.claim(job.id, "doomed-0", lease=0.05)
        await board.cancel(job.id)
        for n in range(1, 3):  # two more owners died while reverting it
            await anyio.sleep(0.1)
            await board.claim(job.id, f"doomed-{n}", lease=0.05)
        await anyio.sleep(0.1)
        conductor = Conductor("c", board, flows=_flows())
        async with _running(conductor):
            with anyio.fail_after(10):
                done = await board.wait_for(job.id)
    assert done.outcome is Outcome.CANCELLED and done.attempts == 4
    assert done.result is not None and "gave up reverting" in done.result["not_reverted"]
    assert not DONE
