"""Every backend the tests run on, described once: a new backend joins every suite here.

The board and store conformance suites, the chaos scenarios, the fault and cancellation tests and
the process tests all read :data:`BACKENDS`. An entry says what the backend can do (a store of
its own, conductors in several processes, a TCP server, connections a test can kill, a private
server to restart) and carries the service's pytest mark. Its :class:`Space` is one isolated place
on it (a memory name, a SQLite file, Redis namespaces suffixed for the space, a PostgreSQL schema,
Kafka topics): it makes board and store URLs inside that place, tags the connections they open
(Redis ``client_name``, PostgreSQL ``application_name``) so a test can count and kill exactly
those, and removes everything when it closes.

Drivers and service helpers are imported when a space opens: a run on memory and SQLite needs
none of them.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest


def with_user(url: str, user: str, password: str) -> str:
    """``url`` with ``user`` and ``password`` as its user part."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


#: How a backend's connections can be killed: ``tagged`` ends every connection a space's URLs
#: opened, in any process (this one included); ``children`` only those of this process's child
#: processes (the broker cannot tell clients apart, so their sockets are reset).
Kills = Literal["tagged", "children"]


def _query(**options: object) -> str:
    return "&".join(f"{key}={value}" for key, value in options.items())


class Space:
    """One isolated place on a backend; made by :meth:`Backend.open`, cleaned up when it ends.

    ``namespace`` arguments are the tests' names; a backend whose namespaces live in a shared
    keyspace stores them under other names (see :meth:`namespace`).
    """

    backend: ClassVar[str]
    #: The server's (host, port), for a proxy in between; None without a server.
    server: tuple[str, int] | None = None
    #: The name the space's connections carry on the server; None where there is none.
    tag: str | None = None

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path

    async def _enter(self) -> None:
        """Reach the service (skip, or fail under CI, when it is missing)."""

    async def _close(self) -> None:
        """Remove everything the space's URLs wrote."""

    def namespace(self, namespace: str) -> str:
        """The name ``namespace`` has on the backend (the same, unless said otherwise)."""
        return namespace

    def board_url(self, namespace: str = "default", **options: object) -> str:
        """A board URL in this space and ``namespace``, with ``options`` in its query."""
        raise NotImplementedError

    def store_url(self, namespace: str = "default", **options: object) -> str:
        """A store URL in this space and ``namespace`` (the board's URL, where the backend has
        a store of its own)."""
        return self.board_url(namespace, **options)

    async def kill_connections(self, *, listeners_only: bool = False) -> int:
        """End the server side of the space's connections (only those that listen for
        notifications, if asked); how many were ended."""
        raise NotImplementedError(f"{self.backend} has no connections to kill")

    async def connections(self) -> int:
        """How many connections of this space the server holds now."""
        raise NotImplementedError(f"{self.backend} has no connections to count")

    def user(self, password: str) -> contextlib.AbstractAsyncContextManager[str]:
        """A user name the server lets in with ``password``, while the block runs."""
        raise NotImplementedError(f"{self.backend} takes no password")


class MemorySpace(Space):
    """A memory board and store name of the space's own."""

    backend = "memory"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self._name = f"space-{uuid.uuid4().hex}"

    def board_url(self, namespace: str = "default", **options: object) -> str:
        return f"memory://{self._name}?" + _query(namespace=namespace, **options)


class SqliteSpace(Space):
    """A SQLite file of the space's own in the test's ``tmp_path``; it goes with the folder."""

    backend = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.path = tmp_path / f"space-{uuid.uuid4().hex[:8]}.db"

    def board_url(self, namespace: str = "default", **options: object) -> str:
        return f"sqlite:///{self.path}?" + _query(namespace=namespace, **options)


class RedisSpace(Space):
    """The test database (DB 9), every namespace suffixed for this space; the keys of those
    namespaces are deleted at the end. Connections are named ``tag`` (``client_name``)."""

    backend = "redis"
    tag: str

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.tag = f"aioc-space-{uuid.uuid4().hex[:10]}"
        self._namespaces: dict[str, str] = {}

    async def _enter(self) -> None:
        from tests.redis_helpers import redis_url, require_redis

        #: A sync client on the test database, for checks and kills.
        self.client = require_redis()
        self._base = redis_url()
        parts = urlsplit(self._base)
        self.server = (parts.hostname or "127.0.0.1", parts.port or 6379)

    async def _close(self) -> None:
        from tests.redis_helpers import delete_namespaces

        try:
            delete_namespaces(self.client, list(self._namespaces.values()))
        finally:
            self.client.close()

    def namespace(self, namespace: str) -> str:
        from tests.redis_helpers import unique

        return self._namespaces.setdefault(namespace, unique(namespace))

    def board_url(self, namespace: str = "default", **options: object) -> str:
        query = _query(namespace=self.namespace(namespace), client_name=self.tag, **options)
        return f"{self._base}?{query}"

    async def kill_connections(self, *, listeners_only: bool = False) -> int:
        from tests.redis_helpers import kill_clients

        return await anyio.to_thread.run_sync(
            lambda: kill_clients(self.client, self.tag, subscribers_only=listeners_only)
        )

    async def connections(self) -> int:
        from tests.redis_helpers import clients

        return len(await anyio.to_thread.run_sync(clients, self.client, self.tag))

    @contextlib.asynccontextmanager
    async def user(self, password: str) -> AsyncIterator[str]:
        # An ACL user of its own, allowed everything, removed at the end.
        name = f"aioc_user_{uuid.uuid4().hex[:8]}"
        self.client.acl_setuser(
            name, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"],
            commands=["+@all"],
        )  # fmt: skip
        try:
            yield name
        finally:
            self.client.acl_deluser(name)


class PostgresSpace(Space):
    """A schema of the space's own on the test server, dropped at the end. Connections carry
    ``tag`` as their ``application_name``."""

    backend = "postgres"
    tag: str

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.tag = f"aioc_space_{uuid.uuid4().hex[:10]}"
        self._admin: Any = None

    async def _enter(self) -> None:
        from tests.postgres_helpers import require_postgres, unique_schema

        parts = urlsplit(require_postgres())
        self.server = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.schema = unique_schema()

    async def _close(self) -> None:
        from tests.postgres_helpers import drop_schemas

        try:
            if self._admin is not None:
                await self._admin.close()
        finally:
            await drop_schemas(self.schema)

    async def admin(self) -> Any:
        """An asyncpg connection of the test's own (not tagged), for checks and kills."""
        if self._admin is None:
            import asyncpg  # type: ignore[import-untyped]

            from tests.conftest import POSTGRES_URL

            self._admin = await asyncpg.connect(POSTGRES_URL)
        return self._admin

    def board_url(self, namespace: str = "default", **options: object) -> str:
        from tests.postgres_helpers import url

        return url(self.schema, namespace, application_name=self.tag, **options)

    async def kill_connections(self, *, listeners_only: bool = False) -> int:
        from tests.postgres_helpers import terminate_backends

        admin = await self.admin()
        return await terminate_backends(admin, self.tag, listeners_only=listeners_only)

    async def connections(self) -> int:
        from tests.postgres_helpers import count_backends

        return await count_backends(await self.admin(), self.tag)

    @contextlib.asynccontextmanager
    async def user(self, password: str) -> AsyncIterator[str]:
        # The test server trusts its clients (trust authentication): any password is let in.
        yield urlsplit(self.board_url()).username or "postgres"


class KafkaSpace(Space):
    """Topics of the space's own on the test broker (started on first use; it keeps them in
    memory, nothing to drop). Kafka keeps no flow progress: the store is a SQLite file."""

    backend = "kafka"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self._topic = f"space-{uuid.uuid4().hex[:12]}"
        self._store = SqliteSpace(tmp_path)

    async def _enter(self) -> None:
        from tests.kafka_helpers import require_kafka

        host, _, port = require_kafka().split(",")[0].rpartition(":")
        self.server = (host, int(port))

    def board_url(self, namespace: str = "default", **options: object) -> str:
        from tests.kafka_helpers import kafka_url

        return kafka_url(self._topic, namespace, **options)

    def store_url(self, namespace: str = "default", **options: object) -> str:
        return self._store.board_url(namespace, **options)

    async def kill_connections(self, *, listeners_only: bool = False) -> int:
        # Only this process's children (the conductors): see Kills.
        from tests.kafka_helpers import kill_server_sockets

        assert not listeners_only, "Kafka has no listening connections apart"
        assert self.server is not None
        return await kill_server_sockets(self.server)


class PrivateServer(Protocol):
    """A server of the test's own, which it may stop, crash and start at will."""

    @property
    def url(self) -> str:
        """The server's URL, no query options."""
        ...

    async def start(self) -> None:
        """Start it and wait until it serves."""
        ...

    async def stop(self) -> None:
        """Stop it as an operator would: every connection ended."""
        ...

    async def crash(self) -> None:
        """Kill it: only what it wrote to disk survives."""
        ...


PrivateServerContext = contextlib.AbstractAsyncContextManager[PrivateServer]


def _private_redis(tmp_path: Path) -> PrivateServerContext:
    from tests.redis_helpers import private_redis

    return private_redis(tmp_path / f"redis-{uuid.uuid4().hex[:8]}")


def _private_postgres(tmp_path: Path) -> PrivateServerContext:
    from tests.postgres_helpers import async_private_postgres

    # Durable: a crash must not lose what the server acknowledged (Redis's is fsynced too).
    return async_private_postgres(durable=True)


@dataclass(frozen=True)
class Backend:
    """One backend, as every suite sees it."""

    name: str
    space: Callable[[Path], Space]
    #: The service's marks (so ``-m 'not redis'`` and CI's skip-or-fail rule apply).
    marks: tuple[pytest.MarkDecorator, ...] = ()
    #: Whether it has a store of its own (the store suite runs on it).
    store: bool = True
    #: Whether conductors in separate processes can share it.
    processes: bool = False
    #: Whether it is a TCP server (a proxy can sit in front of it).
    server: bool = False
    #: How its connections can be killed, if they can.
    kills: Kills | None = None
    #: Whether its server takes a user and password (see :meth:`Space.user`).
    passwords: bool = False
    #: A server of the test's own to stop and start, if the backend has one.
    private_server: Callable[[Path], PrivateServerContext] | None = None

    def param(self, *values: object, id: str | None = None) -> Any:
        """``pytest.param`` of this backend's name (and ``values``), with its marks; its id is
        the name unless given."""
        return pytest.param(self.name, *values, marks=list(self.marks), id=id or self.name)

    @contextlib.asynccontextmanager
    async def open(self, tmp_path: Path) -> AsyncIterator[Space]:
        """A fresh space; everything in it is removed when the block ends."""
        space = self.space(tmp_path)
        await space._enter()
        try:
            yield space
        finally:
            with anyio.CancelScope(shield=True):  # a cancelled test still cleans up the server
                await space._close()


#: What a shared database server (Redis, PostgreSQL) gives the tests.
_SHARED_SERVER: dict[str, Any] = {
    "processes": True,
    "server": True,
    "kills": "tagged",
    "passwords": True,
}
BACKENDS = [
    Backend("memory", MemorySpace),
    Backend("sqlite", SqliteSpace, processes=True),
    Backend(
        "redis", RedisSpace, (pytest.mark.redis,), private_server=_private_redis, **_SHARED_SERVER
    ),
    Backend(
        "postgres",
        PostgresSpace,
        (pytest.mark.postgres,),
        private_server=_private_postgres,
        **_SHARED_SERVER,
    ),
    Backend(
        "kafka",
        KafkaSpace,
        (pytest.mark.kafka,),
        store=False,
        processes=True,
        server=True,
        kills="children",
    ),
]
BY_NAME = {backend.name: backend for backend in BACKENDS}


def chosen(
    *,
    store: bool = False,
    processes: bool = False,
    server: bool = False,
    kills: Kills | None = None,
    passwords: bool = False,
    private_server: bool = False,
) -> list[Backend]:
    """The backends that have everything asked for."""
    return [
        b
        for b in BACKENDS
        if (b.store or not store)
        and (b.processes or not processes)
        and (b.server or not server)
        and (kills is None or b.kills == kills)
        and (b.passwords or not passwords)
        and (b.private_server is not None or not private_server)
    ]


def params(**where: Any) -> list[Any]:
    """``pytest.param`` of every backend :func:`chosen` by ``where``, with its marks: for
    ``@pytest.mark.parametrize("space", params(...), indirect=True)``, or for a parameter that
    takes a backend's name."""
    return [backend.param() for backend in chosen(**where)]


def one_space_fixture(name: str) -> Any:
    """A fixture ``space`` for the tests of one backend: a fresh space on ``name`` for each
    test (``space = one_space_fixture("redis")`` in the module). Tests of several backends ask
    for the shared ``space`` fixture (``tests/conftest.py``) instead."""

    @pytest.fixture
    async def space(tmp_path: Path) -> AsyncIterator[Space]:
        async with BY_NAME[name].open(tmp_path) as opened:
            yield opened

    return space


def board_fixture(namespace: str, **options: Any) -> Any:
    """A fixture ``board``: a connected board in the test's ``space`` and ``namespace``, opened
    with ``options`` (``board = board_fixture("ns", lease=5.0)`` in the module)."""
    from aioconductor.boards import JobBoard, open_board

    @pytest.fixture
    async def board(space: Space) -> AsyncIterator[JobBoard]:
        async with open_board(space.board_url(namespace), **options) as opened:
            yield opened

    return board


def store_fixture(namespace: str) -> Any:
    """A fixture ``store``: a connected store in the test's ``space`` and ``namespace``
    (``store = store_fixture("ns")`` in the module)."""
    from aioconductor.persistence import Store, open_store

    @pytest.fixture
    async def store(space: Space) -> AsyncIterator[Store]:
        async with open_store(space.store_url(namespace)) as opened:
            yield opened

    return store
