"""Batched PostgreSQL: the calls of one kind that concurrent callers make in one event-loop turn
go to the server as ONE statement, on a connection the batcher holds.

A conductor running 64 jobs creates 64 logbooks and ends 64 jobs in a few turns; one statement
each costs a pool acquire and release, asyncpg's per-call work and a round trip per job. A
:class:`Kind` says how one call runs alone (the unbatched statement) and how several run
together (one statement over the items' rows, sent as JSON documents or arrays: see
``store_batch``; a row per item in the items' order), so each caller gets its own outcome: its
own row, or its own error.

How a batch is made: the first call queued starts the batcher's worker task, which runs once
the tasks ready in this turn have run (and queued their calls): no timer, so a lone call waits
for nothing. The worker takes up to :data:`MAX_BATCH` calls of the oldest call's kind whose keys
differ from those of every call before them, of any kind (a second call on the same job or
logbook waits for a later statement: one statement never writes a row twice, and calls on one
row keep their order), runs them as one statement (one call: the unbatched statement), and goes
on while calls are queued, yielding one turn between statements so that the callers it woke can
queue their next calls. A worker that ends with calls queued starts the next: none is stranded.

Outcomes: a batched statement is atomic, so when the server refuses it (an error that is not a
connection's: one item's bad value, say) nothing was written and each call is run again alone,
so only the call at fault gets the error. A connection error fails every call of the batch, each
with its own copy of the error the unbatched call gives (``BackendUnavailable``, the closed error
once the link is closed): as for any lost reply, the statement may or may not have run.

Cancellation: the statement runs in the worker's task, never the caller's, so a cancelled
caller does not cancel it for the others. A call cancelled while still queued is taken off the
queue and never runs; one already taken into a statement is waited for (shielded), then the
cancellation lands: its effect is known to have happened or not, as for an unbatched call,
whose connection goes back to the pool only once its statement has ended. Once every caller of
the statement under way has left, the statement is cancelled (asyncpg cancels it on the server;
one statement, it writes all or nothing), so callers are not held up by a statement that waits
on someone else's lock.

The connection: one pooled connection, held between statements (no acquire per call or batch)
and given back when the link closes, or when its statement failed or was cancelled (the pool
resets it, or replaces it if the server dropped it; the next statement takes another). One the
server dropped while it was idle (a restart, an idle timeout) is found closed before the next
statement and replaced, the statement never sent on it. With a pool of one connection the
batcher takes it for each statement only, so the link's other calls get their turn between
statements.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from asyncpg import exceptions as pgexc  # type: ignore[import-untyped]  # untyped driver

from aioconductor._backends.base import BatchedCall
from aioconductor._backends.base import ErrorTable
from aioconductor._backends.base import translate
from aioconductor.errors import AioconductorError

__all__ = ["MAX_BATCH", "BatchLink", "Batcher", "Kind"]

#: The most calls one statement takes (bounds its arrays, its locks and its time).
MAX_BATCH = 256


class BatchLink(Protocol):
    """What the batcher uses of its link (a ``PostgresLink``, which holds the batcher)."""

    closed: bool
    pool_max: int

    def closed_error(self) -> Exception: ...

    def errors(self, what: str) -> ErrorTable: ...

    async def take(self, what: str) -> tuple[Any, Any]: ...

    async def give_back(self, pool: Any, conn: Any, pid: int | None, *, settled: bool) -> None: ...


@dataclass(frozen=True, eq=False, slots=True)
class Kind:
    """One kind of batched call: how one runs alone, how several run together.

    Args:
        what: the verb errors name (as the unbatched call's ``link.call`` names it).
        keys: the rows an item writes (a job's id, a logbook's uuid): two items sharing one
            never go in one statement.
        alone: runs one item, the unbatched statement: its reply.
        together: runs several items as one statement: their replies, in the items' order.
    """

    what: str
    keys: Callable[[Any], tuple[Hashable, ...]]
    alone: Callable[[Any, Any], Awaitable[Any]]
    together: Callable[[Any, list[Any]], Awaitable[Sequence[Any]]]


class _Call(BatchedCall):
    """One caller's call: the statement that takes it settles it, then ends it."""

    __slots__ = ("abandoned", "item", "kind")

    def __init__(self, kind: Kind, item: Any) -> None:
        super().__init__()
        self.kind = kind
        self.item = item
        #: Its caller was cancelled after the call was taken into a statement.
        self.abandoned = False


class Batcher:
    """Runs the calls of concurrent callers, a statement per kind and event-loop turn, on a
    connection of ``link``'s pool (see the module)."""

    def __init__(self, link: BatchLink) -> None:
        self._link = link
        self._queue: list[_Call] = []
        self._worker: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._pool: Any = None
        #: The held connection's server pid, read when it was taken (a connection the pool
        #: took back when it closed answers no call any more).
        self._pid: int | None = None
        #: The calls of the statement under way.
        self._running: list[_Call] = []
        self._closed = False

    async def run(self, kind: Kind, item: Any) -> Any:
        """Run ``item`` of ``kind`` (with the others of this turn): its reply.

        Raises:
            Exception: the call's own error, as the unbatched call raises it.
        """
        if self._closed or self._link.closed:
            raise self._link.closed_error()
        call = _Call(kind, item)
        self._queue.append(call)
        self._start()
        # Cancelled while still queued: off the queue, never sent. Once taken: its statement
        # may be stopped if nobody waits for it any more (``_abandoned``), and is waited for.
        await call.ended(lambda: self._queue, self._abandoned)
        return call.outcome()

    def _start(self) -> None:
        if self._worker is None and self._queue and not self._closed:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def _abandoned(self, call: _Call) -> None:
        """A caller cancelled after its call was taken: once no caller of the statement under
        way waits for it any more, stop it (the server cancels it; being one statement, it
        writes all or nothing), so cancelled callers are not held up by a slow statement."""
        call.abandoned = True
        running, worker = self._running, self._worker
        if call in running and all(c.abandoned for c in running) and worker is not None:
            worker.cancel()

    def _take(self) -> list[_Call]:
        """The next statement's calls: the oldest call's kind, keys all different."""
        kind = self._queue[0].kind
        taken: list[_Call] = []
        left: list[_Call] = []
        seen: set[Hashable] = set()
        for call in self._queue:
            keys = call.kind.keys(call.item)
            if call.kind is not kind or len(taken) == MAX_BATCH or not seen.isdisjoint(keys):
                left.append(call)
            else:
                taken.append(call)
            # A later call on these rows waits, whatever its kind: calls on one row keep
            # their order.
            seen.update(keys)
        self._queue = left
        return taken

    async def _work(self) -> None:
        stopped = False
        try:
            while self._queue and not self._closed:
                batch = self._running = self._take()
                try:
                    await self._flush(batch)
                except asyncio.CancelledError:
                    if not all(call.abandoned for call in batch) or self._closed:
                        raise
                    stopped = True  # its callers all left (see _abandoned): go on
                except Exception as exc:
                    # Not the server's answer (a bug, a driver's surprise): this batch's
                    # calls get it, the queue goes on.
                    self._fail([c for c in batch if not c.settled], exc)
                    await self._give_back(settled=False)
                finally:
                    self._running = []
                    for call in batch:
                        if not call.settled:  # a cancel stopped the statement
                            call.settle(error=self._link.closed_error())
                        call.end()
                if self._link.pool_max < 2:
                    # The pool's only connection: the link's other calls get their turn.
                    await self._give_back(settled=True)
                # The callers just woken queue their next calls meanwhile.
                if stopped:
                    stopped = False
                    await _uncancel()
                await asyncio.sleep(0)
        finally:
            self._worker = None
            for call in self._queue if self._closed else ():
                call.settle(error=self._link.closed_error())
                call.end()
            if self._closed:
                await self._give_back(settled=True)
            else:
                self._start()  # a call queued as this worker ended: never stranded

    async def _flush(self, batch: list[_Call]) -> None:
        """Run ``batch`` as one statement and settle every call of it."""
        if len(batch) == 1:
            await self._alone(batch[0])
            return
        kind = batch[0].kind
        items = [call.item for call in batch]
        try:
            conn = await self._connection(kind.what)
            replies = list(await kind.together(conn, items))
        except Exception as exc:
            if _refused(exc):
                # The server refused the statement (or the driver an argument of it), which
                # wrote nothing: run each call alone, so only the one at fault gets the error.
                for call in batch:
                    await self._alone(call)
            else:
                self._fail(batch, exc)
                await self._give_back(settled=False)
            return
        except BaseException:
            await self._give_back(settled=False)
            raise
        if len(replies) != len(batch):
            raise RuntimeError(f"{kind.what}: {len(replies)} replies to {len(batch)} calls")
        for call, reply in zip(batch, replies, strict=True):
            call.settle(reply)

    async def _alone(self, call: _Call) -> None:
        """Run ``call`` by its own statement on the held connection and settle it."""
        try:
            conn = await self._connection(call.kind.what)
            call.settle(await call.kind.alone(conn, call.item))
        except Exception as exc:
            call.settle(error=self._translated(call.kind.what, exc))
            if not _refused(exc):
                await self._give_back(settled=False)
        except BaseException:
            await self._give_back(settled=False)
            raise

    def _fail(self, batch: list[_Call], exc: Exception) -> None:
        """Fail every call of ``batch`` with its own copy of ``exc``, translated."""
        for call in batch:
            call.settle(error=self._translated(call.kind.what, exc))

    def _translated(self, what: str, exc: Exception) -> Exception:
        """The error an unbatched ``what`` raises for ``exc``: one object per caller (one
        raised in many tasks would collect all their tracebacks)."""
        if self._link.closed:
            return self._link.closed_error()
        mapped = translate(self._link.errors(what), exc)
        if mapped is None:
            if not isinstance(exc, AioconductorError):
                return exc  # no driver error: as it is (a bug, not a server's answer)
            mapped = _own_copy(exc)
        mapped.__cause__ = exc
        return mapped

    async def _connection(self, what: str) -> Any:
        """The held connection; a pooled one taken first if none is held (or the held one
        closed: the server dropped it while it was idle, say)."""
        if self._conn is not None and _closed(self._conn):
            # Closed, the pool has it back already (asyncpg detaches it): just forget it.
            self._conn = self._pool = self._pid = None
        if self._conn is None:
            self._pool, self._conn = await self._link.take(what)
            self._pid = self._conn.get_server_pid()
        return self._conn

    async def _give_back(self, *, settled: bool) -> None:
        """Give the held connection back to its pool: reset first unless ``settled`` (its
        last statement ended well), so that whatever it left running has ended."""
        conn, pool, pid = self._conn, self._pool, self._pid
        self._conn = self._pool = self._pid = None
        if conn is None:
            return
        await self._link.give_back(pool, conn, pid, settled=settled)

    async def aclose(self) -> None:
        """Refuse new calls, fail the queued ones, and give the connection back once the
        statement under way (if any) has ended."""
        self._closed = True
        worker = self._worker
        if worker is not None:
            # Bounded: the link's close terminates a connection still busy after that.
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await asyncio.shield(worker)
            if not worker.done():
                return  # its statement still runs on the connection: never given back busy
        for call in self._queue:  # queued after the worker ended: none will run them
            call.settle(error=self._link.closed_error())
            call.end()
        self._queue = []
        await self._give_back(settled=True)


#: Driver errors that mean the connection was lost (the others are the server's refusals).
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    pgexc.PostgresConnectionError,
    pgexc.OperatorInterventionError,
    pgexc.InsufficientResourcesError,
)


def _closed(conn: Any) -> bool:
    """Whether ``conn`` is closed (a connection the pool took back on close raises instead of
    answering: closed all the same)."""
    try:
        return bool(conn.is_closed())
    except pgexc.InterfaceError:
        return True


async def _uncancel() -> None:
    """Clear the cancel this task got to stop a statement its callers all left (a plain
    asyncio cancel: the worker goes on with the queue)."""
    task = asyncio.current_task()
    if task is not None:
        while task.cancelling():
            task.uncancel()


def _refused(exc: Exception) -> bool:
    """Whether ``exc`` is a refusal of the statement (by the server, or by the driver before
    it was sent), the connection still sound; else the connection may be lost."""
    if isinstance(exc, _CONNECTION_LOST):
        return False
    return isinstance(exc, (pgexc.PostgresError, pgexc.DataError))


def _own_copy(exc: AioconductorError) -> Exception:
    """An error like ``exc`` (ours, already translated) for one caller."""
    try:
        return type(exc)(*exc.args)
    except Exception:
        return exc
