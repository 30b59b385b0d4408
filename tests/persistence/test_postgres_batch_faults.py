"""The PostgreSQL batcher under faults (``aioconductor/_backends/postgres/batch.py``): a held
connection the server dropped while idle is replaced, not reported; no call is stranded in the
queue; a pool of one connection still serves the link's other calls under sustained batches;
callers who all leave a blocked statement return at once, the statement cancelled; calls on one
row keep their order across kinds.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from aioconductor import open_store
from aioconductor._backends.postgres.batch import Batcher, Kind
from aioconductor.models import JobState, Outcome
from aioconductor.persistence.models import FlowState
from tests.backends import BY_NAME
from tests.flow_ends import flow_end, running_book
from tests.persistence.test_postgres_batch import (
    _blocked,
    _claimed,
    _running,
    _to_end,
    _together,
    _waiting,
)

postgres = pytest.mark.parametrize("space", [BY_NAME["postgres"].param()], indirect=True)


@postgres
async def test_a_held_connection_dropped_while_idle_is_replaced_and_strands_nothing(
    space: Any,
) -> None:
    errors: list[Any] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    async with _claimed(space, 4) as (_, store, claims):
        flows = await _running(store, claims)  # the batcher now holds a connection
        assert await space.kill_connections() >= 1
        await anyio.sleep(0.3)
        writes = [
            lambda c=c, f=f: store.update_atom_details(
                c.job_id, f.uuid, [flow_end(f)[1]], token=c.token
            )
            for c, f in zip(claims[:3], flows[:3], strict=True)
        ]
        # A creation queued in the same turn: a kind of its own, for the next statement.
        creation = lambda: store.save_logbook(running_book("new-book"))  # noqa: E731
        with anyio.fail_after(5):
            outcomes = await _together(*writes, creation)
        for outcome in outcomes:
            assert not isinstance(outcome, Exception), outcome
        assert (await store.get_logbook("new-book")).uuid == "new-book"
    assert errors == []


@postgres
async def test_a_pool_of_one_connection_serves_other_calls_under_sustained_batches(
    space: Any,
) -> None:
    async with open_store(space.store_url("batch", pool_max=1, pool_min=1)) as store:
        books = [await store.save_logbook(running_book(f"b{n}")) for n in range(16)]
        stop = anyio.Event()
        writes = 0

        async def writer(book: Any) -> None:
            nonlocal writes
            [flow] = book.flows.values()
            atom = flow.atoms["echo"]
            while not stop.is_set():
                [atom] = await store.update_atom_details(book.uuid, flow.uuid, [atom])
                writes += 1

        async with anyio.create_task_group() as tg:
            for book in books:
                tg.start_soon(writer, book)
            await anyio.sleep(0.3)
            with anyio.fail_after(2):
                assert (await store.get_logbook("b0")).uuid == "b0"
            stop.set()
        assert writes > 16


@postgres
async def test_callers_who_all_leave_a_blocked_statement_return_at_once(space: Any) -> None:
    async with _claimed(space, 3) as (board, store, claims):
        fused, flows, ends = await _to_end(board, store, claims)

        async def end(n: int) -> Any:
            claim, (flow, atom) = claims[n], ends[n]
            return await fused(claim, Outcome.SUCCESS, {}, claim.job_id, flow, claim.token, (atom,))

        transaction = await _blocked(space, claims[2].job_id)
        try:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for n in range(3):
                        tg.start_soon(end, n)
                    await _waiting(space)
                    tg.cancel_scope.cancel()
                    left = anyio.current_time()
            assert anyio.current_time() - left < 1.0  # not held until the lock is let go
        finally:
            await transaction.rollback()
        # The statement was cancelled on the server: one statement, nothing of it written.
        for claim, flow in zip(claims, flows, strict=True):
            assert (await board.get(claim.job_id)).state is JobState.CLAIMED
            saved = (await store.get_logbook(claim.job_id)).flows[flow.uuid]
            assert saved.state is FlowState.RUNNING
        # And the batcher goes on.
        for outcome in await _together(*(lambda n=n: end(n) for n in range(3))):
            assert not isinstance(outcome, Exception), outcome
        for claim in claims:
            assert (await board.get(claim.job_id)).state is JobState.COMPLETE


class _Link:
    """What the batcher needs of a link, and no server."""

    closed = False
    pool_max = 10

    def closed_error(self) -> Exception:
        return RuntimeError("closed")

    def errors(self, what: str) -> Any:
        return []

    async def take(self, what: str) -> tuple[Any, Any]:
        return object(), _Connection()

    async def give_back(self, pool: Any, conn: Any, pid: int | None, *, settled: bool) -> None:
        pass


class _Connection:
    def is_closed(self) -> bool:
        return False

    def get_server_pid(self) -> int:
        return 1


async def test_calls_on_one_row_keep_their_order_across_kinds() -> None:
    sent: list[tuple[str, str]] = []

    def kind(name: str) -> Kind:
        async def alone(conn: Any, item: str) -> str:
            sent.append((name, item))
            return item

        async def together(conn: Any, items: list[str]) -> list[str]:
            sent.extend((name, item) for item in items)
            return items

        return Kind(name, lambda item: (item,), alone, together)

    batcher, create, write = Batcher(_Link()), kind("create"), kind("write")
    await asyncio.gather(batcher.run(write, "z"), batcher.run(create, "x"), batcher.run(write, "x"))
    assert sent.index(("create", "x")) < sent.index(("write", "x"))
