"""The link to Redis, shared by the Redis board and the Redis store: the client, the
translation of its errors, the retries of idempotent reads.

Cancellation: redis-py 8 already drops a connection whose command was cancelled.
``Connection.send_packed_command`` and ``Connection.read_response`` both catch
``BaseException`` (``CancelledError`` included) and disconnect before re-raising, so a
connection that may still owe a reply is closed before ``execute_command`` puts it back in the
pool, and the pool reconnects it before its next use. A cancelled command therefore never hands
its reply to the next caller; ``tests/boards/test_redis.py`` checks this rather than trusting it.
Transition and store scripts go through :meth:`RedisLink.script`, which pipelines the calls of
one event-loop turn (:mod:`aioconductor._backends.redis.batch`): there a pipeline once sent is
finished under a shield, so a cancelled caller sees its cancellation after the reply came.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl
from urllib.parse import unquote
from urllib.parse import urlsplit

import anyio
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from aioconductor._backends.base import Backoff
from aioconductor._backends.base import ErrorTable
from aioconductor._backends.base import map_exceptions
from aioconductor._backends.base import scrub
from aioconductor._backends.base import translate
from aioconductor._backends.redis.batch import ScriptBatcher
from aioconductor._urls import redact_url
from aioconductor._urls import url_secrets
from aioconductor.errors import BackendUnavailable
from aioconductor.errors import ConfigurationError

__all__ = ["RedisLink", "fmt_time", "hash_tag_prefix", "pairs"]

logger = logging.getLogger("aioconductor.redis")

T = TypeVar("T")

#: How long an idempotent read keeps retrying through connection errors (a Redis restart).
READ_RETRY_SECONDS = 8.0
#: Options the library sets itself: a URL may not override them.
_RESERVED_QUERY = frozenset({"decode_responses", "encoding", "protocol"})
#: The path of a Redis URL: none, or the database number.
_DB_PATH = re.compile(r"/?|/\d+/?")
#: How Python names the keyword argument a class does not take.
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")
#: Every error of the driver: a call that raised one may or may not have run on the server.
_DRIVER_ERRORS = (rexc.RedisError, OSError)
#: The errors an idempotent read retries: Redis is restarting, or loading its data.
_TRANSIENT = (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError, OSError)


def hash_tag_prefix(namespace: str) -> str:
    """The prefix of every key of ``namespace``: one hash tag, so one Redis Cluster slot."""
    return f"aioc:{{{namespace}}}:"


class RedisLink:
    """One connection pool to Redis, with the error translation every call goes through.

    Args:
        driver_url: the ``redis://`` or ``rediss://`` URL without the library's options.
        closed_error: what a call made after :meth:`aclose` raises.
    """

    def __init__(
        self, driver_url: str, closed_error: Callable[[], Exception] = BackendUnavailable
    ) -> None:
        self.url = redact_url(driver_url)
        self._closed_error = closed_error
        self.closed = False
        # Every secret in both forms: as the URL has it (percent-encoded), and as redis-py sends.
        self._secrets = url_secrets(driver_url)
        #: what -> the error table of a call named so (see :meth:`errors`).
        self._tables: dict[str, ErrorTable] = {}
        try:
            parts = urlsplit(driver_url)
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL {self.url}: {self.scrub(exc)}") from None
        reserved = {k for k, _ in parse_qsl(parts.query)} & _RESERVED_QUERY
        if reserved:
            raise ConfigurationError(
                f"{self.url}: option(s) {', '.join(sorted(reserved))} are set by aioconductor"
            )
        if not _DB_PATH.fullmatch(unquote(parts.path)):
            # redis-py would silently use database 0 for a path that is not a number.
            raise ConfigurationError(
                f"bad Redis URL {self.url}: the path must be a database number (redis://host/0)"
            )
        try:
            # No retries inside redis-py: a script whose reply was lost must not run twice, so
            # the board decides what to retry (idempotent reads only).
            self.client: Redis = Redis.from_url(
                driver_url, decode_responses=True, retry=Retry(NoBackoff(), 0)
            )
            self._check_options()
        except (ValueError, TypeError, rexc.RedisError) as exc:
            raise ConfigurationError(f"bad Redis URL {self.url}: {self.scrub(exc)}") from None
        self._batcher = ScriptBatcher(self.client)

    def _check_options(self) -> None:
        """Refuse what redis-py would refuse only at the first command: a query option that
        its connection class does not take (redis-py hands it over as a keyword argument),
        or a negative database number.

        The check builds one connection object, as the pool will, without connecting it.

        Raises:
            ValueError: a negative database number, or an option redis-py does not take.
        """
        pool = self.client.connection_pool
        try:
            pool.connection_class(**pool.connection_kwargs)
        except TypeError as exc:
            unknown = _UNEXPECTED.search(str(exc))
            if unknown is None:
                raise
            raise ValueError(
                f"unknown option {unknown[1]!r}: neither aioconductor nor redis-py takes it"
            ) from None
        db = pool.connection_kwargs.get("db", 0)
        if not isinstance(db, int) or db < 0:
            raise ValueError(f"database {db!r} is not a number of 0 or more")

    def scrub(self, exc: BaseException | str) -> str:
        """``exc`` as text, with the URL's password (should a driver echo it) masked."""
        return scrub(exc, self._secrets)

    def unavailable(self, what: str, exc: BaseException) -> BackendUnavailable:
        """The ``BackendUnavailable`` to raise for a driver error during ``what``."""
        return BackendUnavailable(f"Redis at {self.url}: {what} failed: {self.scrub(exc)}")

    def errors(self, what: str) -> ErrorTable:
        """The table (for :func:`~aioconductor._backends.base.map_exceptions`) that makes a
        redis or socket error during ``what`` :meth:`unavailable`: never a driver error.

        Kept per ``what`` (a handful of verbs), so a call does not build one.
        """
        table = self._tables.get(what)
        if table is None:
            unavailable = functools.partial(self.unavailable, what)
            table = self._tables[what] = [(_DRIVER_ERRORS, unavailable)]
        return table

    def check_open(self) -> None:
        """Raise the closed error once :meth:`aclose` was called."""
        if self.closed:
            raise self._closed_error()

    async def call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run a non-idempotent call (a transition script) once: errors become unavailable."""
        if self.closed:
            raise self._closed_error()
        with map_exceptions(self.errors(what)):
            return await fn()

    async def run_script(
        self, what: str, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """:meth:`call` of :meth:`script`: a transition or write script, run once, pipelined.

        The same as ``call(what, lambda: script(script, keys, args))`` without the closure and
        two of its coroutines: every script of a job's hot path goes through here.
        """
        if self.closed:
            raise self._closed_error()
        with map_exceptions(self.errors(what)):
            return await self._batcher.run(script, keys, args)

    async def script(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a Lua script, pipelined with the scripts other tasks run in the same turn (see
        :mod:`aioconductor._backends.redis.batch`); use inside :meth:`call` or :meth:`read`."""
        return await self._batcher.run(script, keys, args)

    async def scripts(
        self, calls: Sequence[tuple[AsyncScript, Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """Run several Lua scripts in order, as one pipeline; their replies in order."""
        return await self._batcher.run_all(calls)

    async def read(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run an idempotent call, retrying connection errors with backoff for a few seconds.

        A restarted Redis refuses connections for a moment: reads ride that out rather than
        fail a conductor's sweep, and give up with ``BackendUnavailable`` after
        ``READ_RETRY_SECONDS``.
        """
        # time.monotonic: a tenth of anyio.current_time()'s cost, on every read.
        deadline = time.monotonic() + READ_RETRY_SECONDS
        backoff: Backoff | None = None
        while True:
            # Checked on every attempt: a retry after aclose would open a connection that
            # nothing closes any more.
            if self.closed:
                raise self._closed_error()
            try:
                return await fn()
            except Exception as exc:
                backoff = backoff or Backoff(first=0.05, most=1.0)
                delay = backoff.next()
                # A refused password is no restart (redis-py's is a ConnectionError).
                fatal = isinstance(exc, rexc.AuthenticationError) or not isinstance(exc, _TRANSIENT)
                if fatal or time.monotonic() + delay > deadline:
                    mapped = translate(self.errors(what), exc)
                    if mapped is None:
                        raise
                    raise mapped from exc
                logger.debug("Redis at %s: %s failed (%s); retrying", self.url, what, exc)
            await anyio.sleep(delay)

    async def connect(self) -> None:
        """Check that Redis answers, and warn when it may evict keys (jobs) under memory load."""
        await self.call("connect", self.client.ping)
        with map_exceptions(self.errors("connect")):
            try:
                reply = await self.client.config_get("maxmemory-policy")
            except rexc.ResponseError:
                # CONFIG is often refused (ACLs, managed Redis): the check is advice, skip it.
                return
        policy = reply.get("maxmemory-policy") if isinstance(reply, dict) else None
        if policy and policy != "noeviction":
            logger.warning(
                "Redis at %s has maxmemory-policy %r: under memory pressure it may evict jobs "
                "and logbooks; set maxmemory-policy noeviction",
                self.url,
                policy,
            )

    async def aclose(self) -> None:
        """Close the pool and every connection in it."""
        self.closed = True
        # Shielded so a cancelled close still frees every socket; bounded in case one hangs.
        with anyio.move_on_after(5, shield=True), contextlib.suppress(rexc.RedisError, OSError):
            await self.client.aclose()


def fmt_time(value: float) -> str:
    """A time or a number of seconds as exact text for a script (``repr`` round-trips)."""
    if not math.isfinite(value):
        raise ConfigurationError(f"{value!r} is not a finite number of seconds")
    return repr(float(value))


def pairs(flat: Sequence[str]) -> dict[str, str]:
    """A flat ``field, value, field, value, ...`` reply (``HGETALL`` in a script) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
