"""Which ``Host`` headers the dashboard answers: its guard against DNS rebinding.

A page on ``evil.example`` whose name the attacker then points at 127.0.0.1 reaches a loopback
dashboard from the victim's browser as its own origin: the action header stops nothing there,
and the page can read the API. Its requests still say ``Host: evil.example``, so each request's
Host must name the address the dashboard is served on (for a loopback address: ``localhost``,
``127.0.0.1`` or ``[::1]`` too) or a name the operator allowed; anything else is refused before
a handler runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, MutableMapping
from typing import Any

from starlette.responses import PlainTextResponse

from aioconductor.errors import ConfigurationError

__all__ = ["AllowedHosts", "HostGuard"]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
REFUSAL = (
    "This dashboard does not answer to that Host header. Allow a name with "
    "'aioconductor dashboard --allow-host NAME' or create_app(..., allowed_hosts=[NAME]).\n"
)


def _canonical(host: str) -> str:
    """Lower case, without a final dot, an IP address in its short form (``::1``)."""
    host = host.lower().removesuffix(".")
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def split_host(authority: str, *, bare_ipv6: bool = False) -> tuple[str, int | None] | None:
    """``(host, port)`` of ``name``, ``name:port``, ``[v6]`` or ``[v6]:port``; None if malformed.

    ``bare_ipv6`` also takes an unbracketed IPv6 address (an allow-list entry, never a header).
    """
    authority = authority.strip()
    if bare_ipv6 and authority.count(":") > 1 and not authority.startswith("["):
        authority = f"[{authority}]"
    if authority.startswith("["):
        host, closed, rest = authority[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            return None
        try:
            host = ipaddress.IPv6Address(host).compressed
        except ValueError:
            return None
        port_text: str | None = rest[1:] if rest else None
    else:
        host, colon, after = authority.partition(":")
        host, port_text = _canonical(host), after if colon else None
    if port_text is not None and not (port_text.isascii() and port_text.isdigit()):
        return None
    return (host, None if port_text is None else int(port_text)) if host else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AllowedHosts:
    """The Host headers a dashboard answers: its bound address's names, plus ``names``.

    Args:
        names: host names (``ops.example.com``: any port) or ``name:port`` (that port only);
            ``"*"`` allows every Host (only behind a proxy that checks Host itself).

    Raises:
        ConfigurationError: an entry is not a host name.
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        if isinstance(names, str):
            raise ConfigurationError(f"allowed hosts are a list of names, not the str {names!r}")
        self.any = False
        self.names: set[tuple[str, int | None]] = set()
        for name in names:
            if name == "*":
                self.any = True
                continue
            parsed = split_host(name, bare_ipv6=True) if isinstance(name, str) else None
            if parsed is None:
                raise ConfigurationError(
                    f"not a host name: {name!r} (allowed hosts are NAME or NAME:PORT)"
                )
            self.names.add(parsed)

    def allows(self, scope: MutableMapping[str, Any]) -> bool:
        """Whether the request of ASGI ``scope`` carries one Host header, and an allowed one."""
        if self.any:
            return True
        values = [value for key, value in scope.get("headers", ()) if key.lower() == b"host"]
        if len(values) != 1:
            return False
        parsed = split_host(values[0].decode("latin-1"))
        if parsed is None:
            return False
        host, port = parsed
        if port is None:
            port = DEFAULT_PORTS.get(str(scope.get("scheme", "http")))
        if (host, None) in self.names or (host, port) in self.names:
            return True
        # The address this connection came in on, whatever port a tunnel or a proxy shows:
        # the port tells nothing about rebinding, which needs a name the attacker owns.
        server = scope.get("server")
        bound = _canonical(str(server[0])) if server and server[0] else None
        if bound is None:
            return False
        return host == bound or (_is_loopback(bound) and host in LOOPBACK_NAMES)


class HostGuard:
    """ASGI middleware: a request whose Host is not allowed gets 400, and no handler runs."""

    def __init__(self, app: Any, hosts: AllowedHosts) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and not self.hosts.allows(scope):
            response = PlainTextResponse(REFUSAL, status_code=400)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
