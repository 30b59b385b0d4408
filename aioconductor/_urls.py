"""Parsing of board and store URLs: the scheme, the namespace and the library's own options.

The library's options (``namespace``, ``max_payload_bytes``, ...) are removed from the URL before
it reaches a driver, so a driver never sees, or chokes on, an option that is not its own. One URL
serves a board and a store of the same backend: each takes its own options and drops the other's
(``ignored_options``), so ``aioconductor migrate --board URL`` can open the store on the board's
URL. A URL is shown only through :func:`redact_url`, which masks the password of the user part and
the value of every query option that carries a credential (``password``, ``sslpassword``,
``token``, ...).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl
from urllib.parse import unquote
from urllib.parse import unquote_plus
from urllib.parse import urlencode
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

from aioconductor._checks import check_lease
from aioconductor.errors import ConfigurationError
from aioconductor.errors import DependencyMissing

__all__ = [
    "BOARD_OPTIONS",
    "ParsedURL",
    "is_secret_option",
    "load_backend",
    "open_url",
    "parse_url",
    "redact_url",
    "refuse_options",
    "url_secrets",
    "validate_namespace",
]

#: A number a library option holds.
_N = TypeVar("_N", int, float)

_NAMESPACE = re.compile(r"[a-z0-9_]{1,48}")

#: The URL options every board reads (``JobBoard.from_url``). A store of the same backend
#: accepts and ignores them, so one URL serves both.
BOARD_OPTIONS = frozenset({"max_payload_bytes", "lease", "poll_interval"})

#: A query option whose name, lower-cased and without ``_``, ``-`` and ``.``, contains one of
#: these carries a credential (redis-py's ``password`` and ``ssl_password``, asyncpg's
#: ``password`` and ``sslpassword``, and the usual names of tokens and keys).
_SECRET_WORDS = (
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "credential",
    "apikey",
    "accesskey",
    "authkey",
    "privatekey",
)
#: ... or is one of these. Not a substring match: ``passfile`` or ``author`` name no secret.
_SECRET_NAMES = frozenset({"pass", "auth"})
_NOT_IN_NAMES = re.compile(r"[-_.]")
#: How a masked value is shown.
MASK = "***"


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


def parse_url(
    url: str, *, library_options: Collection[str] = (), ignored_options: Collection[str] = ()
) -> ParsedURL:
    """Split ``url`` into scheme, namespace, the library's options and the driver's URL.

    Args:
        url: the board or store URL.
        library_options: the options read by the caller: returned in ``options``.
        ignored_options: options of the library that the caller does not read (a store's URL
            may hold its board's options): removed, so they never reach the driver.

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
        elif key not in ignored_options:
            kept.append((key, value))
    validate_namespace(namespace)
    # The part before the query is kept as written: rebuilding it with urlunsplit would drop
    # an empty host (sqlite:///rel.db would become sqlite:/rel.db).
    driver_url = f"{base}?{urlencode(kept)}" if kept else base
    return ParsedURL(scheme=scheme, driver_url=driver_url, namespace=namespace, options=options)


def is_secret_option(name: str) -> bool:
    """Whether the query option ``name`` carries a credential (case-insensitive)."""
    key = _NOT_IN_NAMES.sub("", name.lower())
    return key in _SECRET_NAMES or any(word in key for word in _SECRET_WORDS)


def _split(url: str) -> tuple[str, str, str]:
    """``url`` as (the part before the query, ``?`` and the query, ``#`` and the fragment),
    split where :func:`urllib.parse.urlsplit`, and so every driver, splits it."""
    rest, hash_, fragment = url.partition("#")
    base, question, query = rest.partition("?")
    return base, question + query, hash_ + fragment


def redact_url(url: str) -> str:
    """``url`` with its secrets replaced by ``***``, safe for logs, reprs and error messages.

    The password of the user part and the value of every credential query option
    (:func:`is_secret_option`: ``password``, ``sslpassword``, ``token``, ...) are masked, and
    so is a fragment: no driver reads one, and a ``#`` in a password written unencoded would
    otherwise show the rest of it.
    """
    try:
        base, query, fragment = _split(url)
        parts = urlsplit(base)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        base = urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{netloc}"))
    if query:
        fields = []
        for field in query[1:].split("&"):
            name, equals, _ = field.partition("=")
            secret = equals and is_secret_option(unquote_plus(name))
            fields.append(f"{name}={MASK}" if secret else field)
        query = "?" + "&".join(fields)
    return base + query + ("#" + MASK if fragment else "")


def url_secrets(url: str) -> set[str]:
    """Every secret ``url`` holds, as written and decoded: what a driver's error message that
    echoes one must have masked (see :func:`redact_url` for which values are secrets)."""
    try:
        base, query, _ = _split(url)
        password = urlsplit(base).password
    except ValueError:
        return set()
    found = {password, unquote(password)} if password else set()
    for field in query[1:].split("&"):
        name, equals, value = field.partition("=")
        if equals and is_secret_option(unquote_plus(name)):
            found |= {value, unquote_plus(value)}
    return {secret for secret in found if secret}


def refuse_options(driver_url: str, what: str, known: Collection[str]) -> None:
    """Refuse the options left in ``driver_url`` where no driver takes options (memory,
    SQLite, Kafka): each is named, with the options ``what`` does take.

    Raises:
        ConfigurationError: ``driver_url`` holds an option.
    """
    query = _split(driver_url)[1][1:]
    names = sorted({key for key, _ in parse_qsl(query, keep_blank_values=True)})
    if names:
        takes = ", ".join(sorted({"namespace", *known}))
        raise ConfigurationError(
            f"{redact_url(driver_url)}: unknown option(s) {', '.join(names)}; "
            f"the {what} takes {takes}"
        )


def open_url(
    url: str, table: Mapping[str, tuple[str, str, str | None]], what: str, kwargs: dict[str, Any]
) -> Any:
    """The board or store (``what``) for ``url``, not yet connected: the class ``table`` names
    for its scheme (see :func:`load_backend`), built by its ``from_url`` with ``kwargs`` from
    the URL parsed for the class's own options.

    Raises:
        ConfigurationError: not a URL, no backend serves its scheme, or a bad option.
        DependencyMissing: the backend's driver is not installed (names the extra to install).
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(f"not a board or store URL: {redact_url(str(url))!r}")
    cls = load_backend(url.split("://", 1)[0].lower(), table, what)
    parsed = parse_url(
        url, library_options=cls.url_options, ignored_options=cls.ignored_url_options
    )
    return cls.from_url(parsed, **kwargs)


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
        hint = f" (pip install 'aioconductor-taskflow[{extra}]')" if extra else ""
        raise DependencyMissing(
            f"the {scheme}:// {what} needs a driver that is not installed{hint}: {exc}"
        ) from exc
    return getattr(module, class_name)


def int_option(options: Mapping[str, str], name: str, default: int) -> int:
    """Read a positive integer library option, with a clear error when it is not one."""
    return _option(options, name, default, int, "an integer", _positive)


def lease_option(options: Mapping[str, str], name: str, default: float) -> float:
    """Read a lease (seconds in (0, 86,400]) library option, with a clear error naming it."""
    return _option(options, name, default, float, "a number of seconds", check_lease)


def float_option(options: Mapping[str, str], name: str, default: float) -> float:
    """Read a positive float library option, with a clear error when it is not one."""
    return _option(options, name, default, float, "a number", _positive)


def _option(
    options: Mapping[str, str],
    name: str,
    default: _N,
    convert: Callable[[str], _N],
    noun: str,
    check: Callable[[_N, str], _N],
) -> _N:
    """Option ``name`` read with ``convert`` and passed through ``check`` (which is told where
    the value came from), or ``default`` when the URL does not give it."""
    raw = options.get(name)
    if raw is None:
        return default
    where = f"option {name}={raw!r}"
    try:
        value = convert(raw)
    except ValueError:
        raise ConfigurationError(f"{where} is not {noun}") from None
    return check(value, where)


def _positive(value: _N, where: str) -> _N:
    if not value > 0:
        raise ConfigurationError(f"{where} must be positive")
    return value
