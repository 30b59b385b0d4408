"""Parsing of board and store URLs: the scheme, the namespace and the library's own options.

The library's options (``namespace``, ``max_payload_bytes``, ...) are removed from the URL before
it reaches a driver, so a driver never sees, or chokes on, an option that is not its own.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aioconductor.errors import ConfigurationError, DependencyMissing

__all__ = ["ParsedURL", "load_backend", "parse_url", "redact_url", "validate_namespace"]

_NAMESPACE = re.compile(r"[a-z0-9_]{1,48}")


def validate_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is 1 to 48 of ``[a-z0-9_]``; else raise ``ConfigurationError``."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ConfigurationError(
            f"namespace {namespace!r} is not valid: use 1 to 48 characters of [a-z0-9_]"
        )
    return namespace


@dataclasses.dataclass(frozen=True)
class ParsedURL:
    """A board or store URL split into what the library reads and what the driver gets."""

    scheme: str
    #: The URL without the library's options, for the driver.
    driver_url: str
    namespace: str
    #: The library's options found in the query string (``namespace`` excluded).
    options: dict[str, str]

    def __repr__(self) -> str:
        return f"ParsedURL(scheme={self.scheme!r}, driver_url={redact_url(self.driver_url)!r})"


def parse_url(url: str, *, library_options: Collection[str] = ()) -> ParsedURL:
    """Split ``url`` into scheme, namespace, the library's options and the driver's URL.

    Raises:
        ConfigurationError: the URL has no scheme, or a bad namespace.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(f"not a board or store URL: {redact_url(str(url))!r}")
    base, _, query = url.partition("?")
    query = query.split("#", 1)[0]
    scheme = base.split("://", 1)[0].lower()
    namespace = "default"
    options: dict[str, str] = {}
    kept: list[tuple[str, str]] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "namespace":
            namespace = value
        elif key in library_options:
            options[key] = value
        else:
            kept.append((key, value))
    validate_namespace(namespace)
    # The part before the query is kept as written: rebuilding it with urlunsplit would drop
    # an empty host (sqlite:///rel.db would become sqlite:/rel.db).
    driver_url = f"{base}?{urlencode(kept)}" if kept else base
    return ParsedURL(scheme=scheme, driver_url=driver_url, namespace=namespace, options=options)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, safe for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def load_backend(scheme: str, table: Mapping[str, tuple[str, str, str | None]], what: str) -> Any:
    """Import the class serving ``scheme`` from ``table`` (module, class, extra) on demand.

    Raises:
        ConfigurationError: no backend serves the scheme.
        DependencyMissing: the backend's driver is not installed (names the extra to install).
    """
    try:
        module_name, class_name, extra = table[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in sorted(table))
        raise ConfigurationError(
            f"no {what} backend for URL scheme {scheme!r}; known schemes: {known}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f" (pip install 'aioconductor[{extra}]')" if extra else ""
        raise DependencyMissing(
            f"the {scheme}:// {what} needs a driver that is not installed{hint}: {exc}"
        ) from exc
    return getattr(module, class_name)


def int_option(options: Mapping[str, str], name: str, default: int) -> int:
    """Read a positive integer library option, with a clear error when it is not one."""
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"option {name}={raw!r} is not an integer") from None
    if value <= 0:
        raise ConfigurationError(f"option {name}={raw!r} must be positive")
    return value


def float_option(options: Mapping[str, str], name: str, default: float) -> float:
    """Read a positive float library option, with a clear error when it is not one."""
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"option {name}={raw!r} is not a number") from None
    if not value > 0:
        raise ConfigurationError(f"option {name}={raw!r} must be positive")
    return value
