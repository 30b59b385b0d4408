"""The link of a PostgreSQL board or store to its server: the pool, the retries, the errors.

Connections: one asyncpg pool per board or store object, every connection opened by
:func:`~aioconductor._backends.postgres.connect.safe_connect` with the server settings of
:mod:`~aioconductor._backends.postgres.urls`.

Cancellation: asyncpg returns a connection to its pool under ``asyncio.shield``, and resets it
there (``ROLLBACK`` if a transaction is open); a reset that fails terminates the connection. So a
call cancelled mid-statement never leaves a connection idle in a transaction or a row locked;
``tests/boards/test_postgres.py`` checks this in ``pg_stat_activity`` and ``pg_locks``. A reset
that fails after the call had its reply (the server ended the session meanwhile) does not fail
the call: its work was done (see :meth:`PostgresLink.acquire`).

Errors: one table (:meth:`PostgresLink.errors`, for ``map_exceptions``) turns every driver and
socket error into the library's: connection problems and refusals into ``BackendUnavailable``
(the closed error once the link is closed), other server errors into the link's ``error``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
from asyncpg import exceptions as pgexc

from aioconductor._backends.base import Backoff
from aioconductor._backends.base import ErrorTable
from aioconductor._backends.base import map_exceptions
from aioconductor._backends.base import scrub
from aioconductor._backends.postgres.batch import Batcher
from aioconductor._backends.postgres.batch import Kind
from aioconductor._backends.postgres.connect import CLEANUP_TIMEOUT
from aioconductor._backends.postgres.connect import safe_connect
from aioconductor._backends.postgres.schema import Migrations
from aioconductor._backends.postgres.schema import check_schema
from aioconductor._backends.postgres.schema import default_schema
from aioconductor._backends.postgres.schema import migrate as migrate_schema
from aioconductor._backends.postgres.schema import quote_schema
from aioconductor._backends.postgres.urls import check_ports
from aioconductor._backends.postgres.urls import server_settings
from aioconductor._urls import int_option
from aioconductor._urls import redact_url
from aioconductor._urls import url_secrets
from aioconductor.errors import AioconductorError
from aioconductor.errors import BackendUnavailable
from aioconductor.errors import ConfigurationError

__all__ = ["READ_RETRY_SECONDS", "PostgresLink"]

logger = logging.getLogger("aioconductor.postgres")

T = TypeVar("T")

#: How long an idempotent call keeps retrying through connection errors (a server restart).
READ_RETRY_SECONDS = 8.0
#: Errors that mean "the server could not be reached or dropped us": worth a retry.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    pgexc.PostgresConnectionError,
    pgexc.InterfaceError,
    pgexc.OperatorInterventionError,
    pgexc.InsufficientResourcesError,
    # Raised by asyncpg for the next statement on a connection whose session the server ended
    # while it was idle, until asyncpg has seen the socket close (see PostgresLink._lost).
    pgexc.InternalClientError,
)
#: Errors that mean "the server refused us": no retry helps.
_REFUSALS: tuple[type[BaseException], ...] = (
    pgexc.InvalidAuthorizationSpecificationError,
    pgexc.InvalidCatalogNameError,
    pgexc.InsufficientPrivilegeError,
)


class PostgresLink:
    """One asyncpg pool, the schema migrations, and the error translation every call uses.

    A :class:`~aioconductor._backends.base.Link`.

    Args:
        driver_url: the ``postgresql://`` URL without the library's options.
        options: the library's options from the URL (``schema``, ``pool_min``, ``pool_max``).
        closed_error: what a call made after :meth:`aclose` raises.
        error: what a server error that is not a connection problem becomes.
        schema: the schema name; wins over ``options``.
        namespace: the namespace whose default schema is used when neither names one.
    """

    def __init__(
        self,
        driver_url: str,
        options: dict[str, str],
        *,
        closed_error: Callable[[], Exception],
        error: type[AioconductorError],
        schema: str | None = None,
        namespace: str,
    ) -> None:
        self.url = redact_url(driver_url)
        if schema is None:
            schema = options["schema"] if "schema" in options else default_schema(namespace)
        self.schema = schema
        #: The schema, quoted for SQL.
        self.q = quote_schema(self.schema)
        self.pool_min = int_option(options, "pool_min", 1)
        self.pool_max = int_option(options, "pool_max", 10)
        if self.pool_min > self.pool_max:
            raise ConfigurationError(f"pool_min {self.pool_min} exceeds pool_max {self.pool_max}")
        try:
            parts = urlsplit(driver_url)
        except ValueError as exc:
            raise ConfigurationError(f"bad PostgreSQL URL {self.url}: {exc}") from None
        if parts.scheme.lower() not in ("postgresql", "postgres"):
            raise ConfigurationError(f"not a PostgreSQL URL: {self.url}")
        check_ports(parts.netloc, parts.query, self.url)
        self._dsn = driver_url
        self._secrets = url_secrets(driver_url)
        self._settings = server_settings(parts.query)
        #: What a call made after :meth:`aclose` raises (a new one each time).
        self.closed_error = closed_error
        self._error = error
        self._tables: dict[str, ErrorTable] = {}
        self._pool: Any = None
        self._listeners: set[Any] = set()
        #: Server pids of pooled connections whose last call failed or was cancelled.
        self._unsettled: set[int] = set()
        self.closed = False
        #: Runs the calls of concurrent callers a statement per kind and turn (``batch.py``).
        self.batcher = Batcher(self)

    # -- errors ------------------------------------------------------------------------------

    def scrub(self, exc: BaseException | str) -> str:
        """``exc`` as text, with the URL's password (should a driver echo it) masked."""
        return scrub(exc, self._secrets)

    def unavailable(self, what: str, exc: BaseException) -> BackendUnavailable:
        """The ``BackendUnavailable`` to raise for a driver error during ``what``."""
        return BackendUnavailable(f"PostgreSQL at {self.url}: {what} failed: {self._lost(exc)}")

    def _lost(self, exc: BaseException) -> str:
        """What a connection error means, where asyncpg's own words mislead."""
        context = exc.__context__
        if type(exc) is pgexc.InterfaceError and isinstance(context, _CONNECTION_ERRORS):
            # Transaction.__aexit__ refusing a closed connection hides the error that closed it.
            return self._lost(context)
        if isinstance(exc, pgexc.InternalClientError) and "another operation (2)" in str(exc):
            # The server ended the session (pg_terminate_backend, a restart, an idle timeout)
            # while the connection was idle: asyncpg read the server's error outside any
            # operation (its state 2, "error consume") and refuses the next statement before
            # sending it, before it has seen the socket close. No other operation was running.
            return "the server had ended the session; the statement was not sent"
        return self.scrub(exc)

    def _dropped(self, what: str, exc: BaseException) -> Exception:
        """A connection error or refusal during ``what``: the closed error once the link is
        closed (closing drops its connections under running calls), else unavailable."""
        return self.closed_error() if self.closed else self.unavailable(what, exc)

    def _failed(self, what: str, exc: BaseException) -> Exception:
        """A server error that no retry or reconnect helps (a constraint, a bad statement)."""
        return self._error(f"PostgreSQL: {what} failed: {self.scrub(exc)}")

    def errors(self, what: str) -> ErrorTable:
        """The table (for :func:`~aioconductor._backends.base.map_exceptions`) that makes a
        driver or socket error during ``what`` the library's: never a driver error.

        Kept per ``what`` (a handful of verbs), so a call does not build one.
        """
        table = self._tables.get(what)
        if table is None:
            table = self._tables[what] = [
                (_CONNECTION_ERRORS + _REFUSALS, functools.partial(self._dropped, what)),
                (pgexc.PostgresError, functools.partial(self._failed, what)),
            ]
        return table

    def translate(self, what: str) -> contextlib.AbstractContextManager[None]:
        """Re-raise driver and socket errors during ``what`` as the library's errors.

        Raises:
            Exception: the closed error (given at construction) once the link is closed.
        """
        if self.closed:
            raise self.closed_error()
        # The table looked up here, not through errors(): this runs twice per call.
        return map_exceptions(self._tables.get(what) or self.errors(what))

    @contextlib.contextmanager
    def _url_refused(self) -> Iterator[None]:
        """asyncpg reads parts of the URL only when it connects, and refuses them with a
        ``ValueError`` (a port that is no number, a bad ``sslmode``) or an ``OverflowError``
        (a port past 65535 that :func:`.urls.check_ports` did not see): a ``ConfigurationError``,
        which the command line prints as one line."""
        try:
            yield
        except (AioconductorError, OSError):
            # Ours, or the server's (a refused certificate is an ssl error and a ValueError).
            raise
        except (ValueError, OverflowError) as exc:
            raise ConfigurationError(f"bad PostgreSQL URL {self.url}: {self.scrub(exc)}") from None

    # -- connections ---------------------------------------------------------------------------

    async def connect(
        self, component: str, migrations: Migrations, *, migrate: bool = True
    ) -> None:
        """Open the pool, then create or migrate the schema of ``component`` (with
        ``migrate=False``, only check that it is there at the newest version: nothing is
        created or written).

        Raises:
            BackendUnavailable: the server could not be reached or refused the connection.
            ConfigurationError: the schema is newer than this library knows; or, with
                ``migrate=False``, missing or older.
        """
        with self.translate("connect"), self._url_refused():
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self.pool_min,
                max_size=self.pool_max,
                server_settings=self._settings,
                reset=self._reset_connection,
                connect=safe_connect,
            )
        self._pool = pool
        try:
            bring = migrate_schema if migrate else check_schema
            await self.call(
                "migrate" if migrate else "check the schema",
                lambda conn: bring(
                    conn,
                    schema=self.schema,
                    url=self.url,
                    component=component,
                    migrations=migrations,
                ),
            )
        except BaseException:
            # Shielded and bounded: a cancelled connect must still close the pool it opened.
            with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                await self.aclose()
            raise

    async def connect_one(self, what: str) -> Any:
        """A connection of its own (not from the pool), closed by :meth:`aclose` at the latest."""
        with self.translate(what), self._url_refused():
            conn = await safe_connect(self._dsn, server_settings=self._settings)
        if self.closed:
            conn.terminate()
            raise self.closed_error()
        self._listeners.add(conn)
        return conn

    async def release_one(self, conn: Any) -> None:
        """Close a connection from :meth:`connect_one`."""
        self._listeners.discard(conn)
        # Closing says goodbye to the server; shielded so a cancelled stream still does it, and
        # bounded (then terminated) in case the server does not answer.
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
        if not conn.is_closed():
            conn.terminate()

    @contextlib.asynccontextmanager
    async def acquire(self, what: str) -> AsyncIterator[Any]:
        """A pooled connection for one call, errors translated.

        The call's outcome is what its statements got from the server, never what returning
        the connection to the pool did: asyncpg resets the connection there (``ROLLBACK`` if
        a transaction is open; see :meth:`_reset_connection`), and when the server ended the
        session meanwhile (a restart, ``pg_terminate_backend``) that reset fails, terminates
        the connection and raises. A call that had its reply has done its work (committed,
        or rolled back by the server), so that late error is only logged; raised, it would
        report a committed transition as failed. A call that failed keeps its own error.
        """
        with self.translate(what):
            pool = self._pool
            conn = await pool.acquire()
        pid = conn.get_server_pid()
        try:
            with self.translate(what):
                yield conn
        except BaseException:
            self._unsettled.add(pid)
            raise
        finally:
            await self._release(pool, conn, what)

    async def _reset_connection(self, conn: Any) -> None:
        """The pool's reset of a connection given back, after asyncpg's own ``ROLLBACK`` of an
        open transaction: nothing after a call that ended well, asyncpg's full reset after one
        that did not.

        asyncpg's default reset sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
        RESET ALL`` on every release, a round trip per call. The library leaves no session
        state on pooled connections (no SET, LISTEN, cursor or session lock: LISTEN has its
        own connection, the migration lock is a transaction's), so a call that ended well
        needs none. A call that failed or was cancelled may have left a statement running on
        the server: the reset's round trip waits for it, so its effect is settled before the
        connection serves anyone else.
        """
        if conn.get_server_pid() in self._unsettled:
            self._unsettled.discard(conn.get_server_pid())
            await conn.reset()

    async def _release(self, pool: Any, conn: Any, what: str) -> None:
        """Give ``conn`` back to ``pool``; a reset that failed is logged, not raised.

        asyncpg shields the release, so it completes even if this task is cancelled, and
        terminates a connection whose reset failed (the pool opens a new one when needed).
        The caller waits for it, shielded (and bounded): a cancelled call's statement has
        ended (its effect happened or not) by the time the call returns, so the caller's next
        read sees it and its next write does not race it.
        """
        try:
            with anyio.CancelScope(shield=True):
                await pool.release(conn, timeout=CLEANUP_TIMEOUT)
        except Exception as exc:
            logger.debug(
                "PostgreSQL at %s: %s: the connection could not be reset (%s); it was closed",
                self.url,
                what,
                self.scrub(exc),
            )

    async def take(self, what: str) -> tuple[Any, Any]:
        """A pooled connection held beyond one call (the batcher's), with its pool; given
        back by :meth:`give_back`."""
        with self.translate(what):
            pool = self._pool
            return pool, await pool.acquire()

    async def give_back(self, pool: Any, conn: Any, pid: int | None, *, settled: bool) -> None:
        """Give back a connection from :meth:`take` (whose server pid was ``pid``); reset by
        the pool unless ``settled`` (its last statement ended well)."""
        if not settled and pid is not None:
            self._unsettled.add(pid)
        await self._release(pool, conn, "batch")

    async def batched(self, kind: Kind, item: Any) -> Any:
        """Run ``item`` of ``kind`` in one statement with the others of this turn (see
        :mod:`~aioconductor._backends.postgres.batch`): its reply, or its own error."""
        return await self.batcher.run(kind, item)

    async def call(self, what: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn`` on a pooled connection once (for calls that must not run twice)."""
        async with self.acquire(what) as conn:
            return await fn(conn)

    async def read(self, what: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run an idempotent ``fn``, retrying connection errors with backoff for a few seconds.

        A restarted server, or connections killed by ``pg_terminate_backend``, make the next
        call on a pooled connection fail; reads ride that out rather than fail a conductor,
        and give up with ``BackendUnavailable`` after ``READ_RETRY_SECONDS``.
        """
        backoff = Backoff(first=0.02, most=1.0)
        deadline = anyio.current_time() + READ_RETRY_SECONDS
        while True:
            try:
                return await self.call(what, fn)
            except BackendUnavailable as exc:
                cause = exc.__cause__
                if isinstance(cause, _REFUSALS) or anyio.current_time() + backoff.delay > deadline:
                    raise
                logger.debug("PostgreSQL at %s: %s failed (%s); retrying", self.url, what, exc)
            await backoff.sleep()

    async def aclose(self) -> None:
        """Close the pool and every connection of this link."""
        self.closed = True
        await self.batcher.aclose()
        pool, self._pool = self._pool, None
        for conn in list(self._listeners):
            conn.terminate()
        self._listeners.clear()
        if pool is None:
            return
        # Shielded so a cancelled close still frees every connection; a connection a caller
        # still holds after the grace period is terminated rather than waited for.
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(5):
                with contextlib.suppress(Exception):
                    await pool.close()
                    return
            pool.terminate()
