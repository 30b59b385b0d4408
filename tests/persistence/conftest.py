"""Store backends for the conformance suite: every backend of ``tests/backends.py`` that has a
store of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aioconductor.persistence import Store, open_store
from tests.backends import BY_NAME, Opened, params


class StoreBackend(Opened[Store]):
    """Opens stores in one space of a backend (one server or file), in any namespace."""

    def store(self, namespace: str = "conformance", **kwargs: Any) -> Store:
        """A store (not yet connected) on this backend in ``namespace``; closed at teardown."""
        return self._keep(open_store(self.space.store_url(namespace), **kwargs))

    async def open(self, namespace: str = "conformance", **kwargs: Any) -> Store:
        """A connected store on this backend in ``namespace``; closed at teardown."""
        store = self.store(namespace, **kwargs)
        await store.connect()
        return store


@pytest.fixture(params=params(store=True))
async def store_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreBackend]:
    """Each store backend in turn; every store it opened is closed after the test."""
    async with BY_NAME[request.param].open(tmp_path) as space, StoreBackend(space) as backend:
        yield backend


@pytest.fixture
async def store(store_backend: StoreBackend) -> Store:
    """A connected store on each backend."""
    return await store_backend.open()
