"""What only the PostgreSQL board must show: identifiers, NUL, cancellation, recovery, secrets."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import random
import select
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]
import pytest

from aioconductor import Conductor
from aioconductor._backends.postgres import board_sql as sql
from aioconductor._backends.postgres.schema import migrate
from aioconductor.boards import JobBoard, open_board
from aioconductor.boards.postgres import PostgresJobBoard
from aioconductor.cli import main
from aioconductor.errors import (
    BackendUnavailable,
    ClaimLost,
    ConfigurationError,
    JobNotFound,
    PayloadError,
)
from aioconductor.models import (
    MAX_KEPT_FAILURES,
    Claim,
    JobNotification,
    JobState,
    NotificationKind,
    RetryPolicy,
)
from aioconductor.persistence import Store, open_store
from tests.apps import flows
from tests.conftest import POSTGRES_URL
from tests.postgres_helpers import drop_schemas, require_postgres, unique_schema, url

pytestmark = pytest.mark.postgres

IDLE_OR_LOCKED = """SELECT
    (SELECT count(*) FROM pg_stat_activity
        WHERE application_name = $1 AND state LIKE 'idle in transaction%'),
    (SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
        WHERE a.application_name = $1)"""


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    require_postgres()
    name = unique_schema()
    try:
        yield name
    finally:
        await drop_schemas(name)


@pytest.fixture
def app_name() -> str:
    """An application_name for the board's connections, so a test can find exactly those."""
    return f"aioc_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def admin() -> AsyncIterator[Any]:
    require_postgres()
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def board(schema: str, app_name: str) -> AsyncIterator[JobBoard]:
    board_url = url(schema, "pg_board", application_name=app_name)
    async with open_board(board_url, lease=5.0, poll_interval=0.05) as opened:
        yield opened


async def terminate(admin: Any, app_name: str, *, listeners_only: bool = False) -> int:
    """Terminate the server side of the board's connections; how many were terminated."""
    condition = "AND query LIKE 'LISTEN%'" if listeners_only else ""
    return int(
        await admin.fetchval(
            f"""SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                WHERE application_name = $1 {condition}""",
            app_name,
        )
    )


# -- identifiers and data -------------------------------------------------------------------------

HOSTILE = [
    "x'; DROP TABLE jobs; --",
    'a"b',
    "jobs; DROP SCHEMA public CASCADE",
    "Robert'); DROP TABLE students;--",
    "UPPER",
    "",
    "x" * 64,
]
#: Fine as namespaces, not as schemas.
BAD_SCHEMAS = ["1starts_with_digit", "pg_catalog", "information_schema"]
#: Fine as schemas, not as namespaces (which also name a channel and the default schema).
BAD_NAMESPACES = ["x" * 49]


@pytest.mark.parametrize("name", HOSTILE + BAD_SCHEMAS + BAD_NAMESPACES)
async def test_hostile_schema_and_namespace_names_are_refused(
    board: JobBoard, admin: Any, schema: str, name: str
) -> None:
    job = await board.post("kept", "f")
    schemas_before = await admin.fetch("SELECT nspname FROM pg_namespace ORDER BY 1")
    if name not in BAD_NAMESPACES:
        with pytest.raises(ConfigurationError):
            open_board(url(name, "ns"))
        with pytest.raises(ConfigurationError):
            PostgresJobBoard(driver_url=POSTGRES_URL, schema=name)
        with pytest.raises(ConfigurationError):
            open_store(url(name, "ns"))
    if name not in BAD_SCHEMAS:
        with pytest.raises(ConfigurationError):
            PostgresJobBoard(driver_url=POSTGRES_URL, namespace=name)
        with pytest.raises(ConfigurationError):
            open_board(url(schema, name))
        with pytest.raises(ConfigurationError):
            open_store(url(schema, name))
    before = {row[0] for row in schemas_before}
    after = {row[0] for row in await admin.fetch("SELECT nspname FROM pg_namespace")}
    assert not {nsp for nsp in after if any(c in nsp for c in "'\";")}
    assert (name in after) == (name in before)
    assert {"public", schema} <= after
    assert (await board.get(job.id)).name == "kept"
    assert await admin.fetchval(f'SELECT count(*) FROM "{schema}".jobs') == 1


async def test_user_data_is_data_not_code(board: JobBoard) -> None:
    sneaky = "x'); DROP TABLE jobs; -- $1 \" \\ \n {s} %s"
    job = await board.post(sneaky, sneaky, {sneaky: sneaky})
    claim = await board.claim(job.id, sneaky)
    got = await board.get(job.id)
    assert got.name == sneaky and got.flow == sneaky and got.args == {sneaky: sneaky}
    assert got.claim == claim and claim.owner == sneaky
    await board.trash(claim, reason=sneaky)
    assert (await board.get(job.id)).trash_reason == sneaky


async def test_nul_in_json_is_kept_and_in_names_refused(board: JobBoard) -> None:
    args = {"k\x00ey": "v\x00alue", "nested": ["\x00", {"\x00": 0}]}
    job = await board.post("j", "f", args)
    assert (await board.get(job.id)).args == args
    claim = await board.claim(job.id, "owner")
    done = await board.consume(claim, result={"out": "a\x00b"})
    assert (await board.get(done.id)).result == {"out": "a\x00b"}
    count = await board.job_count()
    for name, flow in (("a\x00b", "f"), ("j", "f\x00")):
        with pytest.raises(PayloadError, match="NUL"):
            await board.post(name, flow)
    assert await board.job_count() == count
    other = await board.post("j", "f")
    with pytest.raises(PayloadError, match="NUL"):
        await board.claim(other.id, "own\x00er")
    with pytest.raises(JobNotFound):
        await board.get("a\x00b")
    stale = claim.model_copy(update={"owner": "x\x00"})
    with pytest.raises(ClaimLost):
        await board.consume(stale)


async def test_args_come_back_exactly_as_posted(board: JobBoard) -> None:
    args = {"zeta": 1, "alpha": 2.0, "huge": 1e300, "tiny": 1e-7, "int": 2**62, "text": "✓"}
    got = (await board.get((await board.post("j", "f", args)).id)).args
    assert got == args and list(got) == list(args)
    assert isinstance(got["alpha"], float) and isinstance(got["huge"], float)


async def test_failures_come_back_exactly_as_given(board: JobBoard) -> None:
    job = await board.post("j", "f")
    failures = [{"zeta": n, "alpha": "a\x00b", "text": "✓", "huge": 1e300} for n in range(7)]
    for failure in failures:
        retried = await board.retry(await board.claim(job.id, "o"), delay=0, failure=failure)
    kept = failures[-MAX_KEPT_FAILURES:]
    for got in (retried.failures, (await board.get(job.id)).failures):
        assert got == kept and [list(f) for f in got] == [list(f) for f in kept]


# -- claims -------------------------------------------------------------------------------------


async def test_claim_next_skips_a_locked_job_without_waiting(
    board: JobBoard, admin: Any, schema: str
) -> None:
    first = await board.post("first", "f", priority=5)
    second = await board.post("second", "f")
    async with admin.transaction():
        await admin.execute(f'SELECT 1 FROM "{schema}".jobs WHERE id = $1 FOR UPDATE', first.id)
        with anyio.fail_after(2):
            claimed = await board.claim_next("owner")
    assert claimed is not None and claimed[0].id == second.id
    claimed = await board.claim_next("owner")
    assert claimed is not None and claimed[0].id == first.id


async def test_claim_next_reads_the_partial_index(board: JobBoard, admin: Any, schema: str) -> None:
    plan = await admin.fetch(
        f"""EXPLAIN SELECT seq FROM "{schema}".jobs WHERE namespace = 'x'
            AND ready_at IS NOT NULL AND (state = 'UNCLAIMED' OR ready_at <= 0)
            ORDER BY priority DESC, seq LIMIT 1 FOR UPDATE SKIP LOCKED"""
    )
    assert "jobs_ready" in "\n".join(row[0] for row in plan)


# -- cancellation ---------------------------------------------------------------------------------


async def test_cancelled_calls_leave_no_transaction_open_and_no_lock(
    board: JobBoard, admin: Any, app_name: str
) -> None:
    for i in range(40):
        await board.post(f"j{i}", "f", {"pad": "x" * 20_000})
    rng = random.Random(6)
    interrupted = 0
    claims: list[Claim] = []
    for _ in range(400):
        # Deadlines within a call's span (well under a millisecond on loopback), so that many
        # land before, while and after the statement runs.
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
    with anyio.fail_after(5):
        while True:
            idle, locks = await admin.fetchrow(IDLE_OR_LOCKED, app_name)
            if idle == 0 and locks == 0:
                break
            await anyio.sleep(0.05)
    # Every job is still whole: finished, or claimable again once its lease ran out.
    await anyio.sleep(0.1)
    states = {job.state async for job in board.iterjobs()}
    assert states <= {JobState.UNCLAIMED, JobState.CLAIMED, JobState.COMPLETE}
    while (claimed := await board.claim_next("finisher")) is not None:
        await board.consume(claimed[1])
    assert await board.job_count(state=JobState.COMPLETE) == 40


async def test_a_conductor_cancelled_as_it_starts_leaves_no_noise_and_no_connection(
    schema: str, admin: Any, app_name: str
) -> None:
    """Cancelled within its first 30 ms, a conductor is often cut in the middle of opening a
    connection (the pools' and the listener's): nothing of it may reach the event loop's
    exception handler ("Future exception was never retrieved"), and no connection may stay."""
    shared = url(schema, "pg_cancel", application_name=app_name)
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
        while await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app_name
        ):
            await anyio.sleep(0.05)


# -- recovery -------------------------------------------------------------------------------------


async def test_terminated_connections_lose_no_job_and_consume_none_twice(
    board: JobBoard, admin: Any, app_name: str
) -> None:
    posted = {(await board.post(f"j{i}", "f")).id for i in range(300)}
    consumed: list[str] = []

    async def work() -> None:
        while True:
            try:
                claimed = await board.claim_next("worker", lease=0.3)
                if claimed is None:
                    if await board.job_count(state=JobState.COMPLETE) == len(posted):
                        return
                    # A claim or consume whose reply was lost: its lease expires, then the
                    # job is claimed again (or it was consumed after all).
                    await anyio.sleep(0.05)
                    continue
                await board.consume(claimed[1])
                consumed.append(claimed[0].id)
            except (BackendUnavailable, ClaimLost):
                await anyio.sleep(0.01)  # terminated mid-statement: the next call reconnects

    terminated = 0

    async def kill() -> None:
        nonlocal terminated
        while True:
            await anyio.sleep(0.03)
            terminated += await terminate(admin, app_name)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(kill)
            await work()
            tg.cancel_scope.cancel()
    assert terminated >= 3
    assert len(consumed) == len(set(consumed))
    assert set(consumed) <= posted
    assert {job.state async for job in board.iterjobs()} == {JobState.COMPLETE}
    assert await board.job_count() == len(posted)


async def test_a_transition_whose_session_ends_after_its_reply_succeeds(
    board: JobBoard, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server ends the session after a claim's reply, before the connection is back in the
    pool. asyncpg's reset on the way back then fails ("cannot switch to state 15; another
    operation (2) is in progress": it read the server's FATAL message while idle); the claim
    committed, so it must not be reported as failed (the conductor would lose the job until its
    lease ran out, and a store write would be retried against a token it had already bumped).
    """
    assert isinstance(board, PostgresJobBoard)
    link = board._link
    call = link.call
    ended: list[int] = []

    async def die_after(conn: Any, fn: Any) -> Any:
        result = await fn(conn)
        pid = conn.get_server_pid()
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        ended.append(pid)
        # Block the event loop until the server's goodbye has reached the socket, so asyncpg
        # has not seen it yet when the connection is released.
        sock = conn._transport.get_extra_info("socket")
        readable, _, _ = select.select([sock], [], [], 5)
        assert readable
        return result

    async def dying_call(what: str, fn: Any) -> Any:
        return await call(what, functools.partial(die_after, fn=fn))

    job = await board.post("j", "f")
    monkeypatch.setattr(link, "call", dying_call)
    claim = await board.claim(job.id, "me", lease=30)  # no BackendUnavailable
    monkeypatch.undo()
    assert ended
    assert (await board.get(job.id)).claim == claim
    # The pool replaced the dead connection.
    assert (await board.consume(claim)).state is JobState.COMPLETE


async def test_asyncpg_errors_of_an_ended_session_are_described_plainly(board: JobBoard) -> None:
    assert isinstance(board, PostgresJobBoard)
    link = board._link
    idle = asyncpg.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    )
    with pytest.raises(
        BackendUnavailable, match="abandon failed: the server had ended the session"
    ):
        with link.translate("abandon"):
            raise idle
    with pytest.raises(BackendUnavailable, match="save failed: connection was closed in the mid"):
        with link.translate("save"):
            try:
                raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")
            except asyncpg.ConnectionDoesNotExistError:
                raise asyncpg.InterfaceError(
                    "cannot call Transaction.__aexit__(): the underlying connection is closed"
                ) from None


async def test_stream_recovers_when_its_listener_is_terminated(
    board: JobBoard, admin: Any, app_name: str
) -> None:
    async with contextlib.aclosing(board.stream()) as stream:
        iterator = aiter(stream)
        first = await board.post("before", "f")
        with anyio.fail_after(5):
            assert (await anext(iterator)).job_id == first.id
        assert await terminate(admin, app_name, listeners_only=True) == 1
        # Posted while the listener is down: only the re-read after reconnecting finds it.
        missed = await board.post("during", "f")
        seen: list[JobNotification] = []
        with anyio.fail_after(10):
            while missed.id not in {note.job_id for note in seen}:
                seen.append(await anext(iterator))
        after = await board.post("after", "f")
        with anyio.fail_after(5):
            while after.id not in {note.job_id for note in seen}:
                seen.append(await anext(iterator))


async def test_a_release_and_a_retry_due_at_once_are_pushed_to_every_board(
    board: JobBoard, schema: str
) -> None:
    """Another process's board hears them by LISTEN, long before its next sweep."""
    marker = await board.post("marker", "f")
    jobs = [await board.post(name, "f") for name in ("released", "retried")]
    # Long leases: the other board sweeps when the earliest one ends, and must not before.
    claims = [await board.claim(job.id, "o", lease=600) for job in jobs]
    async with (
        open_board(url(schema, "pg_board"), poll_interval=60) as other,
        contextlib.aclosing(other.stream()) as stream,
    ):
        iterator = aiter(stream)
        with anyio.fail_after(5):
            assert (await anext(iterator)).job_id == marker.id  # listening from here on
            await board.release(claims[0])
            note = await anext(iterator)
            assert (note.job_id, note.kind) == (jobs[0].id, NotificationKind.ABANDONED)
            await board.retry(claims[1], delay=0)
            note = await anext(iterator)
            assert (note.job_id, note.kind) == (jobs[1].id, NotificationKind.DUE)


# -- schema ---------------------------------------------------------------------------------------


async def test_concurrent_connects_to_a_fresh_schema_all_succeed(schema: str, admin: Any) -> None:
    boards = [open_board(url(schema, f"ns_{i % 3}")) for i in range(6)]
    stores = [open_store(url(schema, f"ns_{i}")) for i in range(3)]
    resources: list[JobBoard | Store] = [*boards, *stores]
    try:
        async with anyio.create_task_group() as tg:
            for resource in resources:
                tg.start_soon(resource.connect)
        versions = await admin.fetch(
            f'SELECT component, version FROM "{schema}".schema_version ORDER BY 1'
        )
        assert [tuple(row) for row in versions] == [("board", len(sql.MIGRATIONS)), ("store", 1)]
        job = await boards[0].post("j", "f")
        assert (await boards[3].get(job.id)).id == job.id
    finally:
        for resource in resources:
            await resource.aclose()
    # Connecting again migrates nothing and changes nothing.
    async with open_board(url(schema, "ns_0")) as again:
        assert await again.job_count() == 1


async def test_each_namespace_has_a_schema_of_its_own(admin: Any) -> None:
    namespaces = [f"t{uuid.uuid4().hex[:12]}" for _ in range(2)]
    try:
        async with (
            open_board(f"{POSTGRES_URL}?namespace={namespaces[0]}") as first,
            open_store(f"{POSTGRES_URL}?namespace={namespaces[0]}") as store,
            open_board(f"{POSTGRES_URL}?namespace={namespaces[1]}") as second,
        ):
            assert isinstance(first, PostgresJobBoard)
            assert first.schema == f"aioc_{namespaces[0]}" == store.schema  # type: ignore[attr-defined]
            job = await first.post("j", "f")
            with pytest.raises(JobNotFound):
                await second.get(job.id)
            for ns in namespaces:
                tables = await admin.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = $1", f"aioc_{ns}"
                )
                assert "jobs" in {row[0] for row in tables}
            counted = await admin.fetchval(f'SELECT count(*) FROM "aioc_{namespaces[0]}".jobs')
            assert counted == 1
    finally:
        await drop_schemas(*(f"aioc_{ns}" for ns in namespaces))


async def test_a_job_posted_in_a_transaction_exists_only_if_it_commits(
    board: JobBoard, admin: Any
) -> None:
    assert isinstance(board, PostgresJobBoard)
    with pytest.raises(ZeroDivisionError):
        async with admin.transaction():
            rolled_back = await board.post_in_transaction(admin, "ship", "f", {"order": 1})
            assert rolled_back.state is JobState.UNCLAIMED
            with pytest.raises(JobNotFound):  # not visible outside the transaction yet
                await board.get(rolled_back.id)
            raise ZeroDivisionError  # the application's transaction fails
    with pytest.raises(JobNotFound):
        await board.get(rolled_back.id)

    notes: list[JobNotification] = []

    async def listen(task_status: Any) -> None:
        async with contextlib.aclosing(board.stream()) as stream:
            task_status.started()
            async for note in stream:
                notes.append(note)
                return

    async with anyio.create_task_group() as tg:
        await tg.start(listen)
        async with admin.transaction():
            kept = await board.post_in_transaction(
                admin, "ship", "f", {"order": 3}, priority=4, retry=RetryPolicy(retries=2)
            )
            await anyio.sleep(0.2)
            assert notes == []  # announced on commit, not before
        with anyio.fail_after(5):
            while not notes:
                await anyio.sleep(0.01)
    assert [note.job_id for note in notes] == [kept.id]  # nothing of the rolled-back post
    got = await board.get(kept.id)
    assert got.args == {"order": 3} and got.priority == 4 and got.retry == RetryPolicy(retries=2)
    with pytest.raises(PayloadError):
        await board.post_in_transaction(admin, "", "f")


async def old_schema(admin: Any, schema: str, version: int) -> tuple[str, str]:
    """A board schema as ``version`` made it (the library's first ``version`` migrations),
    holding a waiting job and a claimed one (their ids), written with the columns it had."""
    await migrate(
        admin,
        schema=schema,
        url=POSTGRES_URL,
        component="board",
        migrations=sql.MIGRATIONS[:version],
    )
    now = await admin.fetchval(sql.NOW_QUERY)
    insert = f"""INSERT INTO "{schema}".jobs (namespace, id, name, flow, args, priority,
            created_at, updated_at, attempts, max_attempts, token, state, owner, expires_at,
            ready_at)
        VALUES ('default', $1, $2, 'f', $3::json, 0, $4, $4, $5::integer, 3, $5::integer, $6,
            $7, $8, $9)"""
    waiting, held = str(uuid.uuid4()), str(uuid.uuid4())
    await admin.execute(insert, waiting, "old", '{"a": 1}', now, 0, "UNCLAIMED", None, None, now)
    await admin.execute(
        insert, held, "held", "{}", now, 1, "CLAIMED", "owner-1", now + 60, now + 60
    )
    return waiting, held


@pytest.mark.parametrize("version", [1, 2])
async def test_an_older_schema_is_upgraded_in_place_and_keeps_its_jobs(
    schema: str, admin: Any, version: int
) -> None:
    waiting, held = await old_schema(admin, schema, version)
    policy = RetryPolicy(retries=2)
    async with open_board(url(schema)) as board:
        old = await board.get(waiting)
        assert old.args == {"a": 1} and old.headers == {}
        assert (old.releases, old.abandons, old.retries, old.retry, old.failures) == (
            0,
            0,
            0,
            None,
            [],
        )
        # The claim taken before the upgrade still holds, and the new verbs work on old jobs.
        claim = (await board.get(held)).claim
        assert claim is not None and claim.owner == "owner-1" and claim.token == 1
        retried = await board.retry(claim, delay=0, failure={"message": "boom"})
        assert (retried.attempts, retried.retries, retried.failures) == (
            0,
            1,
            [{"message": "boom"}],
        )
        released = await board.release(await board.claim(waiting, "o"))
        assert (released.attempts, released.releases, released.state) == (0, 1, JobState.UNCLAIMED)
        new = await board.post("new", "f", headers={"h": "v"}, retry=policy)
        got = await board.get(new.id)
        assert got.headers == {"h": "v"} and got.retry == policy
    version = await admin.fetchval(
        f"SELECT version FROM \"{schema}\".schema_version WHERE component = 'board'"
    )
    assert version == len(sql.MIGRATIONS) == 3


async def test_aioconductor_migrate_upgrades_an_older_schema_in_place(
    schema: str, admin: Any
) -> None:
    waiting, held = await old_schema(admin, schema, 2)
    status = await anyio.to_thread.run_sync(main, ["migrate", "--board", url(schema)])
    assert status == 0
    version = await admin.fetchval(
        f"SELECT version FROM \"{schema}\".schema_version WHERE component = 'board'"
    )
    assert version == len(sql.MIGRATIONS)
    # Upgraded before any board of this version connected: the board only reads.
    async with open_board(url(schema)) as board:
        jobs = {job.id: job async for job in board.iterjobs()}
    assert set(jobs) == {waiting, held}
    assert all(job.failures == [] and job.retry is None for job in jobs.values())
    assert jobs[held].claim is not None and jobs[held].attempts == 1


async def test_a_schema_newer_than_the_library_is_refused(schema: str, admin: Any) -> None:
    async with open_board(url(schema)):
        pass
    await admin.execute(
        f"UPDATE \"{schema}\".schema_version SET version = 99 WHERE component = 'board'"
    )
    with pytest.raises(ConfigurationError, match="newer"):
        async with open_board(url(schema)):
            pass


# -- connections, secrets -------------------------------------------------------------------------


async def test_connections_carry_the_library_settings(
    board: JobBoard, admin: Any, app_name: str
) -> None:
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", app_name
    )
    assert rows
    assert isinstance(board, PostgresJobBoard)
    async with board._link.acquire("test") as conn:
        assert await conn.fetchval("SHOW statement_timeout") == "30s"
        assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "1min"


async def test_url_options_reach_the_pool_and_the_server(schema: str) -> None:
    board_url = url(schema, pool_min="2", pool_max="3", statement_timeout="1234")
    async with open_board(board_url) as board:
        assert isinstance(board, PostgresJobBoard)
        assert (board._link.pool_min, board._link.pool_max) == (2, 3)
        async with board._link.acquire("test") as conn:
            assert await conn.fetchval("SHOW statement_timeout") == "1234ms"
    for bad in ({"pool_min": "0"}, {"pool_min": "4", "pool_max": "2"}, {"pool_max": "x"}):
        with pytest.raises(ConfigurationError):
            open_board(url(schema, **bad))


async def test_sslmode_is_passed_to_asyncpg(schema: str, admin: Any) -> None:
    app = f"aioc_ssl_{uuid.uuid4().hex[:8]}"
    board = open_board(url(schema, sslmode="require", application_name=app))
    if await admin.fetchval("SHOW ssl") != "on":
        # A server without TLS refuses a client that requires it.
        with pytest.raises(BackendUnavailable):
            await board.connect()
        return
    async with board:
        used = await admin.fetch(
            """SELECT s.ssl FROM pg_stat_ssl AS s JOIN pg_stat_activity AS a ON a.pid = s.pid
                WHERE a.application_name = $1""",
            app,
        )
    assert used and all(row[0] for row in used)


SECRET = "s3cr3t-pa55word"


async def test_the_password_never_shows(caplog: pytest.LogCaptureFixture, schema: str) -> None:
    caplog.set_level(logging.DEBUG)
    board = open_board(f"postgresql://alice:{SECRET}@127.0.0.1:1/test?namespace=secret")
    assert SECRET not in repr(board) and "***" in repr(board)
    with pytest.raises(BackendUnavailable) as caught:
        await board.connect()
    chain: list[BaseException] = []
    error: BaseException | None = caught.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for error in chain:
        assert SECRET not in str(error) and SECRET not in repr(error)
    assert "127.0.0.1:1" in str(caught.value)
    # Trust authentication ignores the password, so this one connects.
    with_password = url(schema).replace(
        "postgresql://postgres@", f"postgresql://postgres:{SECRET}@"
    )
    async with open_board(with_password) as connected:
        assert SECRET not in repr(connected)
        with pytest.raises(JobNotFound) as missing:
            await connected.get("nope")
        assert SECRET not in str(missing.value)
    assert SECRET not in caplog.text


# -- many processes -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_eight_processes_consume_each_of_5000_jobs_once(
    board: JobBoard, schema: str, tmp_path: Path
) -> None:
    total = 5000
    posted = {(await board.post(f"j{i}", "f", {"i": i})).id for i in range(total)}
    board_url = url(schema, "pg_board")
    outs = [tmp_path / f"worker-{n}.txt" for n in range(8)]
    repo = Path(__file__).resolve().parents[2]
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for n, out in enumerate(outs):
                command = [sys.executable, "-m", "tests.board_drainer", board_url, f"w{n}"]
                tg.start_soon(
                    functools.partial(anyio.run_process, [*command, str(out), str(total)], cwd=repo)
                )
    consumed = [line for out in outs for line in out.read_text().splitlines()]
    assert len(consumed) == total and set(consumed) == posted
    assert sum(1 for out in outs if out.read_text()) > 1  # the work was shared
    assert await board.job_count(state=JobState.COMPLETE) == total
