"""Auto-pipelining: the scripts that concurrent callers run in one event-loop turn are sent to
Redis together, as one pipeline (one write, one read, one pooled connection).

A conductor running 64 jobs makes several script calls per job (claim, store writes, consume);
sent one by one, each pays redis-py's per-command costs (a connection from the pool, a socket
write and read, a timeout) and a round trip. Batched, they pay once per turn.

The first caller of a turn leads: it yields once so that the other ready tasks can queue their
calls, takes the queue, and sends it, shielded from cancellation so that the calls of others
riding on its pipeline are never dropped half sent. A follower waits for its own reply. A call
cancelled while still queued is taken off the queue and never sent; one already sent is waited
for before the cancellation lands (its effect on Redis is then known to have happened or not).

Every call keeps its own outcome: an error reply (``ResponseError``) fails that call alone. A
connection error fails every call of the pipeline, each with an exception object of its own; like
any lost reply, the script may or may not have run, and callers treat it so. ``EVALSHA`` of a
script Redis does not know (after a restart or ``SCRIPT FLUSH``) ran nothing, so those calls
are loaded and sent again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

import anyio
import hiredis
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from aioconductor._backends.base import Pending
from aioconductor._backends.redis import wire

__all__ = ["SEND_TIMEOUT", "ScriptBatcher"]

#: Seconds a pipeline may take, reply included, before its calls fail with ``TimeoutError``
#: (a Redis that stopped answering must not hold its callers, shielded, for ever).
SEND_TIMEOUT = 10.0
_NO_REPLY = wire.NO_REPLY


class _Call(Pending):
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

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script`` with ``keys`` and ``args``; its reply, or the error it got."""
        call = _Call(script, keys, args)
        self._queue.append(call)
        if len(self._queue) == 1:
            try:
                with anyio.CancelScope(shield=True):
                    await anyio.lowlevel.checkpoint()  # the other ready callers queue meanwhile
            finally:
                # Even when a plain asyncio cancel got through the shield: the calls queued
                # behind this one have no other leader.
                batch, self._queue = self._queue, []
                await _uncancelled(self._send(batch))
            await anyio.lowlevel.checkpoint_if_cancelled()
            return call.outcome()
        return await call.joined(lambda: self._queue)

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
        await _uncancelled(self._send(batch))
        await anyio.lowlevel.checkpoint_if_cancelled()
        return [call.outcome() for call in batch]

    async def _send(self, batch: list[_Call]) -> None:
        """Send ``batch`` and settle every call of it, whatever happens (bounded in time)."""
        try:
            with anyio.move_on_after(SEND_TIMEOUT) as deadline:
                await self._exchange(batch)
            if deadline.cancelled_caught:
                # wire.send dropped the connection the pipeline was on (cancelled mid-read).
                for call in batch:
                    if not call.settled:
                        call.settle(error=rexc.TimeoutError(_NO_REPLY))
        except Exception as exc:
            for call in batch:
                if not call.settled:
                    call.settle(error=_own_copy(exc))
        finally:
            for call in batch:
                if not call.settled:  # a BaseException (a plain asyncio cancel) stopped it
                    call.settle(error=rexc.ConnectionError(_NO_REPLY))
                call.done.set()

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


async def _uncancelled(work: Awaitable[None]) -> None:
    """Await ``work`` to its end: shielded from anyio's cancellation, and from a plain asyncio
    cancel, which passes through shields, by waiting again (the caller re-raises later)."""
    task = asyncio.ensure_future(work)
    while True:
        try:
            with anyio.CancelScope(shield=True):
                await asyncio.shield(task)
            return
        except asyncio.CancelledError:
            if task.done():
                return
            continue


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
