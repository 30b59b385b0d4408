"""A SQLite file's schema: its version per component (``aioc_schema``), the steps that bring it
to the newest, the check a read-only opener makes instead, and the switch to WAL mode."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence

from aioconductor.errors import ConfigurationError
from aioconductor.errors import SchemaMissing

__all__ = ["Migrations", "apply_migrations", "check_version", "no_schema_message", "use_wal"]

#: Schema steps of one component: ``migrations[n]`` takes the schema from version n to n + 1.
Migrations = Sequence[Sequence[str]]


def no_schema_message(where: str, component: str, version: int = 0, latest: int = 0) -> str:
    """Why a read-only opener refused ``where``: no schema of ``component``, or an old one."""
    if version:
        found = f"its aioconductor {component} schema is version {version}, older than {latest}"
    else:
        found = f"no aioconductor {component} schema here"
    return (
        f"{where}: {found}, and this command does not create or migrate anything; run "
        f"`aioconductor migrate` (or start a conductor) on it first"
    )


def _version(conn: sqlite3.Connection, component: str) -> int:
    row = conn.execute(
        "SELECT version FROM aioc_schema WHERE component = ?", (component,)
    ).fetchone()
    return 0 if row is None else int(row[0])


def _refuse_newer(version: int, migrations: Migrations, component: str) -> None:
    if version > len(migrations):
        raise ConfigurationError(
            f"the {component} schema of this file is version {version}, newer than this "
            f"aioconductor knows ({len(migrations)}): upgrade aioconductor"
        )


def apply_migrations(
    conn: sqlite3.Connection,
    component: str,
    migrations: Migrations,
    setup: Callable[[sqlite3.Connection], object] | None = None,
) -> None:
    """Apply the steps of ``migrations`` the file lacks, record the version, run ``setup``
    (inside the caller's write transaction)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS aioc_schema ("
        " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    version = _version(conn, component)
    _refuse_newer(version, migrations, component)
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


def check_version(
    conn: sqlite3.Connection, where: str, component: str, migrations: Migrations
) -> None:
    """Refuse a file whose ``component`` schema is missing or older (``SchemaMissing``) or
    newer (``ConfigurationError``) than ``migrations`` make it; write nothing."""
    try:
        version = _version(conn, component)
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        version = 0
    _refuse_newer(version, migrations, component)
    if version < len(migrations):
        raise SchemaMissing(no_schema_message(where, component, version, len(migrations)))


def use_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the file in WAL mode (it stays so), waiting up to ``timeout`` seconds for it.

    The switch needs the file to itself, and SQLite refuses it at once, without the busy
    handler, while another connection writes in the old mode: two processes opening one fresh
    file (two conductors starting on one store) would see "database is locked".
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
