"""The fixtures the conformance suites ask for beside ``backend`` and ``store_backend`` (which
you give): load with ``pytest_plugins = ["aioconductor.testing.conformance.fixtures"]``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from aioconductor.boards import JobBoard
from aioconductor.persistence import Store
from aioconductor.testing.conformance._common import BoardOpener
from aioconductor.testing.conformance._common import StoreOpener

__all__ = ["board", "store"]


@pytest.fixture
async def board(backend: BoardOpener) -> AsyncIterator[JobBoard]:
    """A connected board with short leases and a fast sweep, for timing-dependent tests."""
    async with backend.open(lease=5.0, poll_interval=0.05) as connected:
        yield connected


@pytest.fixture
async def store(store_backend: StoreOpener) -> Store:
    """A connected store."""
    return await store_backend.open()
