"""Store backends for the conformance suite: every backend of ``tests/backends.py`` that has a
store of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aioconductor.persistence import Store, open_store
from aioconductor.testing.conformance import OpenedStores
from tests.backends import BY_NAME, Space, params


class StoreBackend(OpenedStores):
    """Opens stores in one space of a backend (one server or file), in any namespace; each is
    closed at teardown."""

    def __init__(self, space: Space) -> None:
        super().__init__(
            lambda namespace, **kwargs: open_store(space.store_url(namespace), **kwargs)
        )
        self.space = space
        self.name = space.backend


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
