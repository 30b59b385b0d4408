"""Auto-pipelining: the scripts that concurrent callers run in one event-loop turn are sent to
Redis together, as one pipeline (one write, one read, one pooled connection).

A conductor running 64 jobs makes several script calls per job (claim, store writes, consume);
sent one by one, each pays redis-py's per-command costs (a connection from the pool, a socket
write and read, a timeout) and a round trip. Batched, they pay once per turn.

The first call of a turn starts a task that, once the other ready tasks have queued theirs,
takes the queue and sends it: a task of its own, so that no caller's cancellation (anyio's or a
plain asyncio cancel, which passes through shields) stops a pipeline half sent. Every caller
waits for its own call. A call cancelled while still queued is taken off the queue and never
sent; one already sent is waited for before the cancellation lands (its effect on Redis is then
known to have happened or not).

Every call keeps its own outcome: an error reply (``ResponseError``) fails that call alone. A
connection error fails every call of the pipeline, each with an exception object of its own; like
any lost reply, the script may or may not have run, and callers treat it so. ``EVALSHA`` of a
script Redis does not know (after a restart or ``SCRIPT FLUSH``) ran nothing, so those calls
are loaded and sent again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from aioconductor._backends.base import BatchedCall
from aioconductor._backends.redis import wire

__all__ = ["SEND_TIMEOUT", "ScriptBatcher"]

#: Seconds a pipeline may take, reply included, before its calls fail with ``TimeoutError``
#: (a Redis that stopped answering must not hold its callers for ever).
SEND_TIMEOUT = 10.0
_NO_REPLY = wire.NO_REPLY


class _Call(BatchedCall):
    """One caller's script call: the batch that takes it settles it, then ends it."""

    __slots__ = ("args", "keys", "script")

    def __init__(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> None:
        super().__init__()
        self.script = script
        self.keys = keys
        self.args = args


class ScriptBatcher:
    """Runs Lua scripts for concurrent callers, a pipeline per event-loop turn."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._queue: list[_Call] = []
        #: The tasks sending a batch (the loop keeps only weak references to tasks).
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script`` with ``keys`` and ``args``; its reply, or the error it got."""
        call = _Call(script, keys, args)
        queue = self._queue
        queue.append(call)
        if len(queue) == 1:
            # Its first step runs after the tasks ready now, which queue their calls meanwhile.
            self._start(self._send_queued())
        await call.ended(lambda: queue)
        return call.outcome()

    async def run_all(
        self, calls: Sequence[tuple[AsyncScript, Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """Run ``calls`` in order as one pipeline of their own; their replies, in order.

        Calls of one script keep their order even when Redis had forgotten it (all of them are
        then sent again, in order); calls of several scripts may not.

        Raises:
            Exception: the first call's error, if any failed (the others may have run).
        """
        batch = [_Call(script, keys, args) for script, keys, args in calls]
        if batch:
            self._start(self._send(batch))
            await batch[-1].ended(None)  # the batch ends its calls all at once
        return [call.outcome() for call in batch]

    def _start(self, sending: Any) -> None:
        task = asyncio.get_running_loop().create_task(sending)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_queued(self) -> None:
        # A copy: the queue stays the one list its callers leave when cancelled. It may be
        # empty, left by callers cancelled before it was taken.
        batch = self._queue.copy()
        self._queue.clear()
        if batch:
            await self._send(batch)

    async def _send(self, batch: list[_Call]) -> None:
        """Send ``batch`` and settle and end every call of it, whatever happens (bounded in
        time)."""
        deadline = asyncio.timeout(SEND_TIMEOUT)
        try:
            async with deadline:
                await self._exchange(batch)
        except Exception as exc:
            # Past the deadline: wire.send dropped the connection the pipeline
            # was on (cancelled mid-read).
            expired = deadline.expired()
            for call in batch:
                if not call.settled:
                    call.settle(error=rexc.TimeoutError(_NO_REPLY) if expired else _own_copy(exc))
        finally:
            for call in batch:
                if not call.settled:  # a BaseException (a cancel of this task) stopped it
                    call.settle(error=rexc.ConnectionError(_NO_REPLY))
                call.end()

    async def _exchange(self, batch: list[_Call]) -> None:
        try:
            # hiredis packs in C: redis-py's pure-Python packing was the largest single cost
            # of a conductor on Redis (about a sixth of its CPU).
            packed = b"".join(
                hiredis.pack_command(
                    ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
                )
                for call in batch
            )
        except (TypeError, ValueError):
            # An argument that cannot be encoded: nothing was sent. Send the calls one by
            # one, so that only the bad one fails (with redis-py's own error).
            for call in batch:
                await _run_alone(call)
            return
        answers = await wire.send(self._client.connection_pool, packed, len(batch))
        for call, reply in zip(batch, answers, strict=True):
            if isinstance(reply, rexc.NoScriptError):
                # Nothing ran. The script object loads the script and runs it again.
                await _run_alone(call)
            elif isinstance(reply, BaseException):
                call.settle(error=reply)
            else:
                call.settle(reply)


async def _run_alone(call: _Call) -> None:
    """Send ``call`` on its own and settle it with its reply or its error."""
    try:
        call.settle(await call.script(keys=call.keys, args=call.args))
    except Exception as exc:
        call.settle(error=exc)


def _own_copy(exc: Exception) -> Exception:
    """An exception like ``exc`` for one caller (one object raised in many tasks would collect
    all their tracebacks), caused by ``exc``."""
    try:
        copy = type(exc)(*exc.args)
    except Exception:
        copy = rexc.ConnectionError(str(exc))
    copy.__cause__ = exc
    return copy
