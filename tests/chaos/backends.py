"""The backends the chaos scenarios run on: every backend of ``tests/backends.py``.

:func:`open_target` opens a space on a backend (a file, a Redis namespace, a PostgreSQL schema,
Kafka topics) and yields a :class:`Target`: the board and store URLs for conductors, the server's
address (for the TCP proxy) and a hook that kills the library's server connections.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from tests.backends import BY_NAME, params

from .proxy import ChaosProxy, KafkaChaosProxy

T = TypeVar("T")

#: ``full`` runs the issue's numbers (``nox -s chaos``); anything else the bounded CI run.
FULL = os.environ.get("AIOCONDUCTOR_CHAOS_SCALE", "bounded").lower() == "full"


def scale(bounded: T, full: T) -> T:
    """``full`` under ``AIOCONDUCTOR_CHAOS_SCALE=full``, else ``bounded``."""
    return full if FULL else bounded


@dataclass
class Target:
    """Where one scenario's conductors meet: board and store URLs on one isolated place."""

    backend: str
    board_url: str
    store_url: str
    #: The server's (host, port), for a proxy in between; None without a server.
    server: tuple[str, int] | None = None
    #: Kills the server side of the library's connections; returns how many.
    kill_connections: Callable[[], Awaitable[int]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The proxy that can sit in front of the server (Kafka's rewrites advertised addresses).
    proxy: type[ChaosProxy] = ChaosProxy

    def through(self, host: str, port: int) -> Target:
        """This target reached through ``host:port`` (a proxy) instead of the server (a URL
        without a host, such as a SQLite store's, stays as it is)."""

        def swap(url: str) -> str:
            parts = urlsplit(url)
            if not parts.hostname:
                return url
            netloc = parts.netloc.rsplit("@", 1)
            userinfo = f"{netloc[0]}@" if len(netloc) == 2 else ""
            return urlunsplit(parts._replace(netloc=f"{userinfo}{host}:{port}"))

        return replace(self, board_url=swap(self.board_url), store_url=swap(self.store_url))


#: What the chaos scenarios change in a backend's URL.
_OPTIONS: dict[str, dict[str, object]] = {
    # Small pools: several conductor processes (board, store, listener each) must stay well
    # within the server's max_connections, which other test runs share.
    "postgres": {"pool_max": "2"},
    # Tansu (the test broker) answers a fetch empty when finding its records takes longer than
    # the fetch's wait, and that grows with the partition (about 0.5 ms per 1,000 batches): the
    # full scale writes tens of thousands of state records, past what a 10 ms wait reaches on a
    # busy machine (renewals then stall until their leases run out). A real Kafka answers as soon
    # as records are there, whatever the wait.
    "kafka": {"fetch_wait_ms": scale(10, 50)},
}
#: The proxy that can sit in front of a backend's server (Kafka's rewrites advertised addresses).
_PROXIES: dict[str, type[ChaosProxy]] = {"kafka": KafkaChaosProxy}


@contextlib.asynccontextmanager
async def open_target(backend: str, tmp_path: Path) -> AsyncIterator[Target]:
    """A target in a fresh space of ``backend`` (``tests/backends.py``), removed at the end.

    Kafka has no store: the conductors (all on this machine) share a SQLite file, so the chaos
    proxy and the connection kills reach the board's traffic only, not the store's.
    """
    async with BY_NAME[backend].open(tmp_path) as space:
        options = _OPTIONS.get(backend, {})
        yield Target(
            backend,
            space.board_url("chaos", **options),
            space.store_url("chaos"),
            space.server,
            space.kill_connections if BY_NAME[backend].kills else None,
            proxy=_PROXIES.get(backend, ChaosProxy),
        )


def backend_params(*, processes: bool = False, network: bool = False) -> list[Any]:
    """``pytest.param`` for every backend fit for a scenario, with its service mark."""
    return params(processes=processes, server=network)
