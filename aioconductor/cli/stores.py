"""Which store a command uses: ``--store``, else the board's URL where that backend has a
store (SQLite, Redis, PostgreSQL), else none (progress kept in memory).

``run`` and ``migrate`` share :func:`store_url_for`, so the store ``migrate`` prepares is the
one ``run`` uses.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from aioconductor._urls import redact_url

__all__ = ["STORE_SCHEMES", "describe_stores", "store_in_memory", "store_url_for"]

#: The board URL schemes whose backend has a durable store: such a board's URL serves as the
#: store's too (see ``aioconductor.persistence.open_store``). ``memory`` has a store, but one
#: in memory, and Kafka has none.
STORE_SCHEMES = frozenset({"sqlite", "redis", "rediss", "postgresql", "postgres"})


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def store_url_for(board_url: str, store_url: str | None) -> str | None:
    """The store URL to use: ``store_url`` if given, else ``board_url`` where its backend has a
    durable store, else None (no store: a conductor keeps progress in its own memory)."""
    if store_url:
        return store_url
    return board_url if _scheme(board_url) in STORE_SCHEMES else None


def store_in_memory(store_url: str | None) -> bool:
    """Whether a store URL (None: no store) keeps progress in memory only: none, ``memory://``,
    or SQLite without a file (``sqlite://``, ``sqlite:///:memory:``)."""
    if store_url is None:
        return True
    scheme = _scheme(store_url)
    if scheme == "memory":
        return True
    if scheme == "sqlite":
        path = urlsplit(store_url.split("?", 1)[0]).path.removeprefix("/")
        return path in ("", ":memory:")
    return False


def describe_stores(
    log: logging.Logger, board_url: str, store_url: str | None, given: bool
) -> None:
    """Log which board and which store a conductor uses (URLs redacted); a WARNING when the
    store is in memory, naming ``--store`` as the fix. ``given``: whether ``--store`` (or
    ``$AIOCONDUCTOR_STORE_URL``) named the store."""
    if store_url is None:
        store = "none (in this process's memory)"
    else:
        how = "given" if given else "the board's URL: no --store given"
        store = f"{redact_url(store_url)} ({how})"
    log.info("board: %s; store: %s", redact_url(board_url), store)
    if store_in_memory(store_url):
        log.warning(
            "THE STORE IS IN MEMORY: the jobs' progress is not saved, so a job whose conductor "
            "stops or dies does not resume where it stopped (it starts again from its first "
            "task). Give --store URL (or $AIOCONDUCTOR_STORE_URL) on a SQLite file, Redis or "
            "PostgreSQL to save it."
        )
