"""Board backends for the conformance suite: a new backend joins by adding one entry here."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aioconductor.boards import JobBoard, open_board

_names = itertools.count()


class BoardBackend:
    """Opens boards on one backend instance (same server or file), in any namespace."""

    def __init__(self, name: str, make_url: Callable[[str], str]) -> None:
        self.name = name
        self._make_url = make_url
        self._opened: list[JobBoard] = []

    def open(self, namespace: str = "conformance", **kwargs: Any) -> JobBoard:
        """A board (not yet connected) on this backend in ``namespace``."""
        board = open_board(self._make_url(namespace), **kwargs)
        self._opened.append(board)
        return board

    async def close_all(self) -> None:
        for board in self._opened:
            await board.aclose()


def _memory(tmp_path: Path) -> BoardBackend:
    shared = f"conformance-{uuid.uuid4().hex}"
    return BoardBackend("memory", lambda ns: f"memory://{shared}?namespace={ns}")


def _sqlite(tmp_path: Path) -> BoardBackend:
    path = tmp_path / f"jobs-{next(_names)}.db"
    return BoardBackend("sqlite", lambda ns: f"sqlite:///{path}?namespace={ns}")


class _RedisBackend(BoardBackend):
    """Redis DB 9, every namespace suffixed for this run; its keys are deleted afterwards."""

    def __init__(self) -> None:
        # Imported here: the redis driver is an extra, and memory/sqlite runs need none.
        from tests.redis_helpers import redis_url, require_redis, unique

        self._client = require_redis()
        self._namespaces: dict[str, str] = {}

        def make_url(ns: str) -> str:
            suffixed = self._namespaces.setdefault(ns, unique(ns))
            return f"{redis_url()}?namespace={suffixed}"

        super().__init__("redis", make_url)

    async def close_all(self) -> None:
        from tests.redis_helpers import delete_namespaces

        try:
            await super().close_all()
        finally:
            delete_namespaces(self._client, list(self._namespaces.values()))
            self._client.close()


def _redis(tmp_path: Path) -> BoardBackend:
    return _RedisBackend()


class _PostgresBackend(BoardBackend):
    """A schema of this test's own on the PostgreSQL server, dropped afterwards."""

    def __init__(self) -> None:
        from tests.postgres_helpers import require_postgres, unique_schema, url

        require_postgres()
        self._schema = unique_schema()
        super().__init__("postgres", lambda ns: url(self._schema, ns))

    async def close_all(self) -> None:
        from tests.postgres_helpers import drop_schemas

        try:
            await super().close_all()
        finally:
            await drop_schemas(self._schema)


def _postgres(tmp_path: Path) -> BoardBackend:
    return _PostgresBackend()


def _kafka(tmp_path: Path) -> BoardBackend:
    # Topics of this test's own on the test broker (started on first use); nothing to drop.
    from tests.kafka_helpers import kafka_url, require_kafka, unique_topic

    require_kafka()
    topic = unique_topic("conformance")
    return BoardBackend("kafka", lambda ns: kafka_url(topic, ns))


BACKENDS: dict[str, Callable[[Path], BoardBackend]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "postgres": _postgres,
    "kafka": _kafka,
}
#: Marks of the backends that need a service.
_MARKS = {
    "redis": [pytest.mark.redis],
    "postgres": [pytest.mark.postgres],
    "kafka": [pytest.mark.kafka],
}


@pytest.fixture(params=[pytest.param(name, marks=_MARKS.get(name, [])) for name in BACKENDS])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BoardBackend]:
    """Every board backend in turn."""
    instance = BACKENDS[request.param](tmp_path)
    try:
        yield instance
    finally:
        await instance.close_all()


@pytest.fixture
async def board(backend: BoardBackend) -> AsyncIterator[JobBoard]:
    """A connected board with short leases and a fast sweep, for timing-dependent tests."""
    async with backend.open(lease=5.0, poll_interval=0.05) as connected:
        yield connected
