"""Board backends for the conformance suite: every backend of ``tests/backends.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aioconductor.boards import JobBoard, open_board
from tests.backends import BY_NAME, Opened, params


class BoardBackend(Opened[JobBoard]):
    """Opens boards in one space of a backend (same server or file), in any namespace."""

    def url(self, namespace: str = "conformance") -> str:
        """The URL of a board in ``namespace``."""
        return self.space.board_url(namespace)

    def open(self, namespace: str = "conformance", **kwargs: Any) -> JobBoard:
        """A board (not yet connected) on this backend in ``namespace``; closed at teardown."""
        return self._keep(open_board(self.url(namespace), **kwargs))


@pytest.fixture(params=params())
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BoardBackend]:
    """Every board backend in turn; every board it opened is closed after the test."""
    async with BY_NAME[request.param].open(tmp_path) as space, BoardBackend(space) as instance:
        yield instance


@pytest.fixture
async def board(backend: BoardBackend) -> AsyncIterator[JobBoard]:
    """A connected board with short leases and a fast sweep, for timing-dependent tests."""
    async with backend.open(lease=5.0, poll_interval=0.05) as connected:
        yield connected
