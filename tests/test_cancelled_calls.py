"""Board and store calls cancelled at any point of their flight, on every server backend of
``tests/backends.py``: each happened whole or not at all, the next call gets its own reply, and
nothing stays open behind them (a reply unread on a pooled connection, a transaction, a lock, a
connection).

Deadlines are drawn at random within a call's span, so that many land before, while and after
the command runs. (A conductor cancelled at every await of a job's run is
``tests/test_cancellation.py``; SQLite's worker thread has its own tests in
``tests/boards/test_sqlite.py``.)
"""

from __future__ import annotations

import asyncio
import gc
import random
from typing import Any

import anyio
import pytest

from aioconductor import Conductor, open_board, open_store
from aioconductor.boards import JobBoard
from aioconductor.models import Claim, JobState
from aioconductor.persistence import Store
from aioconductor.persistence.models import AtomDetail, FlowDetail
from aioconductor.testing.conformance._store_data import make_book

from .apps import flows
from .backends import PostgresSpace, RedisSpace, Space, board_fixture, params, store_fixture

#: The backends these tests run on: servers, whose connections a cancelled call could spoil.
SERVERS = params(kills="tagged")


async def assert_nothing_left_open(space: Space, resource: JobBoard | Store) -> None:
    """No pooled connection of ``resource`` holds a reply nobody will read (Redis), and no
    connection of the space sits in a transaction or holds a lock (PostgreSQL)."""
    if isinstance(space, RedisSpace):
        pool = resource._link.client.connection_pool  # type: ignore[union-attr]
        for connection in pool._available_connections:
            if connection.is_connected:
                assert not await connection.can_read()
    else:
        assert isinstance(space, PostgresSpace)
        from tests.postgres_helpers import idle_or_locked

        admin = await space.admin()
        with anyio.fail_after(5):
            while await idle_or_locked(admin, space.tag) != (0, 0):
                await anyio.sleep(0.05)


board = board_fixture("cancel", lease=5.0, poll_interval=0.05)
store = store_fixture("cancel")


# -- boards ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("space", SERVERS, indirect=True)
async def test_a_cancelled_call_never_hands_its_reply_to_the_next_caller(
    space: Space, board: JobBoard
) -> None:
    # Big payloads take a while to arrive, so many cancellations land mid-reply.
    jobs = [await board.post(f"j{i}", "f", {"i": i, "pad": "x" * 800_000}) for i in range(8)]
    claims = [await board.claim(job.id, "owner-1", lease=60) for job in jobs[:4]]
    rng = random.Random(5)
    interrupted = 0
    for _ in range(300):
        victim = rng.choice(jobs)
        with anyio.move_on_after(rng.uniform(0, 0.004)) as scope:
            if rng.random() < 0.5:
                await board.get(victim.id)
            else:
                await board.renew(rng.choice(claims), lease=60)
        interrupted += scope.cancelled_caught
        expected = rng.choice(jobs)
        got = await board.get(expected.id)
        assert got.id == expected.id and got.args["i"] == expected.args["i"]
    assert interrupted > 30
    # Every claim is still current: a cancelled renew either happened whole or not at all.
    for claim in claims:
        assert (await board.renew(claim)).token == claim.token
    await assert_nothing_left_open(space, board)


@pytest.mark.parametrize("space", SERVERS, indirect=True)
async def test_cancelled_transitions_leave_every_job_whole(space: Space, board: JobBoard) -> None:
    for i in range(40):
        await board.post(f"j{i}", "f", {"pad": "x" * 20_000})
    rng = random.Random(6)
    interrupted = 0
    claims: list[Claim] = []
    for _ in range(400):
        # Deadlines within a call's span (well under a millisecond on loopback).
        with anyio.move_on_after(rng.uniform(0, 0.0008)) as scope:
            verb = rng.random()
            if verb < 0.4 or not claims:
                claimed = await board.claim_next("owner", lease=0.05)
                if claimed is not None:
                    claims.append(claimed[1])
            elif verb < 0.7:
                await board.consume(claims.pop(), result={"pad": "y" * 20_000})
            else:
                await board.abandon(claims.pop())
        interrupted += scope.cancelled_caught
    assert interrupted > 50
    await assert_nothing_left_open(space, board)
    # Every job is still whole: finished, or claimable again once its lease ran out.
    await anyio.sleep(0.1)
    states = {job.state async for job in board.iterjobs()}
    assert states <= {JobState.UNCLAIMED, JobState.CLAIMED, JobState.COMPLETE}
    while (claimed := await board.claim_next("finisher")) is not None:
        await board.consume(claimed[1])
    assert await board.job_count(state=JobState.COMPLETE) == 40


@pytest.mark.parametrize("space", SERVERS, indirect=True)
async def test_a_conductor_cancelled_as_it_starts_leaves_no_noise_and_no_connection(
    space: Space,
) -> None:
    """Cancelled within its first 30 ms, a conductor is often cut in the middle of opening a
    connection (the pools' and the listener's): nothing of it may reach the event loop's
    exception handler ("Future exception was never retrieved"), and no connection may stay."""
    shared = space.board_url("cancel")
    async with open_board(shared) as board, open_store(shared):
        for i in range(5):
            await board.post(f"j{i}", "noop", {"key": i})
    reports: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reports.append(context))
    try:
        rng = random.Random(14)
        for _ in range(30):
            board, store = open_board(shared), open_store(shared)
            conductor = Conductor("c", board, store=store, flows=flows, lease=5.0)
            with anyio.move_on_after(rng.uniform(0, 0.03)):
                async with board, store, conductor:
                    await conductor.run()
            await board.aclose()
            await store.aclose()
            # An exception set on a future nobody awaited is reported when the future is
            # collected: collect now, so each round's leftovers are seen.
            gc.collect()
        await anyio.sleep(0.05)
        gc.collect()
    finally:
        loop.set_exception_handler(handler)
    assert [str(r.get("exception") or r.get("message")) for r in reports] == []
    with anyio.fail_after(5):
        while await space.connections():
            await anyio.sleep(0.05)


# -- stores ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("space", params(kills="tagged", store=True), indirect=True)
async def test_a_cancelled_store_write_either_happened_or_not(space: Space, store: Store) -> None:
    book = await store.save_logbook(make_book(atoms=0))
    flow_uuid = next(iter(book.flows))
    for i in range(100):
        atom = AtomDetail(name=f"a{i}", result="x" * 50_000)
        with anyio.move_on_after(0.0005 * (i % 7)):
            await store.update_atom_detail(book.uuid, flow_uuid, atom, token=1)
        # Whatever the cancelled call did, the next one gets its own reply.
        got = await store.get_logbook(book.uuid)
        assert got.uuid == book.uuid and got.token in (None, 1)
    saved = await store.get_logbook(book.uuid)
    assert all(atom.version == 1 for atom in saved.flows[flow_uuid].atoms.values())
    await assert_nothing_left_open(space, store)


@pytest.mark.parametrize("space", params(kills="tagged", store=True), indirect=True)
async def test_cancelled_store_writes_leave_every_write_whole(space: Space, store: Store) -> None:
    book = await store.save_logbook(make_book())
    flow = next(iter(book.flows.values()))
    rng = random.Random(8)
    interrupted = 0
    # Until enough writes were cut short (how many a given spread of delays cuts depends on
    # the store's speed: a fixed count of writes went below the mark as writes got faster).
    for i in range(3000):
        if interrupted > 30 and i >= 300:
            break
        with anyio.move_on_after(rng.uniform(0, 0.004)) as scope:
            if i % 3 == 0:
                extra = FlowDetail(name=f"f{i}", atoms={"a": AtomDetail(name="a")})
                await store.update_flow_detail(book.uuid, extra)
            elif i % 3 == 1:
                await store.save_logbook(book.model_copy(update={"name": f"n{i}"}))
            else:
                current = next(iter((await store.get_logbook(book.uuid)).flows.values()))
                await store.update_atom_detail(book.uuid, flow.uuid, current.atoms["atom-0"])
        interrupted += scope.cancelled_caught
    assert interrupted > 30
    await assert_nothing_left_open(space, store)
    # Each write happened whole or not at all; the store goes on working.
    got = await store.get_logbook(book.uuid)
    for each in got.flows.values():
        if each.uuid != flow.uuid:
            assert list(each.atoms) == ["a"]
    atom = next(iter(got.flows.values())).atoms["atom-0"]
    saved = await store.update_atom_detail(book.uuid, flow.uuid, atom)
    assert saved.version == atom.version + 1
