"""What every backend's plumbing shares: the link interface, one table-driven translation of
driver errors, the backoff of reconnects and read retries, the reconnect of a notification channel
(``Redial``) and the parse of its messages, and batched calls (``BatchedCall``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, TypeVar

import anyio

from aioconductor._models import build
from aioconductor.errors import AioconductorError
from aioconductor.errors import BackendUnavailable
from aioconductor.models import JobNotification
from aioconductor.models import NotificationKind

__all__ = [
    "Backoff",
    "BatchedCall",
    "DueTimer",
    "ErrorTable",
    "Link",
    "OverLink",
    "Redial",
    "map_exceptions",
    "parse_note",
    "scrub",
    "sweep_delay",
    "translate",
]

#: The shortest wait before a sweep for something that fell due: never a busy loop.
MIN_SWEEP_DELAY = 0.005

#: Driver exceptions, most specific first, each with the library error it becomes.
ErrorTable = Sequence[
    tuple[
        type[BaseException] | tuple[type[BaseException], ...], Callable[[BaseException], Exception]
    ]
]


class map_exceptions:  # a context manager, named and used like a function
    """Re-raise a driver exception as the library error the first matching row of ``table``
    makes of it (chained: ``raise ... from exc``); the library's own errors, and exceptions no
    row matches, pass as they are.

    The one place a backend says how its driver fails, instead of a hand-written ``try`` per
    call (httpcore's ``map_exceptions`` is the model). A class rather than a generator-based
    context manager: it wraps every call to a server, and costs a third as much.
    """

    __slots__ = ("table",)

    def __init__(self, table: ErrorTable) -> None:
        self.table = table

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if isinstance(exc, Exception):
            mapped = translate(self.table, exc)
            if mapped is not None:
                raise mapped from exc
        return False


def translate(table: ErrorTable, exc: BaseException) -> Exception | None:
    """The library error the first matching row of ``table`` makes of ``exc``, or None when
    ``exc`` is the library's own or no row matches (for an error caught and handed on)."""
    if isinstance(exc, AioconductorError):
        # Never wrap our own: BackendUnavailable is an OSError, which tables often list.
        return None
    for types, make in table:
        if isinstance(exc, types):
            return make(exc)
    return None


def scrub(exc: BaseException | str, secrets: Iterable[str]) -> str:
    """``exc`` as text (its type's name when it has none), with each secret masked: a driver
    may echo a password from its URL in an error."""
    text = str(exc) or (type(exc).__name__ if isinstance(exc, BaseException) else "")
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class Link(Protocol):
    """A backend's connection to its server, as boards and stores on it use it.

    Each backend's link adds its own ways to run a call (a script, a statement in a pooled
    connection, a function in the database thread); these are what they all have.
    """

    #: The server's URL with its secrets masked, for messages and logs.
    url: str

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called: every later call raises the closed error."""

    def unavailable(self, what: str, exc: BaseException) -> BackendUnavailable:
        """The ``BackendUnavailable`` to raise for a driver error during ``what``."""

    async def aclose(self) -> None:
        """Close every connection, shielded and time-bounded."""


class Backoff:
    """Waits that double from ``first`` up to ``most``, until :meth:`reset`.

    Used for reconnecting a notification channel and for retrying idempotent reads while a
    server restarts.
    """

    def __init__(self, first: float = 0.05, most: float = 1.0) -> None:
        self.first = first
        self.most = most
        self.delay = first

    def next(self) -> float:
        """The wait to use now; the next one doubles (up to ``most``)."""
        delay = self.delay
        self.delay = min(self.delay * 2, self.most)
        return delay

    def reset(self) -> None:
        """Start again from ``first`` (the last try worked)."""
        self.delay = self.first

    async def sleep(self) -> None:
        """Sleep for :meth:`next`."""
        await anyio.sleep(self.next())


class Redial:
    """The reconnects of a notification channel that was lost: each tried no sooner than the
    backoff allows, and logged.

    A time to retry at, not a sleep per try: the stream cancels each receive at its own
    deadline, and a backoff restarted on every call would never end.
    """

    def __init__(self, logger: logging.Logger, server: str) -> None:
        self._logger = logger
        self._server = server
        # A restarting server refuses connections for a while.
        self._backoff = Backoff(first=0.05, most=2.0)
        self._retry_at = 0.0

    async def attempt(
        self,
        connect: Callable[[], Awaitable[None]],
        errors: type[Exception] | tuple[type[Exception], ...],
    ) -> bool:
        """Wait until the retry time, then ``connect()``.

        Returns:
            True once it reconnected; False when it raised one of ``errors``: the error is
            logged, and the next try put off.
        """
        await anyio.sleep_until(self._retry_at)
        try:
            await connect()
        except errors as exc:
            delay = self._backoff.next()
            self._retry_at = anyio.current_time() + delay
            self._logger.warning("%s; retrying in %.2f s", exc, delay)
            return False
        self._backoff.reset()
        self._logger.info("%s: notifications resumed", self._server)
        return True


def parse_note(payload: str) -> JobNotification | None:
    """A notification from a channel's message ``"<kind> <priority> <id>"`` (as the PostgreSQL
    and Redis boards publish them), or None if malformed."""
    try:
        kind, priority, job_id = payload.split(" ", 2)
        return build(
            JobNotification, job_id=job_id, kind=NotificationKind(kind), priority=int(priority)
        )
    except ValueError:
        return None


def sweep_delay(poll_interval: float, next_due: float | None, now: float) -> float:
    """Seconds until a board's stream should sweep: when the next thing it knows of falls due
    (a delayed job, a retried job, a lease), and at least every ``poll_interval``.

    ``next_due`` and ``now`` are on one clock, whichever the board keeps its deadlines on.
    """
    if next_due is None:
        return poll_interval
    return max(MIN_SWEEP_DELAY, min(poll_interval, next_due - now))


class _Opens(Protocol):
    """A link that :class:`OverLink` opens and closes."""

    url: str

    async def connect(self) -> None:
        """Open the connection (or pool)."""

    async def aclose(self) -> None:
        """Close it."""


_L = TypeVar("_L", bound=_Opens)


class OverLink(Generic[_L]):
    """A board or store that is one link to its server: it connects and closes with the link,
    and shows the link's URL (its secrets masked) in its repr."""

    _link: _L
    namespace: str

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._link.url} namespace={self.namespace!r}>"

    async def _connect(self) -> None:
        await self._link.connect()

    async def _aclose(self) -> None:
        await self._link.aclose()


class DueTimer:
    """The earliest deadline a board has heard of (its own delayed posts, retries, leases), on
    this process's monotonic clock, so that its stream sweeps then and not at the next poll.

    ``time.monotonic`` is the clock of asyncio's loop, and a tenth of the cost of asking anyio
    for it: :meth:`note` runs on every claim and renewal.
    """

    def __init__(self) -> None:
        self.next_due: float | None = None

    def note(self, due_at: float | None, now: float) -> None:
        """Note a deadline ``due_at`` given on the board's clock, which reads ``now``."""
        if due_at is None:
            return
        at = time.monotonic() + max(0.0, due_at - now)
        if self.next_due is None or at < self.next_due:
            self.next_due = at

    def clear(self) -> None:
        """Forget the noted deadline (a sweep ran: it found what was due)."""
        self.next_due = None

    def delay(self, poll_interval: float) -> float:
        """Seconds until the stream should sweep (see :func:`sweep_delay`)."""
        return sweep_delay(poll_interval, self.next_due, time.monotonic())


class BatchedCall:
    """One caller's call in a batch (the Redis pipelining, the PostgreSQL batcher, the SQLite
    group commit): whoever runs the batch settles it, then ends it; its caller waits with
    :meth:`ended` on a future of its own (not an asyncio.Event: one is made per call of every
    batch, and an Event's first wait takes a global lock)."""

    __slots__ = ("error", "over", "reply", "settled", "waiter")

    def __init__(self) -> None:
        self.reply: Any = None
        self.error: BaseException | None = None
        #: Whether the call has its outcome; whether the batch that took it is over.
        self.settled = self.over = False
        #: The future its caller awaits, if any.
        self.waiter: asyncio.Future[None] | None = None

    def settle(self, reply: Any = None, *, error: BaseException | None = None) -> None:
        """Give the call its reply, or its error."""
        self.reply, self.error, self.settled = reply, error, True

    def end(self) -> None:
        """The batch that took the call is over: wake its caller."""
        self.over = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def outcome(self) -> Any:
        """The call's reply, or its error raised."""
        if self.error is not None:
            raise self.error
        return self.reply

    async def ended(
        self,
        queue: Callable[[], list[Any]] | None,
        abandoned: Callable[[Any], None] | None = None,
    ) -> None:
        """Wait until the batch that took the call is over. ``queue`` gives the calls not
        taken yet (read when needed: a batcher may replace its list; None: taken already).

        Cancelled while still queued, the call leaves the queue and is never sent; once taken,
        the batcher is told (``abandoned``: it may stop a batch nobody waits for any more) and
        the call waits for its batch to end (its work may land; shielded, also from a plain
        asyncio cancel), then the cancellation goes on.
        """
        loop = asyncio.get_running_loop()
        try:
            while not self.over:
                self.waiter = loop.create_future()
                await self.waiter
        except BaseException:
            waiting = None if queue is None else queue()
            if waiting is not None and self in waiting:
                waiting.remove(self)  # never sent
                raise
            if abandoned is not None:
                abandoned(self)
            while not self.over:
                with contextlib.suppress(asyncio.CancelledError), anyio.CancelScope(shield=True):
                    self.waiter = loop.create_future()
                    await self.waiter
            raise
