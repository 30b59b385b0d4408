"""A pipeline's trip (``wire.send``): its replies, read straight from the hiredis reader, are what
redis-py's own ``read_response`` gives reply by reply. Each test runs both ways: the direct path
and redis-py's public one (the fallback where its internals are missing).

Redis's own replies come from the shared Redis; the rarer ones (a push frame between replies, a
connection closed mid-pipeline, ``LOADING``) from a fake server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import hiredis
import pytest
from redis import exceptions as rexc
from redis.asyncio import Redis

from aioconductor._backends.redis import wire
from tests.redis_helpers import redis_url, require_redis, scripted_redis

BIG = "return string.rep('x', 5000) .. ARGV[1]"
FAIL = "return redis.error_reply('refused ' .. ARGV[1])"


@pytest.fixture(params=[True, False], ids=["direct", "redis-py"])
def direct(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(wire, "_DIRECT", request.param)
    return bool(request.param)


def evalsha(sha: str, *args: str) -> bytes:
    return hiredis.pack_command(("EVALSHA", sha, 0, *args))


@pytest.mark.redis
async def test_replies_over_many_reads_each_in_its_place(direct: bool) -> None:
    require_redis().close()
    client = Redis.from_url(redis_url(), decode_responses=True)
    try:
        big, fail = client.register_script(BIG), client.register_script(FAIL)
        await big(keys=[], args=["0"])
        await client.script_load(FAIL)
        # 200 KB of replies: the reader is fed from the socket many times over.
        packed = [evalsha(big.sha, str(i)) for i in range(40)]
        packed[5] = evalsha(fail.sha, "five")
        packed[30] = evalsha("0" * 40)  # no such script: NOSCRIPT, which runs nothing
        replies = await wire.send(client.connection_pool, b"".join(packed), len(packed))
        assert len(replies) == 40
        for i, reply in enumerate(replies):
            if i == 5:
                assert type(reply) is rexc.ResponseError and "refused five" in str(reply)
            elif i == 30:
                assert isinstance(reply, rexc.NoScriptError)
            else:
                assert reply == "x" * 5000 + str(i)
        # Every reply was read: the pooled connection answers its next command, not an old one.
        assert await client.ping() is True
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def fake(answer: Callable[[int], bytes | None]) -> AsyncIterator[Redis]:
    """A client of a :class:`ScriptedRedis` answering with ``answer``."""
    async with scripted_redis(answer) as (_, port):
        client = Redis.from_url(f"redis://127.0.0.1:{port}/0?socket_timeout=5", protocol=2)
        try:
            yield client
        finally:
            await client.aclose()


async def test_push_frames_between_replies_are_no_replies(direct: bool) -> None:
    push = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
    async with fake(lambda n: push + b":%d\r\n" % n + push) as client:
        packed = evalsha("a" * 40) * 3
        assert await wire.send(client.connection_pool, packed, 3) == [1, 2, 3]


async def test_a_connection_closed_mid_pipeline_fails_it_and_is_never_pooled(
    direct: bool,
) -> None:
    async with fake(lambda n: b":1\r\n" if n == 1 else None) as client:
        with pytest.raises(rexc.ConnectionError):
            await wire.send(client.connection_pool, evalsha("a" * 40) * 3, 3)
        pool = client.connection_pool
        assert all(c.is_connected is False for c in pool._available_connections)


async def test_a_loading_reply_fails_the_whole_pipeline(direct: bool) -> None:
    # redis-py raises the errors that stand for an unusable connection (LOADING is one).
    async with fake(lambda n: b"-LOADING Redis is loading\r\n" if n == 2 else b":1\r\n") as client:
        with pytest.raises(rexc.BusyLoadingError):
            await wire.send(client.connection_pool, evalsha("a" * 40) * 3, 3)
        pool = client.connection_pool
        assert all(c.is_connected is False for c in pool._available_connections)


async def test_a_parser_without_the_push_type_takes_redis_pys_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without it, a push frame could be taken for a reply: the direct path is not safe. (A
    # parser here always has it; its value is made to read as the marker of its absence.)
    async def unsafe(*args: object) -> None:
        raise AssertionError("the direct path was taken")

    monkeypatch.setattr(wire, "_read", unsafe)
    monkeypatch.setattr(wire, "_ABSENT", getattr(hiredis, "PushNotification", None))
    async with fake(lambda n: b":%d\r\n" % n) as client:
        assert await wire.send(client.connection_pool, evalsha("a" * 40) * 2, 2) == [1, 2]
