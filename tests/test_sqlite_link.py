"""SqliteLink's group commit: concurrent writes share a transaction, each keeps its own fate."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioconductor._backends.sqlite.link import SqliteLink
from aioconductor.errors import BackendUnavailable, BoardClosed
from tests.concurrency import outcomes_of

MIGRATIONS = [["CREATE TABLE items (name TEXT PRIMARY KEY, n INTEGER NOT NULL)"]]


@pytest.fixture
async def link(tmp_path: Path) -> Any:
    opened = SqliteLink(str(tmp_path / "link.db"), closed_error=BoardClosed)
    await opened.connect("test", MIGRATIONS)
    yield opened
    await opened.aclose()


def insert(name: str, n: int = 1) -> Any:
    def run(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO items (name, n) VALUES (?, ?)", (name, n))
        return name

    return run


async def names(link: SqliteLink) -> set[str]:
    rows = await link.read("list", lambda c: c.execute("SELECT name FROM items").fetchall())
    return {row[0] for row in rows}


async def test_concurrent_writes_share_few_commits_and_get_their_own_results(
    link: SqliteLink,
) -> None:
    commits: list[str] = []
    conn = link._conn
    assert conn is not None
    conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    results = await outcomes_of(*(lambda i=i: link.write("w", insert(f"n{i}")) for i in range(50)))
    conn.set_trace_callback(None)
    assert results == [f"n{i}" for i in range(50)]
    assert await names(link) == {f"n{i}" for i in range(50)}
    assert len(commits) < 10, "the writes did not share commits"


async def test_a_failing_write_is_undone_alone(link: SqliteLink) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO items (name, n) VALUES ('half', 1)")
        raise LookupError("refused")

    def duplicate(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO items (name, n) VALUES ('a', 2)")  # a sqlite3 error

    results = await outcomes_of(
        lambda: link.write("a", insert("a")),
        lambda: link.write("half", half_then_fail),
        lambda: link.write("dup", duplicate),
        lambda: link.write("b", insert("b")),
    )
    assert results[0] == "a" and results[3] == "b"
    assert isinstance(results[1], LookupError)
    assert isinstance(results[2], BackendUnavailable) and "dup failed" in str(results[2])
    assert await names(link) == {"a", "b"}


async def test_a_write_cancelled_in_the_queue_never_runs(link: SqliteLink) -> None:
    ran: list[str] = []
    gate = anyio.Event()

    def slow(conn: sqlite3.Connection) -> None:
        anyio.from_thread.run_sync(gate.set)
        conn.execute("INSERT INTO items (name, n) VALUES ('slow', 1)")
        import time

        time.sleep(0.2)

    def queued(conn: sqlite3.Connection) -> None:
        ran.append("queued")
        conn.execute("INSERT INTO items (name, n) VALUES ('queued', 1)")

    async with anyio.create_task_group() as tg:
        tg.start_soon(link.write, "slow", slow)
        await gate.wait()  # the first group is in its thread; the next write must queue
        with anyio.CancelScope() as scope:
            tg.start_soon(lambda: link.write("late", insert("late")))
            await anyio.sleep(0.01)
            scope.cancel()
            await link.write("queued", queued)
    assert ran == []
    assert "queued" not in await names(link) and "slow" in await names(link)


async def test_a_write_after_close_is_refused(link: SqliteLink) -> None:
    await link.aclose()
    with pytest.raises(BoardClosed):
        await link.write("w", insert("x"))


async def test_a_leader_cancelled_before_its_thread_still_commits_the_others(
    link: SqliteLink,
) -> None:
    outcomes: dict[str, Any] = {}
    leader = anyio.CancelScope()

    async def write(name: str, scope: anyio.CancelScope | None = None) -> None:
        with scope or anyio.CancelScope():
            outcomes[name] = await link.write(name, insert(name))

    async def cancel_leader() -> None:
        leader.cancel()  # lands as the leader heads for the thread

    async with anyio.create_task_group() as tg:
        tg.start_soon(write, "leader", leader)
        tg.start_soon(write, "f1")
        tg.start_soon(write, "f2")
        tg.start_soon(cancel_leader)
    assert outcomes.get("f1") == "f1" and outcomes.get("f2") == "f2"
    assert {"f1", "f2"} <= await names(link)
    assert await link.write("later", insert("later")) == "later"


async def test_a_plain_asyncio_cancel_waits_for_the_thread(link: SqliteLink) -> None:
    import asyncio
    import time

    def slow(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO items (name, n) VALUES ('slow', 1)")
        time.sleep(0.3)
        return "slow"

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(link.write("slow", slow), 0.05)  # cancels the task natively
    # The cancel landed only once the transaction was over: nothing is left open.
    assert time.monotonic() - started >= 0.3
    assert link._conn is not None and not link._conn.in_transaction
    assert await link.write("next", insert("next")) == "next"
    assert await names(link) == {"slow", "next"}


async def test_a_base_exception_in_a_write_rolls_the_group_back(link: SqliteLink) -> None:
    class Stop(BaseException):
        pass

    def stop(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO items (name, n) VALUES ('stop', 1)")
        raise Stop

    with pytest.raises(Stop):
        await link.write("stop", stop)
    assert link._conn is not None and not link._conn.in_transaction
    assert await names(link) == set()
    assert await link.write("after", insert("after")) == "after"


async def test_a_fresh_file_opened_while_another_process_writes_it_waits_for_wal(
    tmp_path: Path,
) -> None:
    # Switching a file to WAL needs it to itself, and SQLite does not call the busy handler for
    # that: a conductor starting while another wrote the fresh file failed at once with
    # "database is locked" (seen when two conductor processes opened one store).
    path = tmp_path / "fresh.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN IMMEDIATE")  # the other process, migrating the fresh file
    other.execute("INSERT INTO t VALUES (1)")
    link = SqliteLink(str(path), closed_error=BoardClosed)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(link.connect, "test", MIGRATIONS)
            await anyio.sleep(0.3)
            other.execute("COMMIT")
        assert await names(link) == set()
    finally:
        other.close()
        await link.aclose()
