"""The PostgreSQL batcher (``aioconductor/_backends/postgres/batch.py``): concurrent logbook
creations and fused endings made in one event-loop turn are one statement, yet each caller gets
its own outcome; a connection killed under a batch fails every caller of it as the unbatched
call fails, and the next calls reconnect; a cancelled caller does not cancel the others.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

from aioconductor import open_board, open_store
from aioconductor.errors import BackendUnavailable, ClaimLost, VersionConflict
from aioconductor.models import JobState, Outcome
from aioconductor.persistence.models import (
    AtomDetail,
    AtomState,
    FlowDetail,
    FlowState,
)
from tests.backends import BY_NAME
from tests.flow_ends import flow_end, running_book
from tests.postgres_helpers import until_waiting_for_a_lock

pytestmark = pytest.mark.parametrize("space", [BY_NAME["postgres"].param()], indirect=True)


class Statements:
    """The batcher's statements: the calls each took (``sizes``), and the calls run again
    alone after the server refused their batch (``again``: none, when each item's refusal is
    the statement's own answer)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from aioconductor._backends.postgres import batch

        self.sizes: list[int] = []
        self.again = 0
        flush, alone = batch.Batcher._flush, batch.Batcher._alone

        async def counted(batcher: Any, calls: list[Any]) -> None:
            self.sizes.append(len(calls))
            await flush(batcher, calls)

        async def counted_alone(batcher: Any, call: Any) -> None:
            self.again += self.sizes[-1] > 1  # a lone call runs alone in any case
            await alone(batcher, call)

        monkeypatch.setattr(batch.Batcher, "_flush", counted)
        monkeypatch.setattr(batch.Batcher, "_alone", counted_alone)


async def _together(*calls: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Run ``calls`` concurrently (started in one turn): each one's result or exception."""
    outcomes: list[Any] = [None] * len(calls)

    async def one(n: int, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            outcomes[n] = await call()
        except Exception as exc:
            outcomes[n] = exc

    async with anyio.create_task_group() as tg:
        for n, call in enumerate(calls):
            tg.start_soon(one, n, call)
    return outcomes


@contextlib.asynccontextmanager
async def _claimed(space: Any, jobs: int) -> AsyncIterator[tuple[Any, Any, list[Any]]]:
    """A board and a store on one URL, and ``jobs`` jobs claimed: (board, store, claims)."""
    url = space.board_url("batch")
    async with open_board(url) as board, open_store(url) as store:
        for n in range(jobs):
            await board.post(f"j{n}", "noop", {"key": n})
        claimed = await board.claim_batch("owner", jobs)
        claims = sorted((claim for _, claim in claimed), key=lambda claim: claim.job_id)
        yield board, store, claims


async def test_creations_in_one_turn_are_one_statement_each_with_its_own_outcome(
    space: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _claimed(space, 5) as (_, store, claims):
        # One logbook exists already, written by a newer claim: its creation is refused.
        taken = claims[2]
        await store.save_logbook(running_book(taken.job_id), token=taken.token + 1)
        statements = Statements(monkeypatch)
        books = [running_book(claim.job_id) for claim in claims]
        outcomes = await _together(
            *(
                lambda book=book, claim=claim: store.save_logbook(book, token=claim.token)
                for book, claim in zip(books, claims, strict=True)
            )
        )
        assert statements.sizes[0] == 5 and statements.again == 0
        assert isinstance(outcomes[2], ClaimLost), outcomes[2]
        for n in (0, 1, 3, 4):
            saved = outcomes[n]
            assert saved == await store.get_logbook(claims[n].job_id)
            assert saved.token == claims[n].token
            [flow] = saved.flows.values()
            assert flow.atoms["echo"].state is AtomState.RUNNING
        assert (await store.get_logbook(taken.job_id)).token == taken.token + 1


async def _running(store: Any, claims: list[Any]) -> list[FlowDetail]:
    flows = []
    for claim in claims:
        book = await store.save_logbook(running_book(claim.job_id), token=claim.token)
        [flow] = book.flows.values()
        flows.append(flow)
    return flows


async def _to_end(
    board: Any, store: Any, claims: list[Any]
) -> tuple[Callable[..., Awaitable[None]], list[FlowDetail], list[tuple[FlowDetail, AtomDetail]]]:
    """The store's fused ending with ``board``; each claim's flow saved RUNNING; and each
    such flow ended (its end and its atom's, as the ending takes them)."""
    fused = store.fused_ending(board)
    assert fused is not None
    flows = await _running(store, claims)
    return fused, flows, [flow_end(flow) for flow in flows]


async def test_endings_in_one_turn_are_one_statement_each_with_its_own_outcome(
    space: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Good endings, a stale claim, a claim taken over, a version conflict and a logbook a
    newer claim wrote, in one statement: the good ones are saved and consumed, each refused
    one raises its own error and changes nothing."""
    async with _claimed(space, 6) as (board, store, claims):
        fused, flows, ends = await _to_end(board, store, claims)
        # 1: a token the board never gave; 2: taken over; 3: a stale version; 4: a newer
        # claim's token on the logbook (the board's claim still current).
        calls = [(claim, claim.token) for claim in claims]
        calls[1] = (claims[1].model_copy(update={"token": claims[1].token + 1}), claims[1].token)
        await board.release(claims[2])
        await board.claim(claims[2].job_id, "thief")
        ends[3][0].version += 1
        await store.update_flow_detail(claims[4].job_id, flows[4], token=claims[4].token + 1)
        flows[4] = (await store.get_logbook(claims[4].job_id)).flows[flows[4].uuid]
        ends[4] = flow_end(flows[4])
        statements = Statements(monkeypatch)
        outcomes = await _together(
            *(
                lambda c=c, t=t, e=e: fused(
                    c, Outcome.SUCCESS, {"r": c.job_id}, c.job_id, e[0], t, (e[1],)
                )
                for (c, t), e in zip(calls, ends, strict=True)
            )
        )
        assert statements.sizes[0] == 6 and statements.again == 0
        for n in (1, 2, 4):
            assert isinstance(outcomes[n], ClaimLost), (n, outcomes[n])
        assert isinstance(outcomes[3], VersionConflict), outcomes[3]
        for n in (0, 5):
            assert outcomes[n] is None, (n, outcomes[n])  # the consumed job is not read back
            job = await board.get(claims[n].job_id)
            assert job.state is JobState.COMPLETE and job.result == {"r": claims[n].job_id}
            saved = (await store.get_logbook(claims[n].job_id)).flows[flows[n].uuid]
            assert saved.state is FlowState.SUCCESS and saved.version == flows[n].version + 1
            assert saved.atoms["echo"].result == {"echoed": 1}
        for n in (1, 2, 3, 4):
            job = await board.get(claims[n].job_id)
            assert job.state is JobState.CLAIMED, n
            saved = (await store.get_logbook(claims[n].job_id)).flows[flows[n].uuid]
            assert saved.state is FlowState.RUNNING and saved.version == flows[n].version, n


async def _blocked(space: Any, job_id: str) -> Any:
    """A transaction of the test's own holding job ``job_id``'s row (a statement that locks
    it waits); roll it back to let the statement go on."""
    admin = await space.admin()
    transaction = admin.transaction()
    await transaction.start()
    await admin.execute(
        f"UPDATE {space.schema}.jobs SET updated_at = updated_at WHERE id = $1", job_id
    )
    return transaction


async def _waiting(space: Any) -> None:
    """Until a connection of the space waits for a lock."""
    await until_waiting_for_a_lock(await space.admin(), space.tag)


async def test_a_connection_killed_under_a_batch_fails_every_caller_then_reconnects(
    space: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _claimed(space, 4) as (board, store, claims):
        fused, flows, ends = await _to_end(board, store, claims)

        def ending(n: int) -> Callable[[], Awaitable[Any]]:
            claim, (end, atom) = claims[n], ends[n]
            token = claim.token
            return lambda: fused(claim, Outcome.SUCCESS, {}, claim.job_id, end, token, (atom,))

        statements = Statements(monkeypatch)
        transaction = await _blocked(space, claims[3].job_id)
        outcomes: list[Any] = []
        try:
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    outcomes.extend(await _together(*(ending(n) for n in range(4))))

                tg.start_soon(run)
                await _waiting(space)
                assert await space.kill_connections() >= 1
        finally:
            await transaction.rollback()
        assert statements.sizes[0] == 4
        for outcome in outcomes:
            assert isinstance(outcome, BackendUnavailable), outcome
        # The killed statement wrote nothing; the next calls reconnect and end the jobs.
        for claim, flow in zip(claims, flows, strict=True):
            assert (await board.get(claim.job_id)).state is JobState.CLAIMED
            saved = (await store.get_logbook(claim.job_id)).flows[flow.uuid]
            assert saved.state is FlowState.RUNNING
        for outcome in await _together(*(ending(n) for n in range(4))):
            assert outcome is None, outcome
        for claim in claims:
            assert (await board.get(claim.job_id)).state is JobState.COMPLETE


async def test_a_cancelled_caller_does_not_cancel_the_batch_for_the_others(
    space: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancelled caller returns only once the statement has ended (its job may be ended
    then, as by a cancelled unbatched call); the others get their own outcomes."""
    async with _claimed(space, 3) as (board, store, claims):
        fused, _, ends = await _to_end(board, store, claims)
        statements = Statements(monkeypatch)
        transaction = await _blocked(space, claims[2].job_id)
        waiting = object()
        outcomes: list[Any] = [waiting] * 3
        state_when_cancelled: list[JobState] = []
        scope = anyio.CancelScope()

        async def end(n: int) -> None:
            claim, (flow, atom) = claims[n], ends[n]
            outcomes[n] = await fused(
                claim, Outcome.SUCCESS, {}, claim.job_id, flow, claim.token, (atom,)
            )

        async def cancelled() -> None:
            with scope:
                await end(0)
            state_when_cancelled.append((await board.get(claims[0].job_id)).state)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancelled)
                tg.start_soon(end, 1)
                tg.start_soon(end, 2)
                await _waiting(space)
                scope.cancel()
                await anyio.sleep(0.2)
                assert not state_when_cancelled  # still waiting for the statement
                await transaction.rollback()
        except BaseException:
            with contextlib.suppress(Exception):
                await transaction.rollback()
            raise
        assert statements.sizes[0] == 3
        assert scope.cancelled_caught and outcomes[0] is waiting
        assert state_when_cancelled == [JobState.COMPLETE]
        for n in (1, 2):
            assert outcomes[n] is None
            assert (await board.get(claims[n].job_id)).state is JobState.COMPLETE


async def test_atom_writes_in_one_turn_are_one_statement_each_with_its_own_outcome(
    space: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Good writes of two atoms each, among a stale atom version, a stale token, a missing
    logbook and a missing flow, in one statement: each refused one raises its own error and
    writes nothing, the good ones are written."""
    from aioconductor.errors import LogBookNotFound

    async with _claimed(space, 6) as (_, store, claims):
        flows = await _running(store, claims)
        writes = []
        for claim, flow in zip(claims, flows, strict=True):
            done = flow.atoms["echo"].model_copy(update={"state": AtomState.SUCCESS})
            done.result = {"n": claim.job_id}
            new = AtomDetail(name="next", state=AtomState.RUNNING)
            writes.append([claim.job_id, flow.uuid, [done, new], claim.token])
        writes[1][2][0] = writes[1][2][0].model_copy(update={"version": 7})  # stale version
        writes[2][3] = claims[2].token - 1  # an older claim's token
        writes[3][0] = "no-such-logbook"
        writes[4][1] = "no-such-flow"
        statements = Statements(monkeypatch)
        outcomes = await _together(
            *(lambda w=w: store.update_atom_details(w[0], w[1], w[2], token=w[3]) for w in writes)
        )
        assert statements.sizes[0] == 6 and statements.again == 0
        assert isinstance(outcomes[1], VersionConflict), outcomes[1]
        assert isinstance(outcomes[2], ClaimLost), outcomes[2]
        assert isinstance(outcomes[3], LogBookNotFound), outcomes[3]
        assert isinstance(outcomes[4], LogBookNotFound), outcomes[4]
        for n, (claim, flow) in enumerate(zip(claims, flows, strict=True)):
            saved = (await store.get_logbook(claim.job_id)).flows[flow.uuid]
            if n in (0, 5):
                assert [a.version for a in outcomes[n]] == [flow.atoms["echo"].version + 1, 1]
                assert saved.atoms["echo"].state is AtomState.SUCCESS
                assert saved.atoms["echo"].result == {"n": claim.job_id}
                assert saved.atoms["next"].state is AtomState.RUNNING
            else:
                assert saved.atoms == flow.atoms, n


async def _ending_racing_a_commit(
    space: Any, change: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Any], list[Any], Any, Any]:
    """Three jobs ended in one statement while a transaction of the test's own, having made
    ``change`` (an UPDATE's SET) to the middle job's row, holds it; committed once the
    statement waits for the row. (outcomes, claims, board, store) once all ended."""
    outcomes: list[Any] = []
    async with _claimed(space, 3) as (board, store, claims):
        fused, flows, ends = await _to_end(board, store, claims)
        statements = Statements(monkeypatch)
        admin = await space.admin()
        transaction = admin.transaction()
        await transaction.start()
        try:
            await admin.execute(
                f"UPDATE {space.schema}.jobs SET {change} WHERE id = $1", claims[1].job_id
            )
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    outcomes.extend(
                        await _together(
                            *(
                                lambda c=c, e=e: fused(
                                    c, Outcome.SUCCESS, {}, c.job_id, e[0], c.token, (e[1],)
                                )
                                for c, e in zip(claims, ends, strict=True)
                            )
                        )
                    )

                tg.start_soon(run)
                await _waiting(space)
                await transaction.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await transaction.rollback()
            raise
        assert statements.sizes[0] == 3 and statements.again == 0
        saved = [
            (await store.get_logbook(c.job_id)).flows[f.uuid]
            for c, f in zip(claims, flows, strict=True)
        ]
        jobs = [await board.get(c.job_id) for c in claims]
        return outcomes, saved, jobs, claims


async def test_a_batched_ending_waits_for_a_renewal_then_ends(
    space: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal committed while the statement waits for the job's row is read again, as
    committed (the claim still current): every job of the statement ends."""
    outcomes, saved, jobs, _ = await _ending_racing_a_commit(
        space, "expires_at = expires_at + 60, ready_at = ready_at + 60", monkeypatch
    )
    for outcome, flow, job in zip(outcomes, saved, jobs, strict=True):
        assert not isinstance(outcome, Exception), outcome
        assert job.state is JobState.COMPLETE and flow.state is FlowState.SUCCESS


async def test_a_batched_ending_waits_for_a_take_over_then_changes_nothing_of_that_job(
    space: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A take-over committed while the statement waits for the job's row is read again, as
    committed: that job's claim is stale, so nothing of it is written; the others end."""
    outcomes, saved, jobs, _ = await _ending_racing_a_commit(
        space, "owner = 'thief', token = token + 1", monkeypatch
    )
    assert isinstance(outcomes[1], ClaimLost), outcomes[1]
    assert jobs[1].state is JobState.CLAIMED and jobs[1].claim is not None
    assert jobs[1].claim.owner == "thief"
    assert saved[1].state is FlowState.RUNNING
    for n in (0, 2):
        assert jobs[n].state is JobState.COMPLETE and saved[n].state is FlowState.SUCCESS


async def test_a_conductor_with_a_pool_of_one_connection_runs_its_jobs(space: Any) -> None:
    """With ``pool_max=1`` the batcher takes the pool's one connection only while it runs
    statements, so the link's other calls (claims, reads, renewals) still get it."""
    from aioconductor import Conductor
    from tests.apps import flows

    url = space.board_url("pool1", pool_max=1, pool_min=1)
    async with open_board(url) as board, open_store(url) as store:
        jobs = [await board.post(f"j{n}", "steps", {"key": n}) for n in range(20)]
        conductor = Conductor("one", board, store=store, flows=flows, retention=None)
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                for job in jobs:
                    assert (await board.wait_for(job.id)).state is JobState.COMPLETE
                conductor.stop()
        for job in jobs:
            [flow] = (await store.get_logbook(job.id)).flows.values()
            assert flow.state is FlowState.SUCCESS


def _most_loops(plan: dict[str, Any]) -> int:
    """The most times any step of an ``EXPLAIN (ANALYZE, FORMAT JSON)`` plan ran."""
    steps = plan.get("Plans", [])
    return max([plan.get("Actual Loops", 0), *(_most_loops(step) for step in steps)])


async def test_a_batched_endings_server_work_grows_with_its_jobs_only(
    space: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No step of the batched fused ending runs more often than there are claimed jobs (the
    planner may scan those of the namespace): its consume once joined every claimed job with
    every ending and ran the checks of each ending for each pair (768 times for 16 endings
    among 48 claimed jobs)."""
    from aioconductor._backends.postgres import fused as fused_module
    from aioconductor._backends.postgres.batch import Kind

    loops: list[int] = []
    real = fused_module._ending

    def explained(board_schema: str, store_schema: str) -> Kind:
        kind = real(board_schema, store_schema)

        async def together(conn: Any, items: list[Any]) -> Any:
            class Explaining:
                async def fetch(self, query: str, *args: Any) -> Any:
                    explain = conn.transaction()  # rolled back: the statement runs below
                    await explain.start()
                    try:
                        plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", *args)
                    finally:
                        await explain.rollback()
                    loops.append(_most_loops(json.loads(plan)[0]["Plan"]))
                    return await conn.fetch(query, *args)

            return await kind.together(Explaining(), items)

        return Kind(kind.what, kind.keys, kind.alone, together)

    monkeypatch.setattr(fused_module, "_ending", explained)
    async with _claimed(space, 48) as (board, store, claims):
        ending = claims[:16]
        ends = [flow_end(flow) for flow in await _running(store, ending)]
        fused = store.fused_ending(board)
        assert fused is not None
        outcomes = await _together(
            *(
                lambda c=c, e=e: fused(c, Outcome.SUCCESS, {}, c.job_id, e[0], c.token, (e[1],))
                for c, e in zip(ending, ends, strict=True)
            )
        )
        assert outcomes == [None] * len(ending), outcomes
        for claim in ending:
            assert (await board.get(claim.job_id)).state is JobState.COMPLETE
    assert len(loops) == 1 and loops[0] <= 48, loops
