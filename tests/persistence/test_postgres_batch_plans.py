"""The PostgreSQL batcher's statements read the rows of the jobs they end and the atoms they
write, not every flow and atom of the namespace: on tables with no statistics yet (a new
schema, a burst before autovacuum), the batched ending and the batched atom writes joined the
namespace's flows and atoms and read all of them, once per statement, as the tables grew.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import anyio
import pytest

from aioconductor import open_board, open_store
from aioconductor.models import Outcome
from aioconductor.persistence.models import AtomState
from tests.backends import BY_NAME
from tests.flow_ends import flow_end, running_book
from tests.postgres_helpers import most_rows

pytestmark = pytest.mark.parametrize("space", [BY_NAME["postgres"].param()], indirect=True)

#: Logbooks in the namespace besides the ones a test ends or writes.
OTHERS = 1200
#: The jobs (or logbooks) one batched statement ends (or writes).
BATCH = 16


class PlannedConnection:
    """The batcher's connection, each batched statement run first under ``EXPLAIN ANALYZE``
    (rolled back): the most rows a step of its plan gave, in ``plans``."""

    def __init__(self, conn: Any, plans: list[int]) -> None:
        self._conn = conn
        self._plans = plans

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def fetch(self, query: str, *args: Any) -> Any:
        if query.lstrip().startswith("WITH i AS"):
            probe = self._conn.transaction()
            await probe.start()
            try:
                plan = await self._conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", *args)
            finally:
                await probe.rollback()
            self._plans.append(most_rows(json.loads(plan)[0]["Plan"]))
        return await self._conn.fetch(query, *args)


@pytest.fixture
def plans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from aioconductor._backends.postgres import batch

    seen: list[int] = []
    connection = batch.Batcher._connection

    async def planned(batcher: Any, what: str) -> Any:
        return PlannedConnection(await connection(batcher, what), seen)

    monkeypatch.setattr(batch.Batcher, "_connection", planned)
    return seen


async def _others(store: Any) -> None:
    """``OTHERS`` logbooks of other jobs, their flows RUNNING with one atom each."""
    for first in range(0, OTHERS, 100):
        async with anyio.create_task_group() as tg:
            for n in range(first, first + 100):
                save = functools.partial(store.save_logbook, token=1)
                tg.start_soon(save, running_book(f"other-{n}"))


async def test_the_batched_ending_reads_the_jobs_it_ends_not_the_namespace(
    space: Any, plans: list[int]
) -> None:
    url = space.board_url("plans")
    async with open_board(url) as board, open_store(url) as store:
        await _others(store)
        await board.post_many("noop", [{"key": n} for n in range(BATCH)])
        claims = [claim for _, claim in await board.claim_batch("owner", BATCH)]
        flows = []
        for claim in claims:
            book = await store.save_logbook(running_book(claim.job_id), token=claim.token)
            flows.extend(book.flows.values())
        fused = store.fused_ending(board)
        assert fused is not None
        plans.clear()
        async with anyio.create_task_group() as tg:
            for claim, flow in zip(claims, flows, strict=True):
                ended, atom = flow_end(flow)
                tg.start_soon(
                    fused, claim, Outcome.SUCCESS, {}, claim.job_id, ended, claim.token, (atom,)
                )
        assert plans, "no batched ending ran"
        # The batch's own checks pair its rows (BATCH squared at most): never the namespace.
        assert max(plans) <= BATCH * BATCH, plans
        for claim in claims:
            [flow] = (await store.get_logbook(claim.job_id)).flows.values()
            assert flow.atoms["echo"].state is AtomState.SUCCESS


async def test_batched_atom_writes_read_the_atoms_they_write_not_the_namespace(
    space: Any, plans: list[int]
) -> None:
    url = space.board_url("plans")
    async with open_store(url) as store:
        await _others(store)
        books = [running_book(f"mine-{n}") for n in range(BATCH)]
        for book in books:
            await store.save_logbook(book, token=1)
        plans.clear()
        async with anyio.create_task_group() as tg:
            for book in books:
                [flow] = book.flows.values()
                atom = flow.atoms["echo"].model_copy()
                atom.state = AtomState.SUCCESS
                write = functools.partial(store.update_atom_details, token=1)
                tg.start_soon(write, book.uuid, flow.uuid, [atom])
        assert plans, "no batched atom write ran"
        # The batch's own checks pair its rows (BATCH squared at most): never the namespace.
        assert max(plans) <= BATCH * BATCH, plans
