"""`open_store(url)`: pick a store backend by the URL's scheme, importing its driver lazily."""

from __future__ import annotations

from typing import Any

from aioconductor._urls import open_url
from aioconductor.persistence.base import Store

__all__ = ["open_store"]

#: scheme -> (module, class, extra to install)
_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("aioconductor.persistence.memory", "MemoryStore", None),
    "sqlite": ("aioconductor.persistence.sqlite", "SqliteStore", None),
    "redis": ("aioconductor.persistence.redis", "RedisStore", "redis"),
    "rediss": ("aioconductor.persistence.redis", "RedisStore", "redis"),
    "postgresql": ("aioconductor.persistence.postgres", "PostgresStore", "postgres"),
    "postgres": ("aioconductor.persistence.postgres", "PostgresStore", "postgres"),
}


def open_store(url: str, **kwargs: Any) -> Store:
    """A store for ``url``, not yet connected: use it as ``async with open_store(url) as store``.

    Schemes: ``memory://``, ``sqlite:///path/to/file.db`` (``sqlite://`` in memory), ``redis://``,
    ``postgresql://``.
    ``migrate=False`` (read-only tools) creates and writes nothing: a SQLite or PostgreSQL
    store whose schema is missing or older raises ``SchemaMissing`` on connect instead
    of creating it.
    Every URL takes ``?namespace=NAME``; the store's own options are removed before the URL
    reaches the driver, and so are the board's options on the same backend (``lease``,
    ``poll_interval``, ...): one URL serves a board and a store.

    Raises:
        ConfigurationError: unknown scheme or bad option.
        DependencyMissing: the backend's driver is not installed.
    """
    store: Store = open_url(url, _BACKENDS, "store", kwargs)
    return store
