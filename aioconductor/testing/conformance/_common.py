"""What the conformance suites are given (a way to open boards and stores) and share."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, Protocol, Self, TypeVar

import anyio

from aioconductor.boards import JobBoard
from aioconductor.models import Job
from aioconductor.models import JobNotification
from aioconductor.persistence import Store

__all__ = [
    "SHORT_LEASE",
    "BoardOpener",
    "Opened",
    "OpenedBoards",
    "OpenedStores",
    "StoreOpener",
    "collect",
    "snapshot",
    "subscribed",
    "two_boards",
]

#: A lease the suites wait out.
SHORT_LEASE = 0.3

R = TypeVar("R", JobBoard, Store)


class BoardOpener(Protocol):
    """The suites' ``backend`` fixture: opens boards of one backend instance (one server, one
    database, one file), each in the namespace asked for."""

    def open(self, namespace: str = "conformance", **kwargs: Any) -> JobBoard:
        """A board in ``namespace``, not yet connected; closed by the fixture after the test."""
        ...


class StoreOpener(Protocol):
    """The suites' ``store_backend`` fixture: opens stores of one backend instance."""

    def store(self, namespace: str = "conformance", **kwargs: Any) -> Store:
        """A store in ``namespace``, not yet connected; closed by the fixture after the test."""
        ...

    async def open(self, namespace: str = "conformance", **kwargs: Any) -> Store:
        """A connected store in ``namespace``; closed by the fixture after the test."""
        ...


class Opened(Generic[R]):
    """The boards or stores a function makes for a namespace, every one closed when the
    ``async with`` block ends (:class:`OpenedBoards`, :class:`OpenedStores`).

    Args:
        make: ``make(namespace, **kwargs)``, a board or store not yet connected.
    """

    def __init__(self, make: Callable[..., R]) -> None:
        self._make: Callable[..., R] = make
        self._opened: list[R] = []

    def _made(self, namespace: str, **kwargs: Any) -> R:
        resource = self._make(namespace, **kwargs)
        self._opened.append(resource)
        return resource

    async def close_all(self) -> None:
        """Close every board or store made here."""
        for resource in self._opened:
            await resource.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close_all()


class OpenedBoards(Opened[JobBoard]):
    """A :class:`BoardOpener` from a function that makes a board for a namespace."""

    def open(self, namespace: str = "conformance", **kwargs: Any) -> JobBoard:
        """A board in ``namespace``, not yet connected."""
        return self._made(namespace, **kwargs)


class OpenedStores(Opened[Store]):
    """A :class:`StoreOpener` from a function that makes a store for a namespace."""

    def store(self, namespace: str = "conformance", **kwargs: Any) -> Store:
        """A store in ``namespace``, not yet connected."""
        return self._made(namespace, **kwargs)

    async def open(self, namespace: str = "conformance", **kwargs: Any) -> Store:
        """A connected store in ``namespace``."""
        store = self.store(namespace, **kwargs)
        await store.connect()
        return store


async def snapshot(board: JobBoard) -> list[Job]:
    """Every job on ``board``, in claim order."""
    return [job async for job in board.iterjobs()]


async def collect(board: JobBoard, count: int, within: float = 5.0) -> list[JobNotification]:
    """The first ``count`` notifications of a fresh stream."""
    notes: list[JobNotification] = []
    with anyio.fail_after(within):
        async with contextlib.aclosing(board.stream()) as stream:
            async for note in stream:
                notes.append(note)
                if len(notes) == count:
                    break
    return notes


@contextlib.asynccontextmanager
async def subscribed(
    board: JobBoard, marker: Job, within: float = 5.0
) -> AsyncIterator[AsyncIterator[JobNotification]]:
    """``board``'s notification stream, once it is subscribed: it has announced ``marker``, a
    claimable job posted before the stream was opened (a stream announces those at its start).
    What came before the marker is skipped."""
    async with contextlib.aclosing(board.stream()) as stream:
        iterator = aiter(stream)
        with anyio.fail_after(within):
            while (await anext(iterator)).job_id != marker.id:
                pass
        yield iterator


@contextlib.asynccontextmanager
async def two_boards(
    backend: BoardOpener, **kwargs: Any
) -> AsyncIterator[tuple[JobBoard, JobBoard]]:
    """Two board objects on one backend instance and namespace (as two processes would have),
    connected, each opened with ``kwargs``."""
    async with backend.open(**kwargs) as first, backend.open(**kwargs) as second:
        yield first, second
