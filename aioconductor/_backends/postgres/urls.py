"""What a ``postgresql://`` URL holds for the library, and what it checks before asyncpg does.

Connections are tagged with ``application_name`` (default ``aioconductor``) and given a
``statement_timeout`` and an ``idle_in_transaction_session_timeout``, so a stuck statement or a
transaction left open by a crashed client is ended by the server. The URL's own query options
(``sslmode``, or any server setting such as ``statement_timeout=5000``) win over these defaults.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import parse_qsl
from urllib.parse import urlencode

from aioconductor.errors import ConfigurationError

__all__ = ["DEFAULT_SETTINGS", "URL_OPTIONS", "check_ports", "server_settings", "split_options"]

#: The library's own URL options for PostgreSQL (removed before the URL reaches asyncpg).
URL_OPTIONS = frozenset({"schema", "pool_min", "pool_max"})
#: The server settings every connection gets unless the URL sets them.
DEFAULT_SETTINGS = {
    "application_name": "aioconductor",
    "statement_timeout": "30000",
    "idle_in_transaction_session_timeout": "60000",
    # The claim and limit statements count rows after taking a lock and must see the rows
    # committed meanwhile: a server whose default is REPEATABLE READ would let limits overshoot.
    "default_transaction_isolation": "read committed",
}


def split_options(driver_url: str, names: Collection[str]) -> tuple[str, dict[str, str]]:
    """Remove the options ``names`` from ``driver_url``'s query: (the URL left, the options)."""
    base, _, query = driver_url.partition("?")
    options: dict[str, str] = {}
    kept: list[tuple[str, str]] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in names:
            options[key] = value
        else:
            kept.append((key, value))
    return (f"{base}?{urlencode(kept)}" if kept else base), options


def server_settings(query: str) -> dict[str, str]:
    """The :data:`DEFAULT_SETTINGS` that the URL's ``query`` does not set itself."""
    given = {key for key, _ in parse_qsl(query)}
    return {k: v for k, v in DEFAULT_SETTINGS.items() if k not in given}


def check_ports(netloc: str, query: str, shown: str) -> None:
    """Refuse a port that is not a number from 1 to 65535, in the host list or in ``?port=``.

    asyncpg takes ``host:port`` lists (``h1:5432,h2:5433``) and checks a port only when it
    connects, where one past 65535 raises a bare ``OverflowError``.

    Raises:
        ConfigurationError: such a port, naming it and the URL (``shown``, redacted).
    """
    # "[v6 address]:port" or "host:port", split as asyncpg splits them.
    ports = [
        spec.rpartition("]")[2][1:] if spec.startswith("[") else spec.partition(":")[2]
        for spec in netloc.rpartition("@")[2].split(",")
    ]
    for key, value in parse_qsl(query):
        if key == "port":
            ports += value.split(",")
    for port in ports:
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigurationError(
                f"bad PostgreSQL URL {shown}: port {port!r} is not a number from 1 to 65535"
            )
