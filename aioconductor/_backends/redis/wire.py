"""A pipeline's trip to Redis: its commands written on a pooled connection, every reply read.

redis-py's ``Connection.read_response`` costs several microseconds a reply beside the parsing
itself (a host string and a timeout per reply, the health and push checks, two wrapper calls),
and ``send_packed_command`` runs the write in a task of its own under ``asyncio.wait_for`` once
the connection has a socket timeout (as it has by default). On a connection parsed by hiredis,
:func:`send` therefore writes with ``Connection._send_packed_command`` and drains the hiredis
reader for all the replies, under one timeout for the whole trip. These are redis-py internals
(8.x): where any of them is missing, or the parser is another one, it takes redis-py's public
path instead, with the same outcomes.

Outcomes either way: an error reply (``ResponseError``, ``NoScriptError`` ...) is returned in
its place, for its call alone; a connection error or a timeout raises (every call of the
pipeline fails), and the connection, which may still owe replies, is dropped, never pooled.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from redis import exceptions as rexc

try:  # redis-py internals; see the module's docstring
    from redis._parsers.hiredis import NOT_ENOUGH_DATA
    from redis._parsers.hiredis import _AsyncHiredisParser as _HiredisParser
    from redis.asyncio.connection import AbstractConnection
except ImportError:  # pragma: no cover - another redis-py
    _HiredisParser = None  # type: ignore[assignment,misc]

__all__ = ["NO_REPLY", "send"]

NO_REPLY = "no reply: the script may or may not have run"
_CLOSED = "Connection closed by server."
_ABSENT = object()


def _has_internals() -> bool:
    """Whether this redis-py has every internal the direct path uses."""
    if _HiredisParser is None:
        return False
    parser_names = ("read_from_socket", "handle_push_response")
    connection_names = ("_send_packed_command", "_host_error", "connect_check_health")
    slots = {name for cls in _HiredisParser.__mro__ for name in getattr(cls, "__slots__", ())}
    return (
        all(hasattr(_HiredisParser, name) for name in parser_names)
        and {"_reader", "_connected"} <= slots
        and all(hasattr(AbstractConnection, name) for name in connection_names)
    )


_DIRECT = _has_internals()


async def send(pool: Any, packed: bytes, count: int) -> list[Any]:
    """Write ``packed`` (``count`` commands) on a connection of ``pool`` and read every reply;
    an error reply is returned in its place, as an exception.

    The connection's socket timeout bounds the whole trip (the reading of all the replies),
    not each reply.

    Raises:
        redis.exceptions.ConnectionError: the connection failed (replies are lost).
        redis.exceptions.TimeoutError: the replies did not all come in time.
    """
    conn = await pool.get_connection()
    try:
        parser = getattr(conn, "_parser", None)
        # The type of push frames, so that none is taken for a reply: without it, no direct path.
        push = getattr(parser, "_hiredis_PushNotificationType", _ABSENT)
        try:
            if _DIRECT and type(parser) is _HiredisParser and push is not _ABSENT:
                async with asyncio.timeout(conn.socket_timeout):
                    await _write(conn, packed)
                    replies = await _read(conn, parser, push, count)
            else:
                await conn.send_packed_command(packed, check_health=False)
                async with asyncio.timeout(conn.socket_timeout):
                    replies = await _read_each(conn, count)
        except TimeoutError:
            raise rexc.TimeoutError(f"Timeout reading from Redis: {NO_REPLY}") from None
        if conn.health_check_interval:
            loop = asyncio.get_running_loop()
            conn.next_health_check = loop.time() + conn.health_check_interval
        return replies
    except BaseException:
        # Replies may be left unread on it: never hand it to anyone else.
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)


async def _write(conn: Any, packed: bytes) -> None:
    """``send_packed_command`` without its task and timeout (the caller's bounds the trip)."""
    if not conn.is_connected:
        await conn.connect_check_health(check_health=False)
    try:
        await conn._send_packed_command((packed,))
    except OSError as exc:  # as redis-py words it (the timeout's TimeoutError comes later)
        errno, message = ("UNKNOWN", exc.args[0]) if len(exc.args) == 1 else exc.args[:2]
        raise rexc.ConnectionError(f"Error {errno} while writing to socket. {message}.") from exc


async def _read(conn: Any, parser: Any, push: Any, count: int) -> list[Any]:
    """``count`` replies drained from the hiredis reader of ``parser``, fed from the socket
    as needed: what ``read_response`` would return for each, or raise. ``push``: the type of
    push frames (None: hiredis has none, as for redis-py itself)."""
    gets = parser._reader.gets
    replies: list[Any] = []
    try:
        while len(replies) < count:
            if not parser._connected:
                raise rexc.ConnectionError(_CLOSED)
            reply = gets()
            if reply is NOT_ENOUGH_DATA:
                await parser.read_from_socket()
            elif push is not None and isinstance(reply, push):
                await parser.handle_push_response(reply)  # RESP3: not a reply to a command
            elif isinstance(reply, rexc.ConnectionError):
                raise reply  # LOADING, NOAUTH ...: the parser raises those
            elif isinstance(reply, list) and reply and isinstance(reply[0], rexc.ConnectionError):
                raise reply[0]
            else:
                replies.append(reply)
    except OSError as exc:
        raise rexc.ConnectionError(
            f"Error while reading from {conn._host_error()} : {exc.args}"
        ) from exc
    return replies


async def _read_each(conn: Any, count: int) -> list[Any]:
    """``count`` replies read by redis-py's public ``read_response``, one by one."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            # math.inf: no timeout of redis-py's own (the caller's bounds the reading).
            replies.append(await conn.read_response(timeout=math.inf))
        except rexc.ResponseError as exc:
            replies.append(exc)
    return replies
