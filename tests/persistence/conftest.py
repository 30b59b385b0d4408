"""Store backends for the conformance suite: a new backend joins by adding one entry to BACKENDS.

An entry is a ``pytest.param`` of a function that builds a :class:`StoreBackend` from the test's
``tmp_path``. A server backend (Redis, PostgreSQL) subclasses it to suffix each namespace for the
run and to delete what the test wrote in ``close_all``, and its param carries the service's
marker, for example ``pytest.param(_redis, id="redis", marks=pytest.mark.redis)``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aioconductor.persistence import Store, open_store


class StoreBackend:
    """Opens stores on one backend instance (one server or file), in any namespace.

    Args:
        name: the backend's name, as in the test ids.
        make_url: the store URL for a namespace.
    """

    def __init__(self, name: str, make_url: Callable[[str], str]) -> None:
        self.name = name
        self._make_url = make_url
        self._opened: list[Store] = []

    def store(self, namespace: str = "conformance", **kwargs: Any) -> Store:
        """A store (not yet connected) on this backend in ``namespace``; closed at teardown."""
        store = open_store(self._make_url(namespace), **kwargs)
        self._opened.append(store)
        return store

    async def open(self, namespace: str = "conformance", **kwargs: Any) -> Store:
        """A connected store on this backend in ``namespace``; closed at teardown."""
        store = self.store(namespace, **kwargs)
        await store.connect()
        return store

    async def close_all(self) -> None:
        """Close every store this backend opened."""
        for store in self._opened:
            await store.aclose()


def _memory(tmp_path: Path) -> StoreBackend:
    shared = f"conformance-{uuid.uuid4().hex}"
    return StoreBackend("memory", lambda ns: f"memory://{shared}?namespace={ns}")


def _sqlite(tmp_path: Path) -> StoreBackend:
    path = tmp_path / "store.db"
    return StoreBackend("sqlite", lambda ns: f"sqlite:///{path}?namespace={ns}")


class _RedisStoreBackend(StoreBackend):
    """Redis DB 9, every namespace suffixed for this run; its keys are deleted afterwards."""

    def __init__(self) -> None:
        from tests.redis_helpers import redis_url, require_redis, unique

        self._client = require_redis()
        self._namespaces: dict[str, str] = {}

        def make_url(ns: str) -> str:
            return f"{redis_url()}?namespace={self._namespaces.setdefault(ns, unique(ns))}"

        super().__init__("redis", make_url)

    async def close_all(self) -> None:
        from tests.redis_helpers import delete_namespaces

        try:
            await super().close_all()
        finally:
            delete_namespaces(self._client, list(self._namespaces.values()))
            self._client.close()


def _redis(tmp_path: Path) -> StoreBackend:
    return _RedisStoreBackend()


class _PostgresStoreBackend(StoreBackend):
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


def _postgres(tmp_path: Path) -> StoreBackend:
    return _PostgresStoreBackend()


BACKENDS = [
    pytest.param(_memory, id="memory"),
    pytest.param(_sqlite, id="sqlite"),
    pytest.param(_redis, id="redis", marks=pytest.mark.redis),
    pytest.param(_postgres, id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
async def store_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreBackend]:
    """Each store backend in turn; every store it opened is closed after the test."""
    make: Callable[[Path], StoreBackend] = request.param
    backend = make(tmp_path)
    try:
        yield backend
    finally:
        await backend.close_all()


@pytest.fixture
async def store(store_backend: StoreBackend) -> Store:
    """A connected store on each backend."""
    return await store_backend.open()
