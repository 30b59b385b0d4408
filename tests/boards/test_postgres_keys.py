"""Keys and retention on the PostgreSQL board, beyond the conformance suite: the upgrade from
schema version 3, posts that wait for a transaction posting the same key, a holder purged
between a post's insert and its read, purges that block no claim, and the indexes they read."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

from aioconductor._backends.postgres import board_sql as sql
from aioconductor._backends.postgres.posting import post_many
from aioconductor._backends.postgres.schema import migrate
from aioconductor.boards import JobBoard, open_board
from aioconductor.boards._posting import post_spec
from aioconductor.boards.postgres import PostgresJobBoard
from aioconductor.errors import JobNotFound, PayloadError
from aioconductor.models import JobState, Outcome
from tests.backends import PostgresSpace, board_fixture, one_space_fixture
from tests.conftest import POSTGRES_URL
from tests.postgres_helpers import PurgeOnConflict, admin, schema, url

__all__ = ["admin", "schema"]  # the fixtures, imported by name

pytestmark = pytest.mark.postgres

space = one_space_fixture("postgres")
board = board_fixture("pg_keys", lease=5.0, poll_interval=0.05)


@contextlib.asynccontextmanager
async def _transaction(conn: Any) -> AsyncIterator[Callable[..., Awaitable[None]]]:
    """A transaction on ``conn`` that the test ends itself (``await end()`` commits,
    ``await end(False)`` rolls back) while other tasks wait on it; rolled back if not."""
    transaction = conn.transaction()
    await transaction.start()
    ended = False

    async def end(commit: bool = True) -> None:
        nonlocal ended
        ended = True
        await (transaction.commit() if commit else transaction.rollback())

    try:
        yield end
    finally:
        if not ended:
            await transaction.rollback()


async def _finished(board: JobBoard, key: str | None = None) -> Any:
    job = await board.post("j", "f", key=key)
    return await board.consume(await board.claim(job.id, "owner-1"), outcome=Outcome.SUCCESS)


# -- the upgrade from version 3 ---------------------------------------------------------------


async def test_a_version_3_schema_is_upgraded_and_its_jobs_read_run_and_purge(
    schema: str, admin: Any
) -> None:
    await migrate(
        admin, schema=schema, url=POSTGRES_URL, component="board", migrations=sql.MIGRATIONS[:3]
    )
    now = await admin.fetchval(sql.NOW_QUERY)
    insert = f"""INSERT INTO "{schema}".jobs (namespace, id, name, flow, args, priority,
            created_at, updated_at, attempts, max_attempts, token, state, owner, expires_at,
            ready_at, outcome, trash_reason, retries)
        VALUES ('default', $1, $2, 'f', '{{}}', 0, $3, $4, $5::integer, 3, $5::integer, $6,
            $7, $8, $9, $10, $11, 1)"""
    ids = {name: str(uuid.uuid4()) for name in ("waiting", "held", "done", "trashed")}
    rows = [
        ("waiting", now, 0, "UNCLAIMED", None, None, now, None, None),
        ("held", now, 1, "CLAIMED", "owner-1", now + 60, now + 60, None, None),
        ("done", now - 7200, 1, "COMPLETE", None, None, None, "SUCCESS", None),
        ("trashed", now - 7200, 1, "TRASHED", None, None, None, None, "bad"),
    ]
    for name, updated, n, state, owner, expires, ready, outcome, reason in rows:
        await admin.execute(
            insert, ids[name], name, now - 8000, updated, n, state, owner, expires, ready,
            outcome, reason,
        )  # fmt: skip

    async with open_board(url(schema)) as board:
        jobs = {job.name: job async for job in board.iterjobs()}
        assert {name: job.id for name, job in jobs.items()} == ids
        assert all(job.key is None and job.retries == 1 for job in jobs.values())
        assert jobs["done"].outcome is Outcome.SUCCESS and jobs["trashed"].trash_reason == "bad"
        # Jobs that finished before the upgrade are purgeable; the others are kept.
        assert await board.purge(older_than=3600) == 2
        for name in ("done", "trashed"):
            with pytest.raises(JobNotFound):
                await board.get(ids[name])
        # Old jobs still run: the claim taken before the upgrade holds, the waiting job claims.
        held = (await board.get(ids["held"])).claim
        assert held is not None and held.owner == "owner-1"
        await board.consume(held)
        await board.consume(await board.claim(ids["waiting"], "owner-2"))
        assert await board.purge(older_than=3600) == 0
        assert await board.purge(older_than=0) == 2
        # Keys work on the upgraded table.
        keyed = await board.post("k", "f", key="order-1")
        assert await board.get_or_post("k", "f", key="order-1") == (keyed, False)
        assert await board.job_count() == 1
    version = await admin.fetchval(
        f"SELECT version FROM \"{schema}\".schema_version WHERE component = 'board'"
    )
    assert version == len(sql.MIGRATIONS) == 9
    indexes = await admin.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = $1", schema)
    assert {"jobs_key", "jobs_ended"} <= {row[0] for row in indexes}


# -- keyed posts --------------------------------------------------------------------------------


@pytest.mark.parametrize("commit", [True, False])
async def test_a_keyed_post_waits_for_a_transaction_posting_the_same_key(
    board: JobBoard, admin: Any, commit: bool
) -> None:
    assert isinstance(board, PostgresJobBoard)
    got: list[Any] = []

    async def post() -> None:
        got.append(await board.get_or_post("j", "f", {"n": 2}, key="order-7"))

    async with _transaction(admin) as end:
        mine = await board.post_in_transaction(admin, "j", "f", {"n": 1}, key="order-7")
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(post)
                await anyio.sleep(0.5)
                assert got == []  # the insert waits for the transaction holding the key
                await end(commit)
    job, created = got[0]
    if commit:
        assert (job.id, created, job.args) == (mine.id, False, {"n": 1})
    else:
        assert created and job.id != mine.id and job.args == {"n": 2}
    assert (await board.get_by_key("order-7")).id == job.id
    assert await board.job_count() == 1


async def test_post_in_transaction_takes_a_key(board: JobBoard, admin: Any) -> None:
    assert isinstance(board, PostgresJobBoard)
    held = await board.post("held", "f", key="held")
    async with admin.transaction():
        assert await board.post_in_transaction(admin, "j", "f", key="held") == held
        first = await board.post_in_transaction(admin, "j", "f", {"n": 1}, key="new")
        assert first.key == "new" and first.state is JobState.UNCLAIMED
        # Written earlier in this same transaction: that job holds the key.
        assert await board.post_in_transaction(admin, "j", "f", {"n": 2}, key="new") == first
        with pytest.raises(JobNotFound):  # not committed yet
            await board.get_by_key("new")
    assert (await board.get_by_key("new")).id == first.id
    with pytest.raises(PayloadError):
        await board.post_in_transaction(admin, "j", "f", key=" padded")
    assert await board.job_count() == 2


async def test_a_holder_purged_before_the_post_reads_it_frees_the_key(
    board: JobBoard, admin: Any
) -> None:
    assert isinstance(board, PostgresJobBoard)
    holder = await _finished(board, key="order-9")
    racing = PurgeOnConflict(admin, lambda: board.purge(older_than=0))
    job = await board.post_in_transaction(racing, "j", "f", {"n": 1}, key="order-9")
    assert racing.fired
    assert job.id != holder.id and job.state is JobState.UNCLAIMED and job.args == {"n": 1}
    assert (await board.get_by_key("order-9")).id == job.id
    assert await board.job_count() == 1

    # The same in a batch: the item whose holder went is posted again, the others as usual.
    holder = await _finished(board, key="order-10")
    specs = [
        post_spec("j", "f", {"n": n}, board.max_payload_bytes, key=key)
        for n, key in enumerate(["order-10", None, "order-9", "order-10"])
    ]
    racing = PurgeOnConflict(admin, lambda: board.purge(older_than=0))
    pairs = await post_many(racing, board._sql, "pg_keys", board.channel, specs)
    posted = [job for job, _ in pairs]
    assert racing.fired
    fresh = posted[0]
    assert fresh.id == specs[0].id != holder.id and fresh.key == "order-10"
    assert posted[1].id == specs[1].id and posted[2].id == job.id and posted[3] == fresh
    assert await board.job_count() == 3


async def test_concurrent_batches_with_overlapping_keys_create_one_job_a_key(
    space: PostgresSpace,
) -> None:
    boards = [open_board(space.board_url("pg_batch")) for _ in range(3)]
    results: list[list[Any]] = []

    async def post(board: JobBoard, n: int) -> None:
        keys = [f"k{(n + i) % 12}" for i in range(8)]
        results.append(await board.post_many("f", [{"n": n}] * 8, keys=keys))

    try:
        for each in boards:
            await each.connect()
        async with anyio.create_task_group() as tg:
            for n in range(12):
                tg.start_soon(post, boards[n % 3], n)
        holders = {job.key: job.id for jobs in results for job in jobs}
        assert len(holders) == 12
        for jobs in results:
            assert all(holders[job.key] == job.id for job in jobs)
        assert await boards[0].job_count() == 12
    finally:
        for each in boards:
            await each.aclose()


# -- purge ----------------------------------------------------------------------------------------


async def test_a_purge_in_progress_blocks_no_claim_and_deletes_each_job_once(
    board: JobBoard, admin: Any, schema: str
) -> None:
    done = await _finished(board, key="gone")
    waiting = await board.post("w", "f")
    counts: list[int] = []

    async def purge_too() -> None:
        counts.append(await board.purge(older_than=0))

    async with _transaction(admin) as commit:
        # A purge of `done`, not committed yet: it holds that row's lock.
        purge = sql.PURGE.replace("{s}", f'"{schema}"')
        assert await admin.fetchval(purge, "pg_keys", [done.id]) == 1
        with anyio.fail_after(2):
            claimed = await board.claim_next("owner")
            other = await board.post("n", "f", key="other")
        assert claimed is not None and claimed[0].id == waiting.id
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(purge_too)
                await anyio.sleep(0.3)
                assert counts == []  # the second purge waits for the row the first deletes
                await commit()
    assert counts == [0]  # then finds it gone: each job is deleted once
    with pytest.raises(JobNotFound):
        await board.get(done.id)
    assert (await board.get(other.id)).key == "other"


async def test_purge_and_keyed_reads_use_their_indexes(admin: Any, schema: str) -> None:
    async with open_board(url(schema)):
        pass
    queries = {
        "jobs_ended": (sql.PURGEABLE, ("default", ["COMPLETE", "TRASHED"], 60.0, 1000)),
        "jobs_key": (sql.BY_KEY, ("default", "order-1")),
    }
    async with admin.transaction():
        # An empty table: forbid the sequential scan to see which index the query can use.
        await admin.execute("SET LOCAL enable_seqscan = off")
        for index, (query, args) in queries.items():
            plan = await admin.fetch("EXPLAIN " + query.replace("{s}", f'"{schema}"'), *args)
            assert index in "\n".join(row[0] for row in plan)
