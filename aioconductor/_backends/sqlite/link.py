"""Plumbing shared by the SQLite board and the SQLite store: one connection, run in a thread.

The stdlib ``sqlite3`` module blocks, so every call runs in a worker thread
(``anyio.to_thread.run_sync``). Each board or store object owns one connection, opened with
``check_same_thread=False`` because its calls run in whichever worker thread is free.

Several processes may share one file:

- WAL mode: readers never block the writer, nor the writer readers.
- ``busy_timeout``: a writer waits (up to 5 s) for another's transaction instead of failing.
- Every read-modify-write runs in ``BEGIN IMMEDIATE``, which takes the write lock before the first
  read, so two processes never both decide from the same state. (A deferred transaction that
  turns into a write fails with ``SQLITE_BUSY`` at once instead of waiting.)
- ``synchronous=NORMAL``: a commit survives a crash of the process; a power cut may lose the last
  commits, never corrupt the file.

Group commit: writes that callers make while another write is under way are queued, and the
next turn runs all of them (up to ``MAX_GROUP``) in ONE ``BEGIN IMMEDIATE`` transaction, each in
a savepoint of its own. A write that raises is rolled back to its savepoint alone and its caller
gets the error; the others commit together, and each caller gets its own result only once that
commit is done. So every write still commits or rolls back as a whole, as if it ran alone, and
64 concurrent jobs pay for one commit and one thread hop instead of 64.

Cancellation: a call's worker thread is never abandoned. The call runs to its end, so its
transaction is committed or rolled back as a whole, and the cancellation (anyio's, or a plain
asyncio ``task.cancel()``, which passes through shields) lands after the call returned. A write
cancelled while still queued is taken off the queue and never runs; one already taken into a
group runs, and its caller sees the cancellation only after the commit. A cancelled caller
never leaves a transaction half done, nor one open on the connection for the next call.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import unquote

import anyio

from aioconductor._backends.base import BatchedCall
from aioconductor._backends.base import ErrorTable
from aioconductor._backends.base import map_exceptions
from aioconductor._backends.sqlite.migrations import Migrations
from aioconductor._backends.sqlite.migrations import apply_migrations
from aioconductor._backends.sqlite.migrations import check_version
from aioconductor._backends.sqlite.migrations import no_schema_message
from aioconductor._backends.sqlite.migrations import use_wal
from aioconductor._urls import redact_url
from aioconductor.errors import BackendUnavailable
from aioconductor.errors import ConfigurationError
from aioconductor.errors import SchemaMissing

__all__ = ["BUSY_TIMEOUT_MS", "Migrations", "SqliteLink", "first_row", "query", "sqlite_path"]

T = TypeVar("T")

#: How long a writer waits for another connection's write transaction before giving up.
BUSY_TIMEOUT_MS = 5000
#: How long ``aclose`` waits for the calls already queued on the connection.
_CLOSE_TIMEOUT = 30.0
#: The most writes one group commit takes (bounds how long it holds the file's write lock).
MAX_GROUP = 128


def sqlite_path(driver_url: str) -> str:
    """The file path of ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``.

    Raises:
        ConfigurationError: the URL has a host, options SQLite does not take, or no path.
    """
    shown = repr(redact_url(driver_url))
    scheme, _, rest = driver_url.partition("://")
    if scheme.lower() != "sqlite":
        raise ConfigurationError(f"{shown} is not a sqlite:// URL")
    rest, _, query = rest.partition("?")
    if query:
        raise ConfigurationError(f"{shown}: SQLite takes no driver options")
    rest = rest.partition("#")[0]
    if rest and not rest.startswith("/"):
        raise ConfigurationError(
            f"{shown} names a host; use sqlite:///relative.db or sqlite:////abs/path.db"
        )
    path = unquote(rest[1:])
    if not path:
        raise ConfigurationError(
            f"{shown} names no file; use sqlite:///relative.db or sqlite:////abs/path.db"
        )
    return path


def first_row(cursor: sqlite3.Cursor) -> Any:
    """The first row ``cursor`` gives, or None; every row is read (see :meth:`SqliteLink.write`)."""
    # fetchall, not fetchone: an UPDATE ... RETURNING must run to its end before COMMIT.
    rows = cursor.fetchall()
    return rows[0] if rows else None


def query(statement: str, params: Mapping[str, Any]) -> Callable[[sqlite3.Connection], list[Any]]:
    """A call for :meth:`SqliteLink.read` that runs the query ``statement`` and returns its rows."""

    def run(conn: sqlite3.Connection) -> list[Any]:
        return conn.execute(statement, params).fetchall()

    return run


class SqliteLink:
    """One ``sqlite3`` connection, used by one call at a time from a worker thread.

    Every ``sqlite3`` error becomes :class:`~aioconductor.errors.BackendUnavailable` naming the
    file (through :func:`~aioconductor._backends.base.map_exceptions`), so callers never see a
    driver exception.

    Args:
        path: the database file.
        closed_error: builds the error raised by a call that reaches the link after
            :meth:`aclose`.
    """

    def __init__(self, path: str, *, closed_error: Callable[[], Exception]) -> None:
        self.path = path
        #: The file, as messages name it (a path holds no secret).
        self.url = path
        #: Whether :meth:`aclose` was called.
        self.closed = False
        self._closed_error = closed_error
        self._conn: sqlite3.Connection | None = None
        #: what -> the error table of a call named so (see :meth:`_errors`).
        self._tables: dict[str, ErrorTable] = {}
        # One call at a time: a sqlite3 connection is not safe for concurrent use, and it holds
        # one transaction, which two interleaved calls would share.
        self._lock = anyio.Lock()
        #: Writes waiting for the next group commit.
        self._queue: list[_Write] = []
        #: One worker thread at a time for this connection, never waiting on others' threads.
        self._limiter = anyio.CapacityLimiter(1)

    def unavailable(self, what: str, exc: BaseException) -> BackendUnavailable:
        """The ``BackendUnavailable`` to raise for a ``sqlite3`` error during ``what``."""
        return BackendUnavailable(f"SQLite database {self.path!r}: {what} failed: {exc}")

    def _errors(self, what: str) -> ErrorTable:
        """The table that makes a ``sqlite3`` error during ``what`` :meth:`unavailable`.

        Kept per ``what`` (a handful of verbs), so a call does not build one.
        """
        table = self._tables.get(what)
        if table is None:
            table = self._tables[what] = [
                (sqlite3.Error, functools.partial(self.unavailable, what))
            ]
        return table

    async def connect(
        self,
        component: str,
        migrations: Migrations,
        setup: Callable[[sqlite3.Connection], object] | None = None,
        *,
        migrate: bool = True,
    ) -> None:
        """Open the connection and bring ``component``'s schema to ``len(migrations)``.

        ``setup``, if given, runs in the same transaction, after the migrations. With
        ``migrate=False`` nothing is written (nor the file created, nor ``setup`` run): the
        file's schema must be there at the newest version already.

        Raises:
            BackendUnavailable: the file cannot be opened or is not a SQLite database.
            ConfigurationError: a newer aioconductor wrote the file's schema; or, with
                ``migrate=False``, the file or its schema is missing or older.
        """
        async with self._lock:
            if self._conn is None:
                self._conn = await anyio.to_thread.run_sync(
                    self._open, component, migrations, setup, migrate
                )

    def _open(
        self,
        component: str,
        migrations: Migrations,
        setup: Callable[[sqlite3.Connection], object] | None,
        migrate: bool,
    ) -> sqlite3.Connection:
        if not migrate and self.path != ":memory:" and not os.path.exists(self.path):
            raise SchemaMissing(no_schema_message(self.path, component))
        with map_exceptions(self._errors("open")):
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                # Autocommit: transactions are begun and ended explicitly, never implicitly.
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                if not migrate:
                    check_version(conn, self.path, component, migrations)
                    return conn
                use_wal(conn, BUSY_TIMEOUT_MS / 1000)
                conn.execute("PRAGMA synchronous = NORMAL")

                def run_migrations(c: sqlite3.Connection) -> None:
                    apply_migrations(c, component, migrations, setup)

                _transaction("BEGIN IMMEDIATE", run_migrations)(conn)
            except BaseException:
                conn.close()
                raise
        return conn

    async def read(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` outside a transaction: for one statement that only reads."""
        return await self._run(what, fn)

    async def snapshot(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn``'s reads in one read transaction, so they all see one state of the file."""
        return await self._run(what, _transaction("BEGIN", fn))

    async def write(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a ``BEGIN IMMEDIATE`` transaction, committed unless ``fn`` raises.

        Writes queued meanwhile share one transaction (see the module docstring): ``fn`` runs
        in a savepoint of its own, so what it did is undone alone if it raises. ``fn`` must
        read every row of the statements it runs (a statement left in progress would keep the
        savepoint from being released).
        """
        pending = _Write(what, fn)
        self._queue.append(pending)
        try:
            async with self._lock:
                while not pending.over:
                    await self._commit_group()
        except BaseException:
            if pending in self._queue:
                self._queue.remove(pending)  # never taken: nothing was written
            else:
                await _wait_uncancelled(lambda: pending.ended(None))  # taken: it commits first
            raise
        return cast(T, pending.outcome())

    async def _commit_group(self) -> None:
        """Take the queued writes and run them in one transaction (the lock is held)."""
        group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
        try:
            conn = self._conn
            if conn is None:
                for pending in group:
                    pending.settle(error=self._closed_error())
                return
            # The group's outcome is settled in the thread, whatever becomes of this caller.
            await self._in_thread(self._run_group, group, conn)
        finally:
            for pending in group:
                if not pending.settled:  # the thread raised before settling it
                    pending.settle(error=self.unavailable(pending.what, RuntimeError("not run")))
                pending.end()

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in this link's worker thread, and not a moment less.

        The thread is never abandoned: an anyio cancellation waits for it (shielded), and a
        plain asyncio ``task.cancel()``, which passes through shields, is held back until the
        thread is done, then raised; until then the caller keeps the lock, so no other call
        uses the connection while the thread does.
        """
        finished = threading.Event()

        def run() -> T:
            try:
                return fn(*args)
            finally:
                finished.set()

        try:
            with anyio.CancelScope(shield=True):
                result = await anyio.to_thread.run_sync(run, limiter=self._limiter)
        except BaseException:
            if not finished.is_set():
                await _wait_uncancelled(lambda: _thread_done(finished))
            raise
        return result

    def _run_group(self, group: list[_Write], conn: sqlite3.Connection) -> None:
        """In the worker thread: every write of ``group`` in one transaction."""
        outcomes: list[tuple[_Write, object, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for pending in group:
                conn.execute("SAVEPOINT aioc_write")
                try:
                    value = pending.fn(conn)
                except Exception as exc:
                    # Undo this write alone. If SQLite already rolled the whole transaction
                    # back (a full disk, an I/O error), this fails and so does the group.
                    conn.execute("ROLLBACK TO aioc_write")
                    conn.execute("RELEASE aioc_write")
                    outcomes.append((pending, None, self._translate(pending.what, exc)))
                else:
                    conn.execute("RELEASE aioc_write")
                    outcomes.append((pending, value, None))
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            # Nothing of the group was committed. Each caller gets an error of its own (an
            # exception object is not to be shared between tasks).
            for pending in group:
                unavailable = self.unavailable(pending.what, exc)
                unavailable.__cause__ = exc
                pending.settle(error=unavailable)
            if not isinstance(exc, sqlite3.Error):
                raise  # not the database's doing (a KeyboardInterrupt, a bug): let it show
            return
        for pending, value, error in outcomes:
            if error is not None:
                pending.settle(error=error)
            else:
                pending.settle(value)

    def _translate(self, what: str, exc: Exception) -> Exception:
        """``exc`` as the caller of ``what`` is to get it, by the same table as every call.

        For an error caught in the thread and handed on (one write of a group), not raised
        there: a ``with map_exceptions`` around every write would cost each write, failed or
        not, a generator's worth of time.
        """
        try:
            with map_exceptions(self._errors(what)):
                raise exc
        except Exception as mapped:
            return mapped

    async def _run(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise self._closed_error()
            return await self._in_thread(self._call, what, fn, conn)

    def _call(
        self, what: str, fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection
    ) -> T:
        with map_exceptions(self._errors(what)):
            result = fn(conn)
        return result

    async def aclose(self) -> None:
        """Close the connection once the calls already queued on it are done."""
        # Shielded so that a cancelled close still closes; bounded, because every queued call
        # is bounded by the busy timeout, so a longer wait means something is stuck.
        self.closed = True
        with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            async with self._lock:
                conn, self._conn = self._conn, None
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        await anyio.to_thread.run_sync(conn.close)


async def _wait_uncancelled(wait: Callable[[], Awaitable[object]]) -> None:
    """``await wait()`` through any cancellation (anyio's, shielded; asyncio's, caught and
    waited on again): for work that is under way and must be seen to its end."""
    while True:
        try:
            with anyio.CancelScope(shield=True):
                await wait()
            return
        except anyio.get_cancelled_exc_class():
            continue  # a plain task.cancel(): the caller re-raises its own cancellation later


async def _thread_done(finished: threading.Event) -> None:
    """Wait until a worker thread has set ``finished`` (only after a plain asyncio cancel left
    a thread running: rare, and short, so a poll will do)."""
    while not finished.is_set():  # noqa: ASYNC110
        await anyio.sleep(0.001)


class _Write(BatchedCall):
    """One caller's write, queued for a group commit."""

    __slots__ = ("fn", "what")

    def __init__(self, what: str, fn: Callable[[sqlite3.Connection], object]) -> None:
        super().__init__()
        self.what = what
        self.fn = fn


def _transaction(
    begin: str, fn: Callable[[sqlite3.Connection], T]
) -> Callable[[sqlite3.Connection], T]:
    """``fn`` in a transaction opened with ``begin``: committed, or rolled back if it raises."""

    def run(conn: sqlite3.Connection) -> T:
        conn.execute(begin)
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                # The original error says what went wrong; a failed rollback adds nothing.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return result

    return run
