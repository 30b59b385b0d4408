"""Cancel a conductor at every await of claim -> run -> consume, before and after each operation.

Whatever the point, afterwards the job is consumed, claimable, or (when the cancellation lost
the reply of an operation that went through) held only until its lease runs out; the conductor
leaks no task or slot; and a second conductor finishes the job without re-running a task that
had finished.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from anyio.lowlevel import checkpoint

from aioconductor import Conductor, JobState
from aioconductor.boards.memory import MemoryJobBoard
from aioconductor.models import Claim, Job, Outcome
from aioconductor.persistence.models import AtomDetail, FlowDetail, LogBook
from aioconductor.testing import InMemoryStore

from . import apps
from .apps import flows

LEASE = 0.5


class Trap:
    """Counts operations; cancels ``scope`` at operation number ``at``, before or after it."""

    def __init__(self, at: int | None, after: bool) -> None:
        self.at = at
        self.after = after
        self.count = 0
        self.scope: anyio.CancelScope | None = None
        self.sprung: str | None = None

    async def around(self, name: str, operation: Any) -> Any:
        self.count += 1
        hit = self.count == self.at
        if hit and not self.after:
            try:
                await self._spring(name)
            except BaseException:
                operation.close()  # never started: the cancellation came first
                raise
            # The caller shields this operation (a claim): it runs, and the cancellation
            # lands once it returned.
        try:
            return await operation
        finally:
            # In flight: the operation went through (or failed) on the backend, and the
            # cancellation arrives before its caller sees the outcome.
            if hit and self.after:
                await self._spring(name)

    async def _spring(self, name: str) -> None:
        assert self.scope is not None
        self.sprung = name
        self.scope.cancel()
        await checkpoint()


class TrappedBoard(MemoryJobBoard):
    def __init__(self, trap: Trap, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trap = trap

    async def _claim_next(self, owner: str, lease: float) -> Job | None:
        return await self.trap.around("claim_next", super()._claim_next(owner, lease))

    async def _renew(self, claim: Claim, lease: float) -> Claim:
        return await self.trap.around("renew", super()._renew(claim, lease))

    async def _consume(self, claim: Claim, outcome: Outcome, result: Any, data: bytes) -> Job:
        return await self.trap.around("consume", super()._consume(claim, outcome, result, data))


class TrappedStore(InMemoryStore):
    def __init__(self, trap: Trap) -> None:
        super().__init__()
        self.trap = trap

    async def _save_logbook(self, book: LogBook, token: int | None) -> LogBook:
        return await self.trap.around("save_logbook", super()._save_logbook(book, token))

    async def _get_logbook(self, book_uuid: str) -> LogBook:
        return await self.trap.around("get_logbook", super()._get_logbook(book_uuid))

    async def _update_flow_detail(
        self, book_uuid: str, flow: FlowDetail, token: int | None, atoms: tuple[AtomDetail, ...]
    ) -> FlowDetail:
        operation = super()._update_flow_detail(book_uuid, flow, token, atoms)
        return await self.trap.around("update_flow_detail", operation)

    async def _update_atom_detail(
        self, book_uuid: str, flow_uuid: str, atom: AtomDetail, token: int | None
    ) -> AtomDetail:
        operation = super()._update_atom_detail(book_uuid, flow_uuid, atom, token)
        return await self.trap.around("update_atom_detail", operation)

    async def _update_atom_details(
        self, book_uuid: str, flow_uuid: str, atoms: tuple[AtomDetail, ...], token: int | None
    ) -> list[AtomDetail]:
        operation = super()._update_atom_details(book_uuid, flow_uuid, atoms, token)
        return await self.trap.around("update_atom_details", operation)


async def run_trapped(at: int | None, after: bool) -> tuple[Trap, TrappedBoard, TrappedStore, Job]:
    apps.EXECUTIONS.clear()
    trap = Trap(at, after)
    board = TrappedBoard(trap)
    store = TrappedStore(trap)
    await board.connect()
    await store.connect()
    job = await board.post("j", "steps", {"key": 1})
    conductor = Conductor("victim", board, store=store, flows=flows, lease=LEASE)
    with anyio.fail_after(5):
        with anyio.CancelScope() as scope:
            trap.scope = scope
            await conductor.run(max_dispatches=1)
    # Nothing leaked: no job task, no slot, no running engine.
    assert not conductor.is_running and not conductor.running
    dispatcher = conductor._dispatcher
    assert dispatcher is not None and dispatcher._slots.value == conductor.max_concurrency
    return trap, board, store, job


async def count_operations() -> int:
    trap, board, _, job = await run_trapped(None, after=False)
    assert (await board.get(job.id)).state is JobState.COMPLETE
    return trap.count


@pytest.mark.parametrize("after", [False, True], ids=["before", "in-flight"])
async def test_cancel_at_every_operation(after: bool) -> None:
    total = await count_operations()
    # claim; the logbook with the first task RUNNING; each of the first two tasks' SUCCESS
    # with the next one's RUNNING; the last task's SUCCESS with the flow's; consume.
    assert total == 6
    seen: set[str] = set()
    for at in range(1, total + 1):
        trap, board, store, job = await run_trapped(at, after)
        assert trap.sprung is not None
        seen.add(trap.sprung)
        got = await board.get(job.id)
        if got.state is JobState.CLAIMED:
            # Only a lost reply of the claim itself may leave a claim held, and only until its
            # lease runs out.
            assert after and trap.sprung == "claim_next", (at, trap.sprung)
            assert got.claim is not None and got.claim.expires_at <= time.time() + LEASE
            await anyio.sleep(LEASE)
        else:
            assert got.state in (JobState.UNCLAIMED, JobState.COMPLETE), (at, trap.sprung)
        finished_before: set[str] = set()
        if job.id in store.books:
            states = store.atom_states(job.id)
            finished_before = {name for name, state in states.items() if state == "SUCCESS"}
        # A second conductor finishes it, without re-running a task that had finished.
        executions_before = dict(apps.EXECUTIONS)
        trap.at = None
        heir = Conductor("heir", board, store=store, flows=flows, lease=LEASE)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(heir.run)
                done = await board.wait_for(job.id)
                heir.stop()
        assert done.state is JobState.COMPLETE and done.outcome is Outcome.SUCCESS
        assert done.result == {"first": "first:1", "second": "second:1", "third": "third:1"}
        for name in finished_before:
            assert apps.EXECUTIONS[(name, 1)] == executions_before.get((name, 1)), (at, name)
    assert {"claim_next", "update_atom_details", "update_flow_detail", "consume"} <= seen
