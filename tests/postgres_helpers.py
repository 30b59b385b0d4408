"""PostgreSQL test support: a schema of its own per test, dropped afterwards."""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import pytest

from tests.conftest import POSTGRES_URL, service_missing
from tests.tls_helpers import Certificates, make_certificates

if TYPE_CHECKING:
    from tests.backends import PostgresSpace


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


def url(schema: str, namespace: str = "default", **options: object) -> str:
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
    port), which the test may restart or stop at will without disturbing anyone else.

    With ``ssl=True`` (see :func:`private_postgres`) it accepts TCP connections over TLS only,
    with a password: ``certificates`` are its CA's, ``password`` the ``postgres`` role's, and
    :meth:`connect_admin` reaches it over its Unix socket (trusted, no TLS) for checks.

    It acknowledges a commit before writing it (``synchronous_commit=off``), so a crash may lose
    the last ones, unless ``durable``: then what it acknowledged survives a crash of the server
    (though not of the machine: ``fsync=off``).
    """

    def __init__(self, folder: str, port: int, bin_dir: str, *, durable: bool = False) -> None:
        self.folder = folder
        self.port = port
        self._bin = bin_dir
        self._durable = durable
        self.certificates: Certificates | None = None
        self.password: str | None = None

    @property
    def url(self) -> str:
        """The server's URL (with the password, if it has one), no query options."""
        user = f"postgres:{self.password}" if self.password else "postgres"
        return f"postgresql://{user}@127.0.0.1:{self.port}/postgres"

    async def connect_admin(self) -> Any:
        """An asyncpg connection as ``postgres`` over the server's Unix socket."""
        import asyncpg

        return await asyncpg.connect(
            host=self.folder, port=self.port, user="postgres", database="postgres"
        )

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
            " -c fsync=off -c full_page_writes=off"
            f" -c synchronous_commit={'on' if self._durable else 'off'}"
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


def private_postgres(
    *, ssl: bool = False, durable: bool = False
) -> contextlib.AbstractContextManager[PrivatePostgres]:
    """Make, start and finally remove a private server; skips (fails under CI) without the
    PostgreSQL server binaries.

    ``ssl=True``: the server gets a certificate signed by a test CA (``server.certificates``),
    ``ssl=on``, and a ``pg_hba.conf`` that takes TCP connections over TLS only (``hostssl``,
    with the ``postgres`` role's password, ``server.password``) and rejects every other one.
    ``durable=True``: a crash of the server loses no commit it acknowledged.
    """
    return _private_postgres(ssl, durable)


#: pg_hba.conf of a TLS-only server: Unix socket trusted (for the test's own checks), TCP over
#: TLS with a password, TCP without TLS rejected (so the refusal says "no encryption").
_TLS_ONLY_HBA = """\
local     all all              trust
hostssl   all all 127.0.0.1/32 scram-sha-256
hostnossl all all all          reject
"""


def _enable_tls(server: PrivatePostgres, certificates: Certificates) -> None:
    """Give ``server`` (initdb'd, not started) its certificate, ``ssl=on`` and TLS-only access."""
    import os
    import shutil

    data = f"{server.folder}/data"
    copies = {"server.crt": certificates.server_cert, "server.key": certificates.server_key}
    for name, source in copies.items():
        shutil.copy(source, f"{data}/{name}")
        if os.geteuid() == 0:  # the server runs as postgres and refuses a key others can read
            shutil.chown(f"{data}/{name}", "postgres", "postgres")
    os.chmod(f"{data}/server.key", 0o600)
    with open(f"{data}/postgresql.conf", "a") as conf:
        conf.write("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
    with open(f"{data}/pg_hba.conf", "w") as hba:
        hba.write(_TLS_ONLY_HBA)


@contextlib.contextmanager
def _private_postgres(ssl: bool, durable: bool) -> Iterator[PrivatePostgres]:
    import glob
    import os
    import shutil
    import tempfile
    from pathlib import Path

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        service_missing("the PostgreSQL server binaries (initdb)")
    bin_dir = os.path.dirname(found[-1])
    folder = tempfile.mkdtemp(prefix="aioc-pg-")
    os.chmod(folder, 0o777)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = PrivatePostgres(folder, port, bin_dir, durable=durable)
    try:
        initdb = ["initdb", "-D", f"{folder}/data", "-A", "trust", "-U", "postgres"]
        if ssl:
            server.certificates = make_certificates(Path(folder) / "certs")
            server.password = f"tls-{uuid.uuid4().hex[:12]}"
            Path(folder, "password").write_text(server.password + "\n")
            initdb.append(f"--pwfile={folder}/password")
        server._as_postgres(*initdb)
        if server.certificates is not None:
            _enable_tls(server, server.certificates)
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


async def terminate_backends(
    admin: Any, application_name: str, *, listeners_only: bool = False
) -> int:
    """End the server side of every connection tagged ``application_name``, or of those that
    listen for notifications only; how many."""
    condition = " AND query LIKE 'LISTEN%'" if listeners_only else ""
    return int(
        await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            f" WHERE application_name = $1{condition}",
            application_name,
        )
    )


async def count_backends(admin: Any, application_name: str) -> int:
    """How many connections tagged ``application_name`` the server holds."""
    return int(
        await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", application_name
        )
    )


async def until_waiting_for_a_lock(admin: Any, application_name: str) -> None:
    """Return once a connection tagged ``application_name`` waits for a lock (within 10 s)."""
    with anyio.fail_after(10):
        while not await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = $1 AND wait_event_type = 'Lock'",
            application_name,
        ):
            await anyio.sleep(0.02)


#: Sessions of one application_name idle inside a transaction, and locks they hold.
_IDLE_OR_LOCKED = """SELECT
    (SELECT count(*) FROM pg_stat_activity
        WHERE application_name = $1 AND state LIKE 'idle in transaction%'),
    (SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
        WHERE a.application_name = $1)"""


async def idle_or_locked(admin: Any, application_name: str) -> tuple[int, int]:
    """How many connections tagged ``application_name`` sit idle in a transaction, and how many
    locks they hold."""
    idle, locks = await admin.fetchrow(_IDLE_OR_LOCKED, application_name)
    return int(idle), int(locks)


class AsyncPrivatePostgres:
    """A :class:`PrivatePostgres` driven from async code (``pg_ctl`` runs in a worker thread)."""

    def __init__(self, server: PrivatePostgres) -> None:
        self.server = server

    @property
    def url(self) -> str:
        """The server's URL, no query options."""
        return self.server.url

    async def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        await anyio.to_thread.run_sync(self.server.start)

    async def stop(self) -> None:
        """Stop the server as an operator would (``fast``: every session ended at once)."""
        await anyio.to_thread.run_sync(self.server.stop)

    async def crash(self) -> None:
        """Stop the server as a crash would (``immediate``: no checkpoint, recovery on start)."""
        await anyio.to_thread.run_sync(self.server.stop, "immediate")


@contextlib.asynccontextmanager
async def async_private_postgres(*, durable: bool = False) -> AsyncIterator[AsyncPrivatePostgres]:
    """:func:`private_postgres` for async code: made and started, finally removed."""
    with private_postgres(durable=durable) as server:
        yield AsyncPrivatePostgres(server)


class PurgeOnConflict:
    """An asyncpg connection that runs ``purge`` right after the first insert of a post or a
    tick (which is to write nothing for a held key), before the post reads the holder: the
    race of a purge between those two statements."""

    def __init__(self, conn: Any, purge: Callable[[], Awaitable[Any]]) -> None:
        self._conn = conn
        self._purge = purge
        self.fired = False

    def transaction(self) -> Any:
        return self._conn.transaction()

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await self._conn.fetchrow(query, *args)

    async def fetch(self, query: str, *args: Any) -> Any:
        rows = await self._conn.fetch(query, *args)
        if "INSERT INTO" in query and not self.fired:
            self.fired = True
            await self._purge()
        return rows


def most_rows(plan: dict[str, Any]) -> int:
    """The most rows any step of an ``EXPLAIN (ANALYZE, FORMAT JSON)`` plan gave, all its
    runs together."""
    rows = plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1)
    return max([rows, *(most_rows(step) for step in plan.get("Plans", []))])


# The fixtures of a test module that opens one PostgreSQL space (``space =
# one_space_fixture("postgres")``): import them by name beside it.


@pytest.fixture
def schema(space: PostgresSpace) -> str:
    """The space's schema name."""
    return space.schema


@pytest.fixture
async def admin(space: PostgresSpace) -> Any:
    """The space's own asyncpg connection (not tagged), for checks and kills."""
    return await space.admin()
