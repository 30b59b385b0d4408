"""Schedule ticks on the PostgreSQL board, beyond the conformance suite: the upgrade from schema
version 4, a tick that waits for a transaction holding its schedule's row, a call retried after
a lost reply, a holder purged inside the tick's transaction, and a cancelled tick."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

from aioconductor._backends.postgres import board_sql as sql
from aioconductor._backends.postgres.posting import post_tick
from aioconductor._backends.postgres.schema import migrate
from aioconductor.boards import JobBoard, open_board
from aioconductor.boards._posting import post_spec
from aioconductor.boards._ticking import tick_key
from aioconductor.boards.postgres import PostgresJobBoard
from aioconductor.models import JobState, Outcome
from tests.backends import board_fixture, one_space_fixture
from tests.conftest import POSTGRES_URL
from tests.postgres_helpers import PurgeOnConflict, admin, schema, url

__all__ = ["admin", "schema"]  # the fixtures, imported by name

pytestmark = pytest.mark.postgres

space = one_space_fixture("postgres")
board = board_fixture("pg_ticks", lease=5.0, poll_interval=0.05)

#: 2026-01-01T00:00:00Z
T0 = 1_767_225_600.0


@contextlib.asynccontextmanager
async def _holding(
    admin: Any, board: PostgresJobBoard, schedule: str, tick: float
) -> AsyncIterator[Callable[..., Awaitable[None]]]:
    """A transaction on ``admin`` that moved ``schedule``'s last tick to ``tick`` (so it holds
    the schedule's row) and that the test ends itself: ``await end()`` commits,
    ``await end(False)`` rolls back; rolled back if not ended."""
    transaction = admin.transaction()
    await transaction.start()
    ended = False

    async def end(commit: bool = True) -> None:
        nonlocal ended
        ended = True
        await (transaction.commit() if commit else transaction.rollback())

    try:
        advanced, _ = await admin.fetchrow(board._sql.tick, "pg_ticks", schedule, tick, "none")
        assert advanced
        yield end
    finally:
        if not ended:
            await transaction.rollback()


# -- the upgrade from version 4 ---------------------------------------------------------------


async def test_a_version_4_schema_is_upgraded_and_its_keyed_jobs_meet_ticks(
    schema: str, admin: Any
) -> None:
    await migrate(
        admin, schema=schema, url=POSTGRES_URL, component="board", migrations=sql.MIGRATIONS[:4]
    )
    now = await admin.fetchval(sql.NOW_QUERY)
    held = str(uuid.uuid4())
    await admin.execute(
        f"""INSERT INTO "{schema}".jobs (namespace, id, name, flow, args, priority, created_at,
            updated_at, max_attempts, state, ready_at, job_key)
        VALUES ('default', $1, 'by-hand', 'f', '{{}}', 0, $2, $2, 3, 'UNCLAIMED', $2, $3)""",
        held,
        now,
        tick_key("nightly", T0),
    )
    async with open_board(url(schema)) as board:
        assert await board.schedule_ticks() == {}
        # The job written before the upgrade holds the tick's key: it is the tick's job.
        got = await board.post_tick("nightly", T0, "report", "f")
        assert got is not None and got.id == held and got.name == "by-hand"
        assert await board.post_tick("nightly", T0, "report", "f") is None
        later = await board.post_tick("nightly", T0 + 86400, "report", "f")
        assert later is not None and later.state is JobState.UNCLAIMED
        assert await board.schedule_ticks() == {"nightly": T0 + 86400}
        assert await board.job_count() == 2
    version = await admin.fetchval(
        f"SELECT version FROM \"{schema}\".schema_version WHERE component = 'board'"
    )
    assert version == len(sql.MIGRATIONS) == 9
    tables = await admin.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
    assert "schedule_ticks" in {row[0] for row in tables}


# -- concurrency ------------------------------------------------------------------------------


@pytest.mark.parametrize("commit", [True, False])
async def test_a_tick_waits_for_a_transaction_moving_its_schedule(
    board: JobBoard, admin: Any, commit: bool
) -> None:
    assert isinstance(board, PostgresJobBoard)
    got: list[Any] = []

    async def tick(at: float) -> None:
        got.append((at, await board.post_tick("s", at, "j", "f")))

    async with _holding(admin, board, "s", T0) as end:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(tick, T0)
                tg.start_soon(tick, T0 + 60)
                await anyio.sleep(0.5)
                assert got == []  # both wait for the row the transaction holds
                await end(commit)
    posted = {at: job for at, job in got}
    # The later tick re-checks the committed row and posts; the same tick posts only if the
    # transaction that took it rolled back (and then only if it went before the later one).
    assert posted[T0 + 60] is not None and posted[T0 + 60].not_before == T0 + 60
    if commit:
        assert posted[T0] is None
    assert await board.schedule_ticks() == {"s": T0 + 60}
    assert await board.job_count() == sum(job is not None for job in posted.values())


async def test_other_schedules_do_not_wait(board: JobBoard, admin: Any) -> None:
    assert isinstance(board, PostgresJobBoard)
    async with _holding(admin, board, "s", T0):
        with anyio.fail_after(2):
            assert await board.post_tick("other", T0, "j", "f") is not None
    assert await board.schedule_ticks() == {"other": T0}


async def test_a_cancelled_tick_leaves_no_lock_and_no_trace(board: JobBoard, admin: Any) -> None:
    assert isinstance(board, PostgresJobBoard)
    async with _holding(admin, board, "s", T0 - 60) as end:
        with anyio.move_on_after(0.3) as scope:
            await board.post_tick("s", T0, "j", "f")
        assert scope.cancelled_caught
        await end(False)
    with anyio.fail_after(5):
        job = await board.post_tick("s", T0, "j", "f")
    assert job is not None and await board.job_count() == 1
    assert await board.schedule_ticks() == {"s": T0}


# -- retries and races inside the transaction ---------------------------------------------------


async def test_a_tick_retried_after_a_lost_reply_returns_the_job_it_posted(
    board: JobBoard, admin: Any
) -> None:
    assert isinstance(board, PostgresJobBoard)
    spec = post_spec("j", "f", {}, board.max_payload_bytes, key=tick_key("s", T0), not_before=T0)
    first = await post_tick(admin, board._sql, "pg_ticks", board.channel, "s", T0, spec)
    assert first is not None
    # The same call again (its reply lost): its own job, not a second one, nor None.
    again = await post_tick(admin, board._sql, "pg_ticks", board.channel, "s", T0, spec)
    assert again is not None and again[0] == first[0]
    # Another caller of the same tick posts nothing.
    other = post_spec("j", "f", {}, board.max_payload_bytes, key=tick_key("s", T0), not_before=T0)
    assert await post_tick(admin, board._sql, "pg_ticks", board.channel, "s", T0, other) is None
    assert await board.job_count() == 1


async def test_a_holder_purged_inside_the_tick_frees_the_key_for_the_tick(
    board: JobBoard, admin: Any
) -> None:
    assert isinstance(board, PostgresJobBoard)
    holder = await board.post("by-hand", "f", key=tick_key("s", T0))
    await board.consume(await board.claim(holder.id, "owner-1"), outcome=Outcome.SUCCESS)
    racing = PurgeOnConflict(admin, lambda: board.purge(older_than=0))
    spec = post_spec("j", "f", {}, board.max_payload_bytes, key=tick_key("s", T0), not_before=T0)
    posted = await post_tick(racing, board._sql, "pg_ticks", board.channel, "s", T0, spec)
    assert racing.fired and posted is not None
    job = posted[0]
    assert job.id == spec.id != holder.id and job.key == tick_key("s", T0)
    assert (await board.get_by_key(tick_key("s", T0))).id == job.id
    assert await board.schedule_ticks() == {"s": T0}
    assert await board.job_count() == 1
