"""`open_board(url)`: pick a board backend by the URL's scheme, importing its driver lazily."""

from __future__ import annotations

from typing import Any

from aioconductor._urls import open_url
from aioconductor.boards.base import JobBoard

__all__ = ["open_board"]

#: scheme -> (module, class, extra to install)
_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("aioconductor.boards.memory", "MemoryJobBoard", None),
    "sqlite": ("aioconductor.boards.sqlite", "SqliteJobBoard", None),
    "redis": ("aioconductor.boards.redis", "RedisJobBoard", "redis"),
    "rediss": ("aioconductor.boards.redis", "RedisJobBoard", "redis"),
    "postgresql": ("aioconductor.boards.postgres", "PostgresJobBoard", "postgres"),
    "postgres": ("aioconductor.boards.postgres", "PostgresJobBoard", "postgres"),
    "kafka": ("aioconductor.boards.kafka", "KafkaJobBoard", "kafka"),
}


def open_board(url: str, **kwargs: Any) -> JobBoard:
    """A board for ``url``, not yet connected: use it as ``async with open_board(url) as board``.

    Schemes: ``memory://`` (private) or ``memory://NAME`` (shared in this process),
    ``sqlite:///path/to/jobs.db``, ``redis://``, ``postgresql://``, ``kafka://``. Every URL takes
    ``?namespace=NAME``; the board's own options (``max_payload_bytes``, ``lease``,
    ``poll_interval``, ...) are removed before the URL reaches the driver, and so are its store's
    options on the same backend: one URL serves a board and a store.

    Raises:
        ConfigurationError: unknown scheme or bad option.
        DependencyMissing: the backend's driver is not installed (names the extra).
    """
    board: JobBoard = open_url(url, _BACKENDS, "board", kwargs)
    return board
