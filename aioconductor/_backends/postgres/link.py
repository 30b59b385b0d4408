"""Plumbing shared by the PostgreSQL board and store: the pool, schema migrations, errors.

Connections: one asyncpg pool per board or store object, every connection tagged with
``application_name`` (default ``aioconductor``) and given a ``statement_timeout`` and an
``idle_in_transaction_session_timeout``, so a stuck statement or a transaction left open by a
crashed client is ended by the server. The URL's own query options (``sslmode``, or any server
setting such as ``statement_timeout=5000``) win over these defaults.

Cancellation: asyncpg returns a connection to its pool under ``asyncio.shield``, and resets it
there (``ROLLBACK`` if a transaction is open); a reset that fails terminates the connection. So a
call cancelled mid-statement never leaves a connection idle in a transaction or a row locked;
``tests/boards/test_postgres.py`` checks this in ``pg_stat_activity`` and ``pg_locks``. A reset
that fails after the call had its reply (the server ended the session meanwhile) does not fail
the call: its work was done (see :meth:`PostgresLink.acquire`).

Identifiers: the schema name is checked against ``[a-z_][a-z0-9_]{0,62}`` and double-quoted
wherever it appears in SQL; every value is a bind parameter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
from asyncpg import exceptions as pgexc

from aioconductor._urls import int_option, redact_url, url_secrets
from aioconductor.errors import AioconductorError, BackendUnavailable, ConfigurationError

__all__ = [
    "SCHEMA_PREFIX",
    "URL_OPTIONS",
    "Migrations",
    "PostgresLink",
    "default_schema",
    "migrate",
    "quote_schema",
    "refuse_nul",
    "split_options",
]

#: How long cleanup after a failed open may take, shielded from cancellation.
_CLEANUP_TIMEOUT = 5.0
#: How long a connect whose caller was cancelled may go on to finish (see :func:`_connect`).
_CONNECT_GRACE = 2.0

logger = logging.getLogger("aioconductor.postgres")

T = TypeVar("T")
#: A list of migrations; each is a list of statements with ``{s}`` for the quoted schema.
Migrations = Sequence[Sequence[str]]

#: A namespace's tables live in schema ``aioc_<namespace>`` unless the URL names a schema.
SCHEMA_PREFIX = "aioc_"
#: The library's own URL options for PostgreSQL (removed before the URL reaches asyncpg).
URL_OPTIONS = frozenset({"schema", "pool_min", "pool_max"})
#: How long an idempotent call keeps retrying through connection errors (a server restart).
READ_RETRY_SECONDS = 8.0
#: The first key of the advisory lock taken while migrating ("AIOC"); the second is the
#: schema name's hash, so two schemas migrate independently.
_MIGRATION_LOCK = 0x41494F43
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_DEFAULT_SETTINGS = {
    "application_name": "aioconductor",
    "statement_timeout": "30000",
    "idle_in_transaction_session_timeout": "60000",
}
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


def default_schema(namespace: str) -> str:
    """The schema of ``namespace``'s tables when the URL names none: one schema a namespace,
    so a namespace's data can be granted, dumped or dropped on its own."""
    return SCHEMA_PREFIX + namespace


def quote_schema(name: object) -> str:
    """``name`` double-quoted for SQL, once checked against ``[a-z_][a-z0-9_]{0,62}``.

    Raises:
        ConfigurationError: the name is not a plain lower-case identifier, or is reserved.
    """
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise ConfigurationError(
            f"schema {name!r} is not valid: use 1 to 63 characters of [a-z0-9_], "
            "not starting with a digit"
        )
    if name.startswith("pg_") or name == "information_schema":
        raise ConfigurationError(f"schema {name!r} is reserved by PostgreSQL")
    return f'"{name}"'


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


def _check_ports(netloc: str, query: str, shown: str) -> None:
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


class PostgresLink:
    """One asyncpg pool, the schema migrations, and the error translation every call uses.

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
        _check_ports(parts.netloc, parts.query, self.url)
        self._dsn = driver_url
        self._secrets = url_secrets(driver_url)
        given = {key for key, _ in parse_qsl(parts.query)}
        self._settings = {k: v for k, v in _DEFAULT_SETTINGS.items() if k not in given}
        self._closed_error = closed_error
        self._error = error
        self._pool: Any = None
        self._listeners: set[Any] = set()
        #: Server pids of pooled connections whose last call failed or was cancelled.
        self._unsettled: set[int] = set()
        self.closed = False

    # -- errors ------------------------------------------------------------------------------

    def scrub(self, exc: BaseException | str) -> str:
        """``exc`` as text, with the URL's password (should a driver echo it) masked."""
        text = str(exc) or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

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

    @contextlib.contextmanager
    def translate(self, what: str) -> Iterator[None]:
        """Re-raise driver and socket errors as the library's errors (never a driver error)."""
        if self.closed:
            raise self._closed_error()
        try:
            yield
        except AioconductorError:
            raise  # BackendUnavailable is an OSError: never wrap the library's own errors
        except (*_CONNECTION_ERRORS, *_REFUSALS) as exc:
            if self.closed:
                raise self._closed_error() from None
            raise self.unavailable(what, exc) from exc
        except pgexc.PostgresError as exc:
            raise self._error(f"PostgreSQL: {what} failed: {self.scrub(exc)}") from exc

    @contextlib.contextmanager
    def _url_refused(self) -> Iterator[None]:
        """asyncpg reads parts of the URL only when it connects, and refuses them with a
        ``ValueError`` (a port that is no number, a bad ``sslmode``) or an ``OverflowError``
        (a port past 65535 that :func:`_check_ports` did not see): a ``ConfigurationError``,
        which the command line prints as one line."""
        try:
            yield
        except (AioconductorError, OSError):
            # Ours, or the server's (a refused certificate is an ssl error and a ValueError).
            raise
        except (ValueError, OverflowError) as exc:
            raise ConfigurationError(f"bad PostgreSQL URL {self.url}: {self.scrub(exc)}") from None

    # -- connections ---------------------------------------------------------------------------

    async def connect(self, component: str, migrations: Migrations) -> None:
        """Open the pool, then create or migrate the schema of ``component``.

        Raises:
            BackendUnavailable: the server could not be reached or refused the connection.
            ConfigurationError: the schema is newer than this library knows.
        """
        with self.translate("connect"), self._url_refused():
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self.pool_min,
                max_size=self.pool_max,
                server_settings=self._settings,
                reset=self._reset_connection,
                connect=_connect,
            )
        self._pool = pool
        try:
            await self.call("migrate", lambda conn: migrate(conn, self, component, migrations))
        except BaseException:
            # Shielded and bounded: a cancelled connect must still close the pool it opened.
            with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
                await self.aclose()
            raise

    async def connect_one(self, what: str) -> Any:
        """A connection of its own (not from the pool), closed by :meth:`aclose` at the latest."""
        with self.translate(what), self._url_refused():
            conn = await _connect(self._dsn, server_settings=self._settings)
        if self.closed:
            conn.terminate()
            raise self._closed_error()
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
                await pool.release(conn, timeout=_CLEANUP_TIMEOUT)
        except Exception as exc:
            logger.debug(
                "PostgreSQL at %s: %s: the connection could not be reset (%s); it was closed",
                self.url,
                what,
                self.scrub(exc),
            )

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
        delay = 0.02
        deadline = anyio.current_time() + READ_RETRY_SECONDS
        while True:
            try:
                return await self.call(what, fn)
            except BackendUnavailable as exc:
                cause = exc.__cause__
                if isinstance(cause, _REFUSALS) or anyio.current_time() + delay > deadline:
                    raise
                logger.debug("PostgreSQL at %s: %s failed (%s); retrying", self.url, what, exc)
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def aclose(self) -> None:
        """Close the pool and every connection of this link."""
        self.closed = True
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


async def migrate(conn: Any, link: PostgresLink, component: str, migrations: Migrations) -> None:
    """Bring ``component``'s tables in ``link``'s schema to the newest version.

    Runs in one transaction under an advisory lock on the schema, so two processes connecting
    at once to a fresh database do not race: the second waits, then finds the work done.
    """
    q = link.q
    latest = len(migrations)
    try:
        version = await conn.fetchval(
            f"SELECT version FROM {q}.schema_version WHERE component = $1", component
        )
    except (pgexc.UndefinedTableError, pgexc.InvalidSchemaNameError):
        version = None
    if version == latest:
        return
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", _MIGRATION_LOCK, link.schema
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q}")
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {q}.schema_version (
                component text PRIMARY KEY,
                version integer NOT NULL
            )"""
        )
        version = await conn.fetchval(
            f"SELECT version FROM {q}.schema_version WHERE component = $1", component
        )
        version = version or 0
        if version > latest:
            raise ConfigurationError(
                f"schema {link.schema!r} holds {component} version {version}, newer than "
                f"this aioconductor knows ({latest}): upgrade aioconductor"
            )
        for steps in migrations[version:]:
            for step in steps:
                await conn.execute(step.replace("{s}", q))
        await conn.execute(
            f"""INSERT INTO {q}.schema_version (component, version) VALUES ($1, $2)
                ON CONFLICT (component) DO UPDATE SET version = excluded.version""",
            component,
            latest,
        )
    logger.info("PostgreSQL at %s: %s schema %r at version %d", link.url, component, q, latest)


def refuse_nul(what: str, value: str, error: type[AioconductorError]) -> None:
    """Refuse a string PostgreSQL's ``text`` cannot store (it holds a NUL character)."""
    if "\x00" in value:
        raise error(f"{what} contains a NUL character (\\x00), which PostgreSQL cannot store")


async def _connect(*args: Any, **kwargs: Any) -> Any:
    """``asyncpg.connect``, which a cancellation never cuts in the middle of its handshake.

    Every connection of a link is opened here: its own (:meth:`PostgresLink.connect_one`) and
    its pool's (asyncpg calls this for each). A cancellation that reaches ``asyncpg.connect``
    while the TCP connection is being set up, before asyncpg sends its SSL request, makes the
    event loop close the transport; asyncpg's ``TLSUpgradeProto.connection_lost`` then sets
    ``ConnectionError('unexpected connection_lost() call')`` on a future (``on_data``) that no
    one will ever await, and the loop reports "Future exception was never retrieved" once the
    future is collected (asyncpg 0.32). A conductor cancelled as it starts hit that 8 times in
    30. So the connect runs in a task of its own, out of the cancellation's reach; a caller
    that is cancelled (or fails) meanwhile lets it finish, for at most ``_CONNECT_GRACE``
    seconds, closes the connection it made, and then re-raises.
    """
    connecting = asyncio.ensure_future(asyncpg.connect(*args, **kwargs))
    try:
        return await asyncio.shield(connecting)
    except BaseException:
        # Shielded so the cancellation being raised cannot cut this cleanup short; bounded by
        # the grace and the close's own timeouts.
        with anyio.CancelScope(shield=True):
            await _abandon(connecting)
        raise


async def _abandon(connecting: asyncio.Future[Any]) -> None:
    """Let a connect its caller gave up on end, then close the connection it made."""
    await asyncio.wait([connecting], timeout=_CONNECT_GRACE)
    if not connecting.done():
        # Past the grace the connect is most likely still waiting for the server to accept
        # the TCP connection, where asyncpg has no protocol yet and a cut leaves nothing.
        connecting.cancel()
        await asyncio.wait([connecting], timeout=_CLEANUP_TIMEOUT)
        if not connecting.done():
            return
    if connecting.cancelled() or connecting.exception() is not None:
        return  # nothing was opened (and the exception is now retrieved)
    conn = connecting.result()
    # Closing says goodbye to the server; bounded, then terminated, in case it does not answer.
    with anyio.move_on_after(2), contextlib.suppress(Exception):
        await conn.close(timeout=2)
    if not conn.is_closed():
        conn.terminate()
