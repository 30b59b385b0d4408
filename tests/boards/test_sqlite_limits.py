"""What only the SQLite board promises about cancel and concurrency limits: a limit is exact
under concurrent claims from several board objects and processes on one file (each claim counts
and takes in one write transaction), a cancel or a freed slot reaches another process's stream
by its sweep (once) and this object's streams by a push, and a file of schema 5 upgrades in
place. The shared semantics are in ``test_conformance.py``."""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from aioconductor._backends.sqlite import board_schema
from aioconductor.boards import JobBoard, open_board
from aioconductor.cli import main
from aioconductor.models import JobNotification, JobState, LimitInfo, NotificationKind, Outcome
from tests.boards.test_sqlite import old_file, run_script, started_stream, url

#: Records, inside each claim's own transaction, how many jobs of the claimed job's key hold a
#: live claim right after it: the exact count no observer from outside could read.
WATCH = """
CREATE TABLE watched (limit_key TEXT NOT NULL, live INTEGER NOT NULL);
CREATE TRIGGER watch_claims AFTER UPDATE OF token ON jobs
    WHEN NEW.state = 'CLAIMED' AND NEW.limit_key IS NOT NULL
BEGIN
    INSERT INTO watched (limit_key, live) SELECT NEW.limit_key, COUNT(*) FROM jobs
        WHERE namespace = NEW.namespace AND limit_key = NEW.limit_key
            AND state = 'CLAIMED' AND expires_at > NEW.updated_at;
END;
"""


@contextlib.contextmanager
def file(path: Path) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


def most_live(path: Path) -> dict[str, int]:
    """The most live claims of each key that any claim left behind it (see ``WATCH``)."""
    with file(path) as conn:
        return dict(conn.execute("SELECT limit_key, MAX(live) FROM watched GROUP BY limit_key"))


async def post_mix(board: JobBoard) -> set[str]:
    """40 jobs of 'payments', 20 of 'mail', 20 without a limit key, shuffled in claim order."""
    keys = ["payments"] * 40 + ["mail"] * 20 + [None] * 20
    random.Random(21).shuffle(keys)
    return {(await board.post("j", "f", {"n": i}, limit_key=key)).id for i, key in enumerate(keys)}


async def test_board_objects_racing_claims_never_exceed_a_limit(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with contextlib.AsyncExitStack() as stack:
        boards = [await stack.enter_async_context(open_board(url(path))) for _ in range(3)]
        with file(path) as conn:
            conn.executescript(WATCH)
        await boards[0].set_limit("payments", 3)
        await boards[1].set_limit("mail", 1)
        posted = await post_mix(boards[0])
        done: list[str] = []

        async def work(board: JobBoard, owner: str, batch: int) -> None:
            while len(done) < len(posted):
                if batch > 1:
                    claimed = await board.claim_batch(owner, batch)
                else:
                    one = await board.claim_next(owner)
                    claimed = [] if one is None else [one]
                if not claimed:
                    await anyio.sleep(0.002)
                    continue
                await anyio.sleep(0.005)
                for job, claim in claimed:
                    await board.consume(claim)
                    done.append(job.id)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i, board in enumerate(boards):
                    for j in range(3):  # several tasks per object: their claims share commits
                        tg.start_soon(work, board, f"b{i}-{j}", 1 + (i + j) % 3 * 2)
        assert sorted(done) == sorted(posted)
        assert most_live(path) == {"payments": 3, "mail": 1}
        assert await boards[2].limits() == [
            LimitInfo(key="mail", limit=1, claimed=0),
            LimitInfo(key="payments", limit=3, claimed=0),
        ]


WORKER = """
import sys, anyio
from aioconductor.boards import open_board

async def main(url, owner, batch):
    async with open_board(url) as board:
        idle = 0
        while idle < 50:
            claimed = await board.claim_batch(owner, int(batch))
            if not claimed:
                idle += 1
                await anyio.sleep(0.01)
                continue
            idle = 0
            await anyio.sleep(0.005)
            for job, claim in claimed:
                await board.consume(claim)
                print(job.id, flush=True)

anyio.run(main, *sys.argv[1:])
"""


async def test_processes_racing_claims_never_exceed_a_limit(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with open_board(url(path)) as board:
        with file(path) as conn:
            conn.executescript(WATCH)
        await board.set_limit("payments", 2)
        await board.set_limit("mail", 1)
        posted = await post_mix(board)
        outputs: list[str] = []

        async def worker(owner: str, batch: int) -> None:
            outputs.append(await run_script(WORKER, url(path), owner, str(batch)))

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(worker, f"p{i}", 1 + 2 * i)
        taken = [job_id for output in outputs for job_id in output.split()]
        assert sorted(taken) == sorted(posted)
        live = most_live(path)
        assert live["payments"] <= 2 and live["mail"] == 1


async def test_a_batch_takes_each_key_up_to_its_slots_in_claim_order(tmp_path: Path) -> None:
    async with open_board(url(tmp_path / "jobs.db")) as board:
        await board.set_limit("a", 2)
        await board.set_limit("b", 1)
        await board.set_limit("bulk", 1)
        bulk = [await board.post("bulk", "f", limit_key="bulk", priority=9) for _ in range(300)]
        keys = ["a", "b", "a", "b", "a", "b", None, None]
        order = [await board.post("j", "f", limit_key=key, priority=5) for key in keys]
        held = await board.claim(bulk[-1].id, "owner-0")
        taken = [job.id for job, _ in await board.claim_batch("owner-1", 10)]
        # 'bulk' is full (its 299 others passed over); 'a' takes two, 'b' one, then the rest.
        assert taken == [order[i].id for i in (0, 1, 2, 6, 7)]
        assert await board.claim_batch("owner-1", 10) == []
        # Each key's own claims, not every limited claim.
        assert [(info.key, info.claimed) for info in await board.limits()] == [
            ("a", 2),
            ("b", 1),
            ("bulk", 1),
        ]
        await board.consume(held)
        assert [job.id for job, _ in await board.claim_batch("owner-1", 10)] == [bulk[0].id]


async def test_a_cancel_from_another_process_reaches_the_owner_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    canceller = """
import sys, anyio
from aioconductor.boards import open_board

async def main(url, job_id):
    async with open_board(url) as board:
        print((await board.cancel(job_id, reason="from afar")).cancel_reason)

anyio.run(main, *sys.argv[1:])
"""
    async with open_board(url(path, poll_interval=0.05)) as here:
        job = await here.post("j", "f")
        claim = await here.claim(job.id, "owner-1")
        notes: list[JobNotification] = []
        async with started_stream(here) as iterator:
            assert (await run_script(canceller, url(path), job.id)).strip() == "from afar"
            with anyio.fail_after(5):
                notes.append(await anext(iterator))
            # Renewing writes the row again; the flag is told of once all the same.
            for _ in range(3):
                assert (await here.renew(claim)).cancel_requested
                await anyio.sleep(0.06)
            with anyio.move_on_after(0.3):
                notes.append(await anext(iterator))
        assert [(n.job_id, n.kind) for n in notes] == [(job.id, NotificationKind.CANCEL)]


async def test_a_slot_freed_in_another_process_is_swept(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    consumer = """
import sys, anyio
from aioconductor.boards import open_board

async def main(url, job_id):
    async with open_board(url) as board:
        await board.consume(await board.claim(job_id, "elsewhere"))

anyio.run(main, *sys.argv[1:])
"""
    async with open_board(url(path, poll_interval=0.05)) as here:
        await here.set_limit("payments", 1)
        job = await here.post("p", "f", limit_key="payments", priority=-1)
        async with started_stream(here) as iterator:
            with anyio.fail_after(5):  # what the stream announces at its start
                while (note := await anext(iterator)).job_id != job.id:
                    pass
            await run_script(consumer, url(path), job.id)
            with anyio.fail_after(5):
                note = await anext(iterator)
        assert (note.job_id, note.kind) == (job.id, NotificationKind.SLOT_FREED)


async def test_this_object_pushes_cancels_and_freed_slots_and_sweeps_repeat_none(
    tmp_path: Path,
) -> None:
    async with open_board(url(tmp_path / "jobs.db", poll_interval=0.02)) as board:
        await board.set_limit("payments", 1)
        first = await board.post("p1", "f", limit_key="payments")
        claim = await board.claim(first.id, "owner-1")
        notes: list[JobNotification] = []
        async with started_stream(board) as iterator:
            second = await board.post("p2", "f", limit_key="payments")
            await board.cancel(first.id, reason="stop")
            await board.renew(claim)
            await board.consume(claim, outcome=Outcome.CANCELLED)
            retried = await board.retry(await board.claim(second.id, "owner-2"), delay=0.3)
            with anyio.move_on_after(1.0):  # fifty sweeps, and the retry falls due
                while True:
                    notes.append(await anext(iterator))
        assert retried.state is JobState.SCHEDULED
        assert [(n.job_id, n.kind) for n in notes] == [
            (second.id, NotificationKind.POSTED),
            (first.id, NotificationKind.CANCEL),
            (first.id, NotificationKind.SLOT_FREED),
            (second.id, NotificationKind.SLOT_FREED),
            (second.id, NotificationKind.DUE),
        ]


async def test_a_cancel_is_pushed_to_this_objects_streams_at_once(tmp_path: Path) -> None:
    # A long poll interval: only a push can announce it in time.
    async with open_board(url(tmp_path / "jobs.db", poll_interval=30)) as board:
        job = await board.post("j", "f")
        await board.claim(job.id, "owner-1")
        async with started_stream(board) as iterator:
            await board.cancel(job.id)
            with anyio.fail_after(2):
                note = await anext(iterator)
        assert (note.job_id, note.kind) == (job.id, NotificationKind.CANCEL)


def schema_version(path: Path) -> int:
    with file(path) as conn:
        row = conn.execute("SELECT version FROM aioc_schema WHERE component = 'board'")
        return int(row.fetchone()[0])


async def test_a_file_of_schema_5_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    waiting, held = old_file(path, 5)
    async with open_board(url(path)) as board:
        old = await board.get(held)
        assert (old.cancel_reason, old.limit_key, old.cancel_requested) == (None, None, False)
        # A claim of before the upgrade is flagged, and its owner finishes it.
        assert old.claim is not None
        flagged = await board.cancel(held, reason="after the upgrade")
        assert flagged.cancel_requested and (await board.renew(old.claim)).cancel_requested
        assert (await board.retry(old.claim, delay=0)).outcome is Outcome.CANCELLED
        assert (await board.cancel(waiting)).outcome is Outcome.CANCELLED
        await board.set_limit("payments", 1)
        new = [await board.post("p", "f", limit_key="payments") for _ in range(2)]
        claimed = await board.claim_batch("owner-2", 5)
        assert [job.id for job, _ in claimed] == [new[0].id]
        assert await board.limits() == [LimitInfo(key="payments", limit=1, claimed=1)]
        assert await board.purge(older_than=0) == 2
    assert schema_version(path) == len(board_schema.SCHEMA) == 7
    count = board_schema.live_claims("'payments'")
    with file(path) as conn:
        plan = conn.execute(
            f"EXPLAIN QUERY PLAN SELECT {count}", {"ns": "default", "now": 0.0}
        ).fetchall()
    assert any("jobs_limited" in row[-1] for row in plan)


def test_the_migrate_command_upgrades_a_file_of_schema_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old.db"
    waiting, _ = old_file(path, 5)
    assert schema_version(path) == 5
    assert main(["migrate", "--board", url(path)]) == 0
    assert "board: <SqliteJobBoard" in capsys.readouterr().out
    assert schema_version(path) == 7
    with file(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM job_limits").fetchone() == (0,)
        assert conn.execute(
            "SELECT cancel_reason, cancel_rev, limit_key FROM jobs WHERE id = ?", (waiting,)
        ).fetchone() == (None, None, None)


async def test_two_boards_opening_a_file_of_schema_5_at_once(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    waiting, _ = old_file(path, 5)
    a, b = open_board(url(path)), open_board(url(path))
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(a.aclose)
        stack.push_async_callback(b.aclose)
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.connect)
            tg.start_soon(b.connect)
        await a.set_limit("k", 0)
        assert await b.limits() == [LimitInfo(key="k", limit=0, claimed=0)]
        assert (await b.get(waiting)).state is JobState.UNCLAIMED
    assert schema_version(path) == 7
