"""PostgreSQL test support: a schema of its own per test, dropped afterwards."""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from tests.conftest import POSTGRES_URL, service_missing


def require_postgres() -> str:
    """The test server's URL; skips (fails under CI) when nothing listens there."""
    parts = urlsplit(POSTGRES_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 2):
            pass
    except OSError:
        service_missing(f"PostgreSQL at {parts.hostname}:{parts.port or 5432}")
    return POSTGRES_URL


def unique_schema() -> str:
    """A schema name of this test's own."""
    return f"aioc_test_{uuid.uuid4().hex[:10]}"


def url(schema: str, namespace: str = "default", **options: str) -> str:
    """The test server's URL for a board or store in ``schema`` and ``namespace``."""
    query = "&".join(f"{k}={v}" for k, v in {"schema": schema, **options}.items())
    return f"{POSTGRES_URL}?namespace={namespace}&{query}"


async def drop_schemas(*schemas: str) -> None:
    """Drop the test schemas with everything in them."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb in a temporary folder, a free loopback
    port), which the test may restart or stop at will without disturbing anyone else."""

    def __init__(self, folder: str, port: int, bin_dir: str) -> None:
        self.folder = folder
        self.port = port
        self._bin = bin_dir
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _as_postgres(self, *argv: str) -> None:
        import os
        import subprocess

        command = [f"{self._bin}/{argv[0]}", *argv[1:]]
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._as_postgres(
            "pg_ctl", "-D", f"{self.folder}/data", "-l", f"{self.folder}/log", "-w", "-o",
            options, "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` ends every session at once, as a restart does)."""
        self._as_postgres("pg_ctl", "-D", f"{self.folder}/data", "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Stop the server, ending every session, and start it again."""
        self.stop()
        self.start()


def private_postgres() -> contextlib.AbstractContextManager[PrivatePostgres]:
    """Make, start and finally remove a private server; skips (fails under CI) without the
    PostgreSQL server binaries."""
    return _private_postgres()


@contextlib.contextmanager
def _private_postgres() -> Iterator[PrivatePostgres]:
    import glob
    import os
    import shutil
    import tempfile

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        service_missing("the PostgreSQL server binaries (initdb)")
    bin_dir = os.path.dirname(found[-1])
    folder = tempfile.mkdtemp(prefix="aioc-pg-")
    os.chmod(folder, 0o777)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = PrivatePostgres(folder, port, bin_dir)
    try:
        server._as_postgres("initdb", "-D", f"{folder}/data", "-A", "trust", "-U", "postgres")
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


async def terminate_backends(admin: Any, application_name: str) -> int:
    """End the server side of every connection tagged ``application_name``; how many."""
    return int(
        await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1",
            application_name,
        )
    )
