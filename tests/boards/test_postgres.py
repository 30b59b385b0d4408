"""What only the PostgreSQL board must show: identifiers, NUL, SKIP LOCKED, sessions ending
under asyncpg, LISTEN, schema migrations, connection settings.

What every server backend must show (killed connections, restarts, cancelled calls, passwords,
many processes) is in the tests parametrised over ``tests/backends.py``."""

from __future__ import annotations

import contextlib
import functools
import json
import select
import uuid
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]
import pytest

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
    JobNotification,
    JobState,
    NotificationKind,
    RetryPolicy,
)
from aioconductor.persistence import Store, open_store
from tests.backends import PostgresSpace, board_fixture, one_space_fixture
from tests.conftest import POSTGRES_URL
from tests.postgres_helpers import admin, drop_schemas, most_rows, schema, url

__all__ = ["admin", "schema"]  # the fixtures, imported by name

pytestmark = pytest.mark.postgres

space = one_space_fixture("postgres")


@pytest.fixture
def app_name(space: PostgresSpace) -> str:
    """The application_name of the board's connections, so a test can find exactly those."""
    return space.tag


board = board_fixture("pg_board", lease=5.0, poll_interval=0.05)


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


@pytest.mark.parametrize("plans", ["custom", "generic"])
@pytest.mark.parametrize("statistics", ["none", "analysed"])
@pytest.mark.parametrize("statement", ["claim_batch", "claim_next"])
async def test_a_claim_reads_only_the_jobs_it_takes_whatever_the_statistics(
    board: JobBoard, admin: Any, schema: str, statement: str, statistics: str, plans: str
) -> None:
    """A claim walks ``jobs_ready`` in claim order, stops once it has its jobs and updates
    them through the primary key, whether the table has statistics or none yet (a burst
    posted before autovacuum analysed it), in a custom plan or a generic one (asyncpg's
    prepared statements switch after five runs). Told the limit, and guessing from no
    statistics that the namespace held a few dozen ready jobs, the planner fetched and sorted
    every ready job (3,000 here; 45 ms a claim at 100,000); and a generic plan of an analysed
    table expected a tenth of the backlog to be taken and read the whole table to join it."""
    for first in range(0, 3000, 500):
        await board.post_many("f", [{"n": n} for n in range(first, first + 500)])
    if statistics == "analysed":
        await admin.execute(f'ANALYZE "{schema}".jobs')
    query = getattr(sql.BoardStatements(), statement).replace("{s}", f'"{schema}"')
    limit = 64 if statement == "claim_batch" else 1
    types, args = "text, text, float8", [f"'{board.namespace}'", "'owner'", "30"]
    if statement == "claim_batch":
        types, args = f"{types}, integer", [*args, str(limit)]
    await admin.execute(f"PREPARE probed ({types}) AS {query}")
    explain = admin.transaction()  # EXPLAIN ANALYZE claims: rolled back
    await explain.start()
    try:
        await admin.execute(f"SET LOCAL plan_cache_mode = force_{plans}_plan")
        plan = await admin.fetchval(
            f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE probed ({', '.join(args)})"
        )
    finally:
        await explain.rollback()
        await admin.execute("DEALLOCATE probed")
    assert most_rows(json.loads(plan)[0]["Plan"]) == limit
    claimed = await board.claim_batch("owner", 64)
    assert [job.args["n"] for job, _ in claimed] == list(range(64))


# -- recovery -------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6, 7])
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
    assert version == len(sql.MIGRATIONS) == 9


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
