"""Keys and retention on the SQLite board, beyond the conformance suite: the upgrade of files
written before keys existed, keys across processes, the query plans that keep purges cheap,
streams across purges, and errors."""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from pathlib import Path

import anyio
import pytest

from aioconductor._backends.sqlite import board_schema
from aioconductor._backends.sqlite import link as sqlite_link
from aioconductor._backends.sqlite.migrations import apply_migrations
from aioconductor.boards import open_board
from aioconductor.errors import BackendUnavailable, JobNotFound
from aioconductor.models import JobNotification, JobState, NotificationKind, Outcome
from tests.boards.test_sqlite import old_file, run_script, started_stream, url


def add_finished(path: Path, ended_ago: float) -> tuple[str, str]:
    """Add a COMPLETE and a TRASHED job, as schema 3 wrote them, that ended ``ended_ago``
    seconds ago (their ids)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        ended = time.time() - ended_ago
        insert = """INSERT INTO jobs (namespace, id, name, flow, args, priority, created_at,
                updated_at, attempts, max_attempts, token, state, outcome, result, trash_reason,
                ready_at, rev, headers, releases, abandons, retries, retry, failures)
            VALUES ('default', ?, ?, 'f', '{}', 0, ?, ?, 1, 3, 1, ?, ?, ?, ?, NULL, 3, '{}',
                0, 0, 0, NULL, '[]')"""
        done, trashed = str(uuid.uuid4()), str(uuid.uuid4())
        conn.execute(insert, (done, "done", ended, ended, "COMPLETE", "SUCCESS", '{"ok": 1}', None))
        conn.execute(insert, (trashed, "bad", ended, ended, "TRASHED", None, None, "too many"))
        conn.execute("UPDATE board_revs SET rev = 3 WHERE namespace = 'default'")
        conn.execute("COMMIT")
    return done, trashed


async def test_a_file_of_schema_3_gets_keys_and_its_jobs_read_run_and_purge(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v3.db"
    waiting, held = old_file(path, 3)
    done, trashed = add_finished(path, ended_ago=7200)
    async with open_board(url(path)) as board:
        old = await board.get(waiting)
        assert (old.key, old.state, old.args) == (None, JobState.UNCLAIMED, {"a": 1})
        finished = await board.get(done)
        assert finished.key is None and finished.outcome is Outcome.SUCCESS
        assert finished.result == {"ok": 1}
        assert (await board.get(trashed)).trash_reason == "too many"
        # The jobs of before run on.
        claim = (await board.get(held)).claim
        assert claim is not None
        await board.consume(claim)
        await board.consume(await board.claim(waiting, "owner-2"))
        # Keys work next to jobs without one.
        keyed, created = await board.get_or_post("new", "f", key="order-1")
        assert created and (await board.get_by_key("order-1")).id == keyed.id
        assert (await board.post("again", "f", key="order-1")).id == keyed.id
        # The jobs that ended before the upgrade are purgeable, by when they ended.
        assert await board.purge(older_than=3600) == 2
        for gone in (done, trashed):
            with pytest.raises(JobNotFound):
                await board.get(gone)
        assert await board.purge(older_than=0) == 2
        assert [job.id async for job in board.iterjobs()] == [keyed.id]


async def test_the_key_is_unique_in_the_file_itself(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with open_board(url(path)) as board:
        job = await board.post("j", "f", key="k")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT job_key FROM jobs WHERE id = ?", (job.id,)).fetchone() == ("k",)
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO jobs (namespace, id, name, flow, args, priority, created_at,"
                " updated_at, max_attempts, state, rev, job_key)"
                " VALUES ('default', 'x', 'j', 'f', '{}', 0, 0, 0, 3, 'UNCLAIMED', 1, 'k')"
            )


KEYED_POSTER = """
import sys, anyio
from aioconductor.boards import open_board

async def main(url):
    async with open_board(url) as board:
        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(post, board, n)

async def post(board, n):
    job, created = await board.get_or_post("j", "f", {"n": n}, key="once")
    print(job.id, created, flush=True)

anyio.run(main, sys.argv[1])
"""


async def test_processes_posting_one_key_create_one_job(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with open_board(url(path)) as board:
        await board.connect()
        outputs: list[str] = []

        async def there() -> None:
            outputs.append(await run_script(KEYED_POSTER, url(path)))

        async def here() -> None:
            for n in range(20):
                job, created = await board.get_or_post("j", "f", {"n": n}, key="once")
                outputs.append(f"{job.id} {created}\n")

        async with anyio.create_task_group() as tg:
            tg.start_soon(there)
            tg.start_soon(there)
            tg.start_soon(here)
        lines = "".join(outputs).split("\n")
        results = [line.split() for line in lines if line]
        assert len(results) == 60
        assert len({job_id for job_id, _ in results}) == 1
        assert [created for _, created in results].count("True") == 1
        assert await board.job_count() == 1


async def test_the_holder_comes_back_as_get_shows_it(tmp_path: Path) -> None:
    async with open_board(url(tmp_path / "jobs.db")) as board:
        job = await board.post("j", "f", key="soon", delay=0.05)
        assert job.state is JobState.SCHEDULED
        await anyio.sleep(0.1)
        holder = await board.post("j", "f", key="soon")
        assert holder == await board.get(job.id)
        assert holder.state is JobState.UNCLAIMED


def plan(statement: str, **params: object) -> str:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    with contextlib.closing(conn):
        conn.execute("BEGIN")
        apply_migrations(conn, "board", board_schema.SCHEMA)
        conn.execute("COMMIT")
        rows = conn.execute(f"EXPLAIN QUERY PLAN {statement}", params).fetchall()
    return "\n".join(row[-1] for row in rows)


def test_keys_and_purges_go_by_index_never_through_every_job() -> None:
    # With millions of finished jobs, a scan or a sort of all of them would hold the write lock
    # (a purge) or a reader (a post's holder, the next batch) for seconds.
    found = plan(board_schema.PURGEABLE, ns="a", state="COMPLETE", cutoff=1.0, limit=10)
    assert "USING INDEX jobs_ended (namespace=? AND state=? AND updated_at<?)" in found
    assert "TEMP B-TREE" not in found
    deleted = plan(board_schema.PURGE, ns="a", ids='["x"]')
    assert "SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (namespace=? AND id=?)" in deleted
    assert "SCAN jobs" not in deleted and "jobs_ended" not in deleted
    holder = plan(board_schema.BY_KEY, ns="a", key="k")
    assert "USING INDEX jobs_key (namespace=? AND job_key=?)" in holder


async def test_purge_takes_the_oldest_first_across_states(tmp_path: Path) -> None:
    async with open_board(url(tmp_path / "jobs.db")) as board:
        ended = []
        for n in range(6):
            claim = await board.claim((await board.post(f"j{n}", "f")).id, "o")
            if n % 2:
                ended.append(await board.trash(claim, reason="bad"))
            else:
                ended.append(await board.consume(claim))
        ids = [job.id for job in ended]
        purgeable = board._purgeable
        both = (JobState.COMPLETE, JobState.TRASHED)
        assert await purgeable(0, both, 4) == ids[:4]
        assert await purgeable(0, (JobState.TRASHED,), 2) == ids[1:5:2]
        assert await board.purge(older_than=0, batch=4) == 6


async def test_seq_is_not_reused_after_a_purge(tmp_path: Path) -> None:
    # Post order survives a purge of the newest rows (AUTOINCREMENT never hands a seq back).
    async with open_board(url(tmp_path / "jobs.db")) as board:
        last = await board.post("last", "f")
        await board.consume(await board.claim(last.id, "o"))
        assert await board.purge(older_than=0) == 1
        after = await board.post("after", "f")
        assert after.seq > last.seq


async def test_a_stream_keeps_going_across_purges_by_another_board_object(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    async with (
        open_board(url(path, poll_interval=0.05)) as here,
        open_board(url(path)) as there,
    ):
        notes: list[JobNotification] = []
        async with started_stream(here) as iterator:
            purged = []
            for n in range(3):
                job = await there.post(f"j{n}", "f")
                purged.append(job.id)
                await there.consume(await there.claim(job.id, "o"))
            assert await there.purge(older_than=0) == 3
            await anyio.sleep(0.15)  # sweeps over the purged rows
            posted = await there.post("after", "f")
            with anyio.fail_after(2):
                while not notes or notes[-1].job_id != posted.id:
                    notes.append(await anext(iterator))
        # Posts swept before their job was purged may be announced (a claim then fails, as
        # for any job taken meanwhile); the stream goes on and finds the next post.
        assert {note.job_id for note in notes} <= {*purged, posted.id}
        assert notes[-1].kind is NotificationKind.POSTED


async def test_a_locked_file_fails_a_keyed_post_and_a_purge_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_link, "BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "jobs.db"
    async with open_board(url(path)) as board:
        done = await board.post("j", "f", key="k")
        await board.consume(await board.claim(done.id, "o"))
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(BackendUnavailable, match="locked"):
                await board.post("j", "f", key="other")
            with pytest.raises(BackendUnavailable, match="locked"):
                await board.purge(older_than=0)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert [job.id async for job in board.iterjobs()] == [done.id]
        with pytest.raises(JobNotFound):
            await board.get_by_key("other")
        assert await board.purge(older_than=0) == 1
