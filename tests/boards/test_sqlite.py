"""What only the SQLite board promises: durability, several processes on one file, its URL,
its errors and its cancellation safety. The shared semantics are in ``test_conformance.py``."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from aioconductor._backends.sqlite import board_schema
from aioconductor._backends.sqlite import link as sqlite_link
from aioconductor._backends.sqlite.migrations import apply_migrations
from aioconductor.boards import JobBoard, open_board
from aioconductor.boards.sqlite import SqliteJobBoard
from aioconductor.errors import BackendUnavailable, ConfigurationError
from aioconductor.models import JobNotification, JobState, NotificationKind, RetryPolicy


def url(path: Path, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


async def run_script(script: str, *args: str) -> str:
    """Run ``script`` in a separate Python process (another process on the same file)."""
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-c", textwrap.dedent(script), *args],
            stderr=subprocess.STDOUT,
            check=False,
        )
    output = done.stdout.decode()
    assert done.returncode == 0, output
    return output


@contextlib.asynccontextmanager
async def started_stream(board: JobBoard) -> AsyncIterator[AsyncIterator[JobNotification]]:
    """A stream of ``board`` that has made its first sweep (it starts on the first ``anext``)."""
    marker = await board.post("marker", "f")
    async with contextlib.aclosing(board.stream()) as stream:
        iterator = aiter(stream)
        with anyio.fail_after(5):
            first = await anext(iterator)
        assert first.job_id == marker.id and first.kind is NotificationKind.WAITING
        yield iterator


# -- URL and file ---------------------------------------------------------------------------------


def test_url_forms(tmp_path: Path) -> None:
    absolute = open_board(f"sqlite:///{tmp_path}/jobs.db?namespace=app&lease=7")
    assert isinstance(absolute, SqliteJobBoard)
    assert absolute.path == f"{tmp_path}/jobs.db"
    assert absolute.namespace == "app" and absolute.lease == 7.0
    relative = open_board("sqlite:///data/jobs.db")
    assert isinstance(relative, SqliteJobBoard) and relative.path == "data/jobs.db"
    for bad in ("sqlite://", "sqlite:///", "sqlite:///jobs.db?mode=ro"):
        with pytest.raises(ConfigurationError):
            open_board(bad)


async def test_relative_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with open_board("sqlite:///jobs.db") as board:
        await board.post("j", "f")
    assert (tmp_path / "jobs.db").is_file()


async def test_jobs_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with open_board(url(path)) as board:
        waiting = await board.post("waiting", "f", {"n": 1}, priority=3)
        held = await board.post("held", "f")
        done = await board.post("done", "f")
        claim = await board.claim(held.id, "owner-1", lease=60)
        finished = await board.consume(await board.claim(done.id, "owner-1"), result={"ok": 1})
        await board.register_conductor("owner-1", "worker", ttl=60, meta={"slots": 4})
    async with open_board(url(path)) as board:
        assert await board.get(waiting.id) == waiting
        assert (await board.get(held.id)).claim == claim
        assert await board.get(done.id) == finished
        assert [c.meta for c in await board.conductors()] == [{"slots": 4}]
        # The claim taken before the restart is still the current one.
        await board.renew(claim)
        later = await board.post("later", "f")
        assert later.seq > done.seq
        claimed = await board.claim_next("owner-2")
        assert claimed is not None and claimed[0].id == waiting.id


async def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"this is not a database, but it is long enough to have a header" * 10)
    board = open_board(url(path))
    with pytest.raises(BackendUnavailable, match=r"jobs\.db"):
        await board.connect()
    await board.aclose()


async def test_a_missing_directory(tmp_path: Path) -> None:
    board = open_board(url(tmp_path / "missing" / "jobs.db"))
    with pytest.raises(BackendUnavailable, match="missing"):
        await board.connect()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with open_board(url(path)):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE aioc_schema SET version = 99 WHERE component = 'board'")
    conn.close()
    with pytest.raises(ConfigurationError, match="upgrade aioconductor"):
        await open_board(url(path)).connect()


def old_file(path: Path, version: int) -> tuple[str, str]:
    """A board file as schema ``version`` made it, holding a waiting job and a claimed one
    (their ids), written with the columns that version had."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        apply_migrations(conn, "board", board_schema.SCHEMA[:version])
        now = time.time()
        conn.execute("INSERT INTO board_revs (namespace, rev) VALUES ('default', 2)")
        insert = """INSERT INTO jobs (namespace, id, name, flow, args, priority, created_at,
                updated_at, attempts, max_attempts, token, state, owner, expires_at, ready_at, rev)
            VALUES ('default', ?, ?, 'f', ?, 0, ?, ?, ?, 3, ?, ?, ?, ?, ?, ?)"""
        waiting, held = str(uuid.uuid4()), str(uuid.uuid4())
        conn.execute(
            insert, (waiting, "old", '{"a": 1}', now, now, 0, 0, "UNCLAIMED", None, None, now, 1)
        )
        conn.execute(
            insert,
            (held, "held", "{}", now, now, 1, 1, "CLAIMED", "owner-1", now + 60, now + 60, 2),
        )
        conn.execute("COMMIT")
    return waiting, held


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
async def test_an_older_file_is_upgraded_in_place_and_keeps_its_jobs(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / "old.db"
    waiting, held = old_file(path, version)
    policy = RetryPolicy(retries=2)
    async with open_board(url(path)) as board:
        old = await board.get(waiting)
        assert old.args == {"a": 1} and old.headers == {} and old.state is JobState.UNCLAIMED
        assert (old.releases, old.abandons, old.retries, old.retry, old.failures) == (
            0,
            0,
            0,
            None,
            [],
        )
        # A claim taken before the upgrade is still current, and can be given back.
        claim = (await board.get(held)).claim
        assert claim is not None and claim.owner == "owner-1"
        released = await board.release(claim)
        assert (released.attempts, released.releases, released.state) == (0, 1, JobState.UNCLAIMED)
        retried = await board.retry(await board.claim(waiting, "o"), delay=0, failure={"n": 1})
        assert (retried.retries, retried.failures) == (1, [{"n": 1}])
        new = await board.post("new", "f", headers={"h": "v"}, retry=policy)
        assert (await board.get(new.id)).headers == {"h": "v"}
        assert (await board.get(new.id)).retry == policy
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (now_version,) = conn.execute(
            "SELECT version FROM aioc_schema WHERE component = 'board'"
        ).fetchone()
    assert now_version == len(board_schema.SCHEMA) == 7


async def test_the_retry_policy_and_failures_are_json_text_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    policy = RetryPolicy(retries=2, base=0.5)
    async with open_board(url(path)) as board:
        job = await board.post("j", "f", retry=policy)
        await board.retry(await board.claim(job.id, "o"), delay=0, failure={"m": "wörld"})
    with contextlib.closing(sqlite3.connect(path)) as conn:
        retry, failures = conn.execute(
            "SELECT retry, failures FROM jobs WHERE id = ?", (job.id,)
        ).fetchone()
    assert RetryPolicy.model_validate_json(retry) == policy
    assert json.loads(failures) == [{"m": "wörld"}]


async def test_a_release_by_another_board_object_reaches_the_stream(tmp_path: Path) -> None:
    # Swept, not pushed: a job whose first claim was released has no attempts, yet it was
    # claimed, so it comes back as ABANDONED, not as a new post.
    path = tmp_path / "jobs.db"
    async with (
        open_board(url(path, poll_interval=0.05)) as here,
        open_board(url(path)) as there,
    ):
        job = await there.post("j", "f")
        claim = await there.claim(job.id, "owner-1")
        async with started_stream(here) as iterator:
            released = await there.release(claim)
            assert released.attempts == 0
            with anyio.fail_after(2):
                while (note := await anext(iterator)).job_id != job.id:
                    pass
        assert note.kind is NotificationKind.ABANDONED


async def test_a_job_retried_at_once_is_pushed(tmp_path: Path) -> None:
    # A long poll interval: only a push can announce the job in time.
    async with open_board(url(tmp_path / "jobs.db", poll_interval=30)) as board:
        job = await board.post("j", "f")
        claim = await board.claim(job.id, "o")
        async with started_stream(board) as iterator:
            await board.retry(claim, delay=0)
            with anyio.fail_after(2):
                note = await anext(iterator)
        assert (note.job_id, note.kind) == (job.id, NotificationKind.DUE)


async def test_file_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with open_board(url(path)):
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.close()


async def test_a_locked_file_is_backend_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_link, "BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "jobs.db"
    async with open_board(url(path)) as board:
        job = await board.post("j", "f")
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(BackendUnavailable, match="locked"):
                await board.claim(job.id, "owner-1")
            # Readers are not blocked by a writer (WAL).
            assert (await board.get(job.id)).state is JobState.UNCLAIMED
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # The failed call left no transaction behind: the board works again.
        await board.claim(job.id, "owner-1")


# -- several board objects and processes on one file ----------------------------------------------


async def test_two_board_objects_racing_claim_next_take_each_job_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with open_board(url(path)) as a, open_board(url(path)) as b:
        posted = {(await a.post(f"j{i}", "f")).id for i in range(200)}
        taken: list[str] = []

        async def drain(board: JobBoard, owner: str) -> None:
            while (claimed := await board.claim_next(owner)) is not None:
                taken.append(claimed[0].id)

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(drain, a, f"a{i}")
                tg.start_soon(drain, b, f"b{i}")
        assert len(taken) == 200 and set(taken) == posted
        assert [job.attempts async for job in a.iterjobs()] == [1] * 200


CLAIMER = """
import sys, anyio
from aioconductor.boards import JobBoard, open_board

async def main(url, owner):
    async with open_board(url) as board:
        while (claimed := await board.claim_next(owner)) is not None:
            print(claimed[0].id, flush=True)

anyio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_processes_racing_claim_next_take_each_job_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with open_board(url(path)) as board:
        posted = {(await board.post(f"j{i}", "f")).id for i in range(300)}
        outputs: list[str] = []
        taken: list[str] = []

        async def claim_here() -> None:
            while (claimed := await board.claim_next("here")) is not None:
                taken.append(claimed[0].id)

        async def claim_there(owner: str) -> None:
            outputs.append(await run_script(CLAIMER, url(path), owner))

        async with anyio.create_task_group() as tg:
            tg.start_soon(claim_there, "p1")
            tg.start_soon(claim_there, "p2")
            tg.start_soon(claim_here)
        for output in outputs:
            taken.extend(output.split())
        assert sorted(taken) == sorted(posted)
        assert await board.job_count(state=JobState.CLAIMED) == 300


POSTER = """
import sys, anyio
from aioconductor.boards import JobBoard, open_board

async def main(url, count):
    async with open_board(url) as board:
        for i in range(int(count)):
            print((await board.post(f"remote-{i}", "f")).id, flush=True)

anyio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_stream_sees_posts_from_another_process(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with open_board(url(path, poll_interval=0.05)) as board:
        notes: list[JobNotification] = []
        async with started_stream(board) as iterator:
            posted = (await run_script(POSTER, url(path), "5")).split()
            with anyio.fail_after(2):
                while len(notes) < 5:
                    notes.append(await anext(iterator))
        assert [n.job_id for n in notes] == posted
        assert {n.kind for n in notes} == {NotificationKind.POSTED}


async def test_stream_finds_what_another_board_object_did(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with (
        open_board(url(path, poll_interval=0.05)) as here,
        open_board(url(path)) as there,
    ):
        held = await there.post("held", "f")
        expiring = await there.post("expiring", "f")
        held_claim = await there.claim(held.id, "owner-1")
        await there.claim(expiring.id, "owner-1", lease=0.2)
        seen: dict[str, NotificationKind] = {}
        async with started_stream(here) as iterator:
            await there.abandon(held_claim)
            with anyio.fail_after(2):
                while len(seen) < 2:
                    note = await anext(iterator)
                    seen[note.job_id] = note.kind
        assert seen == {held.id: NotificationKind.ABANDONED, expiring.id: NotificationKind.EXPIRED}


async def test_sweeps_do_not_repeat_local_pushes(tmp_path: Path) -> None:
    async with open_board(url(tmp_path / "jobs.db", poll_interval=0.02)) as board:
        notes: list[JobNotification] = []
        async with started_stream(board) as iterator:
            job = await board.post("j", "f")
            notes.append(await anext(iterator))
            await board.release(await board.claim(job.id, "o"))
            notes.append(await anext(iterator))
            await board.retry(await board.claim(job.id, "o"), delay=0)
            notes.append(await anext(iterator))
            with anyio.move_on_after(0.2):  # ten sweeps
                notes.append(await anext(iterator))
        assert [(n.job_id, n.kind) for n in notes] == [
            (job.id, NotificationKind.POSTED),
            (job.id, NotificationKind.ABANDONED),
            (job.id, NotificationKind.DUE),
        ]


# -- cancellation ---------------------------------------------------------------------------------


async def test_a_call_cancelled_in_its_thread_still_commits_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_board(url(tmp_path / "jobs.db")) as board:
        assert isinstance(board, SqliteJobBoard)
        job = await board.post("j", "f")
        link = board._link
        real_call = link._call

        def slow_call(what, fn, conn):
            def slow(conn):
                result = fn(conn)  # the transaction, committed
                time.sleep(0.2)  # the caller is cancelled meanwhile
                return result

            return real_call(what, slow, conn)

        monkeypatch.setattr(link, "_call", slow_call)
        returned = []
        with anyio.move_on_after(0.05) as scope:
            returned.append(await board.claim_next("owner-1"))
            # The cancellation waits for the call in the thread, and lands at the next await.
            await anyio.sleep(5)
        assert scope.cancelled_caught
        assert returned[0] is not None and returned[0][0].id == job.id
        monkeypatch.setattr(link, "_call", real_call)
        assert link._conn is not None and not link._conn.in_transaction
        # The claim was made whole, once; the board works on.
        got = await board.get(job.id)
        assert got.state is JobState.CLAIMED and got.attempts == 1 and got.owner == "owner-1"
        assert await board.claim_next("owner-2") is None


async def test_cancelled_calls_leave_whole_transactions(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with open_board(url(path)) as board:
        assert isinstance(board, SqliteJobBoard)
        posted = [(await board.post(f"j{i}", "f")).id for i in range(100)]
        returned: list[str] = []
        delay = 0.0
        while True:
            # Deadlines that fall before, during and after the call.
            with anyio.move_on_after(delay):
                claimed = await board.claim_next("owner-1")
                if claimed is None:
                    break
                returned.append(claimed[0].id)
            delay = (delay + 0.0001) % 0.002
        assert board._link._conn is not None and not board._link._conn.in_transaction
        jobs = {job.id: job async for job in board.iterjobs()}
        assert all(job.state is JobState.CLAIMED and job.attempts == 1 for job in jobs.values())
        assert set(returned) <= set(posted) == set(jobs)


async def test_close_waits_for_the_call_in_flight(tmp_path: Path) -> None:
    board = open_board(url(tmp_path / "jobs.db"))
    await board.connect()
    results: list[object] = []

    async def post() -> None:
        results.append(await board.post("j", "f"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(post)
        await anyio.lowlevel.checkpoint()  # post() takes the connection
        await board.aclose()
    assert len(results) == 1
    conn = sqlite3.connect(tmp_path / "jobs.db")
    assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (1,)
    conn.close()


async def test_args_are_json_text_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with open_board(url(path)) as board:
        job = await board.post("j", "f", {"name": "wörld", "n": [1, 2]})
    conn = sqlite3.connect(path)
    (args,) = conn.execute("SELECT args FROM jobs WHERE id = ?", (job.id,)).fetchone()
    conn.close()
    assert json.loads(args) == {"name": "wörld", "n": [1, 2]}
