"""The backends the chaos scenarios run on: a new backend joins with one entry in ``BACKENDS``.

Each entry opens an isolated place on its backend (a file, a Redis namespace, a PostgreSQL schema)
and yields a :class:`Target`: the board and store URLs for conductors, the server's address (for
the TCP proxy) and a hook that kills the library's server connections.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

from .proxy import ChaosProxy, KafkaChaosProxy

T = TypeVar("T")

#: ``full`` runs the issue's numbers (``nox -s chaos``); anything else the bounded CI run.
FULL = os.environ.get("AIOCONDUCTOR_CHAOS_SCALE", "bounded").lower() == "full"


def scale(bounded: T, full: T) -> T:
    """``full`` under ``AIOCONDUCTOR_CHAOS_SCALE=full``, else ``bounded``."""
    return full if FULL else bounded


@dataclass
class Target:
    """Where one scenario's conductors meet: board and store URLs on one isolated place."""

    backend: str
    board_url: str
    store_url: str
    #: The server's (host, port), for a proxy in between; None without a server.
    server: tuple[str, int] | None = None
    #: Kills the server side of the library's connections; returns how many.
    kill_connections: Callable[[], Awaitable[int]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The proxy that can sit in front of the server (Kafka's rewrites advertised addresses).
    proxy: type[ChaosProxy] = ChaosProxy

    def through(self, host: str, port: int) -> Target:
        """This target reached through ``host:port`` (a proxy) instead of the server (a URL
        without a host, such as a SQLite store's, stays as it is)."""

        def swap(url: str) -> str:
            parts = urlsplit(url)
            if not parts.hostname:
                return url
            netloc = parts.netloc.rsplit("@", 1)
            userinfo = f"{netloc[0]}@" if len(netloc) == 2 else ""
            return urlunsplit(parts._replace(netloc=f"{userinfo}{host}:{port}"))

        return replace(self, board_url=swap(self.board_url), store_url=swap(self.store_url))


@contextlib.asynccontextmanager
async def _memory(tmp_path: Path) -> AsyncIterator[Target]:
    name = f"chaos-{uuid.uuid4().hex}"
    yield Target("memory", f"memory://{name}?namespace=chaos", f"memory://{name}?namespace=chaos")


@contextlib.asynccontextmanager
async def _sqlite(tmp_path: Path) -> AsyncIterator[Target]:
    url = f"sqlite:///{tmp_path / f'chaos-{uuid.uuid4().hex[:8]}.db'}?namespace=chaos"
    yield Target("sqlite", url, url)


@contextlib.asynccontextmanager
async def _redis(tmp_path: Path) -> AsyncIterator[Target]:
    from tests.redis_helpers import (
        delete_namespaces,
        kill_clients,
        redis_url,
        require_redis,
        unique,
    )

    client = require_redis()
    namespace, name = unique("chaos"), f"aioc-chaos-{uuid.uuid4().hex[:8]}"

    async def kill() -> int:
        return kill_clients(client, name)

    parts = urlsplit(redis_url())
    url = f"{redis_url()}?namespace={namespace}&client_name={name}"
    try:
        yield Target("redis", url, url, (parts.hostname or "127.0.0.1", parts.port or 6379), kill)
    finally:
        delete_namespaces(client, [namespace])
        client.close()


@contextlib.asynccontextmanager
async def _postgres(tmp_path: Path) -> AsyncIterator[Target]:
    import asyncpg  # type: ignore[import-untyped]

    from tests.conftest import POSTGRES_URL
    from tests.postgres_helpers import (
        drop_schemas,
        require_postgres,
        terminate_backends,
        unique_schema,
        url,
    )

    require_postgres()
    schema, name = unique_schema(), f"aioc-chaos-{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(POSTGRES_URL)

    async def kill() -> int:
        return await terminate_backends(admin, name)

    # Small pools: several conductor processes (board, store, listener each) must stay well
    # within the server's max_connections, which other test runs share.
    board_url = url(schema, "chaos", application_name=name, pool_max="2")
    parts = urlsplit(POSTGRES_URL)
    try:
        yield Target(
            "postgres",
            board_url,
            board_url,
            (parts.hostname or "127.0.0.1", parts.port or 5432),
            kill,
        )
    finally:
        await admin.close()
        await drop_schemas(schema)


def _children_connections(server: tuple[str, int]) -> list[int]:
    """The local ports of the TCP connections to ``server``'s port made by this process's child
    processes (the conductors; not this process's own board)."""
    listing = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( dport = :{server[1]} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ports = []
    for line in listing.splitlines():
        fields = line.split()
        pids = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        if len(fields) >= 3 and any(_parent(pid) == os.getpid() for pid in pids):
            ports.append(int(fields[2].rsplit(":", 1)[1]))
    return ports


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


async def kill_server_sockets(server: tuple[str, int]) -> int:
    """Reset the conductor processes' connections to ``server`` as if the server dropped them;
    how many were reset.

    ``ss -K`` makes the kernel destroy a socket (and send a reset to its peer). The server's side
    is destroyed when the server runs on this machine, else the conductors' side.
    """
    import anyio

    from tests.conftest import service_missing

    if shutil.which("ss") is None:
        service_missing("the ss command (iproute2), to kill connections to Kafka")
    ports = await anyio.to_thread.run_sync(_children_connections, server)
    if not ports:
        return 0
    clients = " or ".join(f"{{side}} = :{port}" for port in ports)
    killed = 0
    for here, there in (("sport", "dport"), ("dport", "sport")):
        expression = f"( {here} = :{server[1]} ) and ( {clients.format(side=there)} )"
        done = await anyio.run_process(["ss", "-K", "-Htn", expression])
        # ss prints the sockets it destroyed, and skips silently those it could not.
        killed = len(done.stdout.decode().splitlines())
        if killed:
            break
    return killed


@contextlib.asynccontextmanager
async def _kafka(tmp_path: Path) -> AsyncIterator[Target]:
    from tests.kafka_helpers import kafka_url, require_kafka, unique_topic

    # Topics of this scenario's own on the test broker (started once per test process).
    host, _, port = require_kafka().split(",")[0].rpartition(":")
    server = (host, int(port))
    # Kafka has no store: the conductors (all on this machine) share a SQLite file. So the chaos
    # proxy and the connection kills reach the board's traffic only, not the store's.
    store_url = f"sqlite:///{tmp_path / f'chaos-store-{uuid.uuid4().hex[:8]}.db'}?namespace=chaos"

    async def kill() -> int:
        return await kill_server_sockets(server)

    # Tansu (the test broker) answers a fetch empty when finding its records takes longer than
    # the fetch's wait, and that grows with the partition (about 0.5 ms per 1,000 batches): the
    # full scale writes tens of thousands of state records, past what a 10 ms wait reaches on a
    # busy machine (renewals then stall until their leases run out). A real Kafka answers as soon
    # as records are there, whatever the wait.
    board_url = kafka_url(unique_topic("chaos"), "chaos", fetch_wait_ms=scale(10, 50))
    yield Target(
        "kafka",
        board_url,
        store_url,
        server,
        kill,
        proxy=KafkaChaosProxy,
    )


@dataclass(frozen=True)
class Backend:
    name: str
    open: Callable[[Path], contextlib.AbstractAsyncContextManager[Target]]
    #: Whether conductors in separate processes can share it.
    processes: bool
    #: Whether it is a TCP server the chaos proxy can sit in front of.
    network: bool
    marks: tuple[pytest.MarkDecorator, ...] = ()


BACKENDS = [
    Backend("memory", _memory, processes=False, network=False),
    Backend("sqlite", _sqlite, processes=True, network=False),
    Backend("redis", _redis, processes=True, network=True, marks=(pytest.mark.redis,)),
    Backend("postgres", _postgres, processes=True, network=True, marks=(pytest.mark.postgres,)),
    Backend("kafka", _kafka, processes=True, network=True, marks=(pytest.mark.kafka,)),
]
BY_NAME = {backend.name: backend for backend in BACKENDS}


def backend_params(*, processes: bool = False, network: bool = False) -> list[Any]:
    """``pytest.param`` for every backend fit for a scenario, with its service mark."""
    return [
        pytest.param(b.name, marks=list(b.marks), id=b.name)
        for b in BACKENDS
        if (b.processes or not processes) and (b.network or not network)
    ]
