"""Board backends for the conformance suite: every backend of ``tests/backends.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aioconductor.boards import JobBoard, open_board
from aioconductor.testing.conformance import OpenedBoards
from tests.backends import BY_NAME, Space, params


class BoardBackend(OpenedBoards):
    """Opens boards in one space of a backend (same server or file), in any namespace; each
    is closed at teardown."""

    def __init__(self, space: Space) -> None:
        super().__init__(lambda namespace, **kwargs: open_board(self.url(namespace), **kwargs))
        self.space = space
        self.name = space.backend

    def url(self, namespace: str = "conformance") -> str:
        """The URL of a board in ``namespace``."""
        return self.space.board_url(namespace)


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
