"""Schedule ticks on the SQLite board, beyond the conformance suite: the upgrade of files written
before ticks existed, ticks across processes, where the last tick lives in the file, and a post
that fails or cannot take the lock leaving the last tick as it was."""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from pathlib import Path

import anyio
import pytest

from aioconductor._backends.sqlite import board_schema, posting
from aioconductor._backends.sqlite import link as sqlite_link
from aioconductor.boards import open_board
from aioconductor.errors import BackendUnavailable, JobNotFound
from aioconductor.models import JobState, NotificationKind
from tests.boards.test_sqlite import old_file, run_script, started_stream, url

#: 2026-01-01T00:00:00Z
T0 = 1_767_225_600.0
KEY = "schedule:s:2026-01-01T00:00:00Z"


def add_keyed(path: Path, key: str) -> str:
    """Add an UNCLAIMED job holding ``key``, as schema 4 wrote it (its id)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        now = time.time()
        job_id = str(uuid.uuid4())
        conn.execute(
            """INSERT INTO jobs (namespace, id, name, flow, args, priority, created_at,
                updated_at, max_attempts, state, ready_at, rev, job_key)
            VALUES ('default', ?, 'by-hand', 'f', '{}', 0, ?, ?, 3, 'UNCLAIMED', ?, 3, ?)""",
            (job_id, now, now, now, key),
        )
        conn.execute("UPDATE board_revs SET rev = 3 WHERE namespace = 'default'")
        conn.execute("COMMIT")
    return job_id


async def test_a_file_of_schema_4_gets_ticks_and_its_jobs_read_run_and_purge(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v4.db"
    waiting, held = old_file(path, 4)
    keyed = add_keyed(path, KEY)
    async with open_board(url(path)) as board:
        assert await board.schedule_ticks() == {}
        assert (await board.get(waiting)).args == {"a": 1}
        # A job keyed before the upgrade holds its tick's key: it is the tick's job.
        got = await board.post_tick("s", T0, "j", "f")
        assert got is not None and got.id == keyed
        assert await board.schedule_ticks() == {"s": T0}
        later = await board.post_tick("s", T0 + 60, "j", "f")
        assert later is not None and later.state is JobState.UNCLAIMED
        # The jobs of before run on, and purge; the last tick stays.
        claim = (await board.get(held)).claim
        assert claim is not None
        await board.consume(claim)
        for job_id in (waiting, keyed, later.id):
            await board.consume(await board.claim(job_id, "owner-2"))
        assert await board.purge(older_than=0) == 4
        assert await board.job_count() == 0
        assert await board.post_tick("s", T0 + 60, "j", "f") is None
        assert await board.schedule_ticks() == {"s": T0 + 60}
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (version,) = conn.execute(
            "SELECT version FROM aioc_schema WHERE component = 'board'"
        ).fetchone()
    assert version == len(board_schema.SCHEMA) == 7


async def test_the_last_ticks_are_rows_of_their_own_that_purges_keep(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with (
        open_board(url(path)) as board,
        open_board(url(path, namespace="other")) as other,
    ):
        job = await board.post_tick("s", T0, "j", "f")
        assert job is not None
        assert await other.post_tick("s", T0 + 60, "j", "f") is not None
        await board.consume(await board.claim(job.id, "o"))
        assert await board.purge(older_than=0) == 1
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT namespace, name, last_tick FROM schedule_ticks ORDER BY namespace"
        ).fetchall()
        (jobs,) = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
    assert rows == [("default", "s", T0), ("other", "s", T0 + 60)]
    assert jobs == 1


TICKER = """
import sys, anyio
from aioconductor.boards import open_board

async def main(url, t0):
    async with open_board(url) as board:
        for n in range(5):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(tick, board, t0 + 60 * n)

async def tick(board, at):
    job = await board.post_tick("every", at, "j", "f")
    print(None if job is None else job.id, flush=True)

anyio.run(main, sys.argv[1], float(sys.argv[2]))
"""


async def test_processes_ticking_one_schedule_post_each_tick_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with open_board(url(path)) as board:
        await board.connect()
        outputs = await run_scripts(TICKER, url(path), str(T0), count=3)
        posted = [line for line in outputs.split() if line != "None"]
        assert len(outputs.split()) == 60
        # Ticks only move forward, so a tick may be skipped by a later one, never posted twice.
        assert 1 <= len(posted) <= 5 and len(set(posted)) == len(posted)
        assert await board.job_count() == len(posted)
        assert await board.schedule_ticks() == {"every": T0 + 240}
        # The latest tick is always posted: whoever advanced to it posted it.
        last = await board.get_by_key("schedule:every:2026-01-01T00:04:00Z")
        assert last.id in posted and last.not_before == T0 + 240


async def run_scripts(script: str, *args: str, count: int) -> str:
    """Run ``count`` processes of ``script`` at once; their outputs, joined."""
    outputs: list[str] = []

    async def one() -> None:
        outputs.append(await run_script(script, *args))

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(one)
    return "".join(outputs)


async def test_a_tick_due_now_is_pushed_to_the_stream(tmp_path: Path) -> None:
    async with open_board(url(tmp_path / "jobs.db")) as board:
        async with started_stream(board) as iterator:
            job = await board.post_tick("s", T0, "j", "f")
            assert job is not None and job.state is JobState.UNCLAIMED
            with anyio.fail_after(2):
                note = await anext(iterator)
        assert (note.job_id, note.kind) == (job.id, NotificationKind.POSTED)


async def test_a_post_that_fails_leaves_the_last_tick_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_error(*args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    async with open_board(url(tmp_path / "jobs.db")) as board:
        assert await board.post_tick("s", T0, "j", "f") is not None
        with monkeypatch.context() as patched:
            patched.setattr(posting, "write_posts", disk_error)
            with pytest.raises(BackendUnavailable, match="disk I/O error"):
                await board.post_tick("s", T0 + 60, "j", "f")
        assert await board.schedule_ticks() == {"s": T0}
        assert await board.job_count() == 1
        assert await board.post_tick("s", T0 + 60, "j", "f") is not None


async def test_a_locked_file_fails_a_tick_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_link, "BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "jobs.db"
    async with open_board(url(path)) as board:
        await board.connect()
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(BackendUnavailable, match="locked"):
                await board.post_tick("s", T0, "j", "f")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await board.schedule_ticks() == {}
        with pytest.raises(JobNotFound):
            await board.get_by_key(KEY)
        assert await board.post_tick("s", T0, "j", "f") is not None
