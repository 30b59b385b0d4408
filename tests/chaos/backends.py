"""The backends the chaos scenarios run on: a new backend joins with one entry in ``BACKENDS``.

Each entry opens an isolated place on its backend (a file, a Redis namespace, a PostgreSQL schema)
and yields a :class:`Target`: the board and store URLs for conductors, the server's address (for
the TCP proxy) and a hook that kills the library's server connections.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

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

    def through(self, host: str, port: int) -> Target:
        """This target reached through ``host:port`` (a proxy) instead of the server."""

        def swap(url: str) -> str:
            parts = urlsplit(url)
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
    # Kafka joins here: Backend("kafka", _kafka, processes=True, network=True,
    # marks=(pytest.mark.kafka,)), where _kafka yields a Target with the test broker's board URL
    # (tests/kafka_helpers.py), a store URL of another backend (Kafka has no store: a SQLite
    # file under tmp_path will do), the broker's address for the proxy and, if it can, a hook
    # that kills the library's connections.
]
BY_NAME = {backend.name: backend for backend in BACKENDS}


def backend_params(*, processes: bool = False, network: bool = False) -> list[Any]:
    """``pytest.param`` for every backend fit for a scenario, with its service mark."""
    return [
        pytest.param(b.name, marks=list(b.marks), id=b.name)
        for b in BACKENDS
        if (b.processes or not processes) and (b.network or not network)
    ]
