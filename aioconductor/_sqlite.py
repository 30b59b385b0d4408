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

Cancellation: ``to_thread.run_sync`` does not abandon its thread when the caller is cancelled.
The call runs to its end, so its transaction is committed or rolled back as a whole, and the
cancellation lands at the caller's next checkpoint after the call returned. A cancelled caller
never leaves a transaction half done, nor one open on the connection for the next call.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar
from urllib.parse import unquote

import anyio

from aioconductor.errors import BackendUnavailable, ConfigurationError

__all__ = ["BUSY_TIMEOUT_MS", "Migrations", "SqliteLink", "sqlite_path"]

T = TypeVar("T")

#: How long a writer waits for another connection's write transaction before giving up.
BUSY_TIMEOUT_MS = 5000
#: How long ``aclose`` waits for the calls already queued on the connection.
_CLOSE_TIMEOUT = 30.0

#: Schema steps of one component: ``migrations[n]`` takes the schema from version n to n + 1.
Migrations = Sequence[Sequence[str]]


def sqlite_path(driver_url: str) -> str:
    """The file path of ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``.

    Raises:
        ConfigurationError: the URL has a host, options SQLite does not take, or no path.
    """
    scheme, _, rest = driver_url.partition("://")
    if scheme.lower() != "sqlite":
        raise ConfigurationError(f"{driver_url!r} is not a sqlite:// URL")
    rest, _, query = rest.partition("?")
    if query:
        raise ConfigurationError(f"{driver_url!r}: unknown sqlite option(s) {query!r}")
    rest = rest.partition("#")[0]
    if rest and not rest.startswith("/"):
        raise ConfigurationError(
            f"{driver_url!r} names a host; use sqlite:///relative.db or sqlite:////abs/path.db"
        )
    path = unquote(rest[1:])
    if not path:
        raise ConfigurationError(
            f"{driver_url!r} names no file; use sqlite:///relative.db or sqlite:////abs/path.db"
        )
    return path


class SqliteLink:
    """One ``sqlite3`` connection, used by one call at a time from a worker thread.

    Every ``sqlite3`` error becomes :class:`~aioconductor.errors.BackendUnavailable` naming the
    file, so callers never see a driver exception.

    Args:
        path: the database file.
        closed: builds the error raised by a call that reaches the link after :meth:`aclose`.
    """

    def __init__(self, path: str, *, closed: Callable[[], Exception]) -> None:
        self.path = path
        self._closed = closed
        self._conn: sqlite3.Connection | None = None
        # One call at a time: a sqlite3 connection is not safe for concurrent use, and it holds
        # one transaction, which two interleaved calls would share.
        self._lock = anyio.Lock()

    def unavailable(self, what: str, exc: BaseException) -> BackendUnavailable:
        """The ``BackendUnavailable`` to raise for a ``sqlite3`` error during ``what``."""
        return BackendUnavailable(f"SQLite database {self.path!r}: {what} failed: {exc}")

    async def connect(
        self,
        component: str,
        migrations: Migrations,
        setup: Callable[[sqlite3.Connection], object] | None = None,
    ) -> None:
        """Open the connection and bring ``component``'s schema to ``len(migrations)``.

        ``setup``, if given, runs in the same transaction, after the migrations.

        Raises:
            BackendUnavailable: the file cannot be opened or is not a SQLite database.
            ConfigurationError: a newer aioconductor wrote the file's schema.
        """
        async with self._lock:
            if self._conn is None:
                self._conn = await anyio.to_thread.run_sync(
                    self._open, component, migrations, setup
                )

    def _open(
        self,
        component: str,
        migrations: Migrations,
        setup: Callable[[sqlite3.Connection], object] | None,
    ) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                # Autocommit: transactions are begun and ended explicitly, never implicitly.
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise self.unavailable("open", exc) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")

            def migrate(c: sqlite3.Connection) -> None:
                _migrate(c, component, migrations, setup)

            _transaction("BEGIN IMMEDIATE", migrate)(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise self.unavailable("open", exc) from exc
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
        """Run ``fn`` in a ``BEGIN IMMEDIATE`` transaction, committed unless ``fn`` raises."""
        return await self._run(what, _transaction("BEGIN IMMEDIATE", fn))

    async def _run(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise self._closed()
            # Not abandoned on cancellation: see the module docstring.
            return await anyio.to_thread.run_sync(self._call, what, fn, conn)

    def _call(
        self, what: str, fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection
    ) -> T:
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise self.unavailable(what, exc) from exc

    async def aclose(self) -> None:
        """Close the connection once the calls already queued on it are done."""
        # Shielded so that a cancelled close still closes; bounded, because every queued call
        # is bounded by the busy timeout, so a longer wait means something is stuck.
        with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            async with self._lock:
                conn, self._conn = self._conn, None
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        await anyio.to_thread.run_sync(conn.close)


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


def _migrate(
    conn: sqlite3.Connection,
    component: str,
    migrations: Migrations,
    setup: Callable[[sqlite3.Connection], object] | None = None,
) -> None:
    """Apply the steps of ``migrations`` the file lacks, record the version, run ``setup``."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS aioc_schema ("
        " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    row = conn.execute(
        "SELECT version FROM aioc_schema WHERE component = ?", (component,)
    ).fetchone()
    version = 0 if row is None else int(row[0])
    if version > len(migrations):
        raise ConfigurationError(
            f"the {component} schema of this file is version {version}, newer than this "
            f"aioconductor knows ({len(migrations)}): upgrade aioconductor"
        )
    for step in migrations[version:]:
        for statement in step:
            conn.execute(statement)
    if version < len(migrations):
        conn.execute(
            "INSERT INTO aioc_schema (component, version) VALUES (?, ?)"
            " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            (component, len(migrations)),
        )
    if setup is not None:
        setup(conn)
