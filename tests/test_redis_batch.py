"""Auto-pipelining of Lua scripts: concurrent calls share a pipeline, each keeps its outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from redis import exceptions as rexc
from redis.asyncio import Redis

from aioconductor._backends.redis.batch import ScriptBatcher
from tests.concurrency import outcomes_of
from tests.redis_helpers import redis_url, require_redis, unique

pytestmark = pytest.mark.redis

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
FAIL = "return redis.error_reply('refused ' .. ARGV[1])"


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    sync = require_redis()
    sync.close()
    opened = Redis.from_url(redis_url(), decode_responses=True)
    yield opened
    await opened.aclose()


@pytest.fixture
def key(client: Redis) -> str:
    return f"aioc:{{{unique('batch')}}}:n"


class CountingClient:
    """Counts the pipelines a batcher sends on the client it wraps (a pooled connection
    taken for each)."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.connection_pool = self
        self.pipelines = 0

    async def get_connection(self) -> Any:
        self.pipelines += 1
        return await self.client.connection_pool.get_connection()

    async def release(self, connection: Any) -> None:
        await self.client.connection_pool.release(connection)


async def test_concurrent_calls_share_one_pipeline_and_keep_their_replies(
    client: Redis, key: str
) -> None:
    counting = CountingClient(client)
    batcher = ScriptBatcher(counting)  # type: ignore[arg-type]
    incr, fail = client.register_script(INCR), client.register_script(FAIL)
    await incr(keys=[key], args=[0])  # loaded once, so EVALSHA finds it
    calls = [lambda i=i: batcher.run(incr, [key], [1]) for i in range(50)]
    calls.insert(7, lambda: batcher.run(fail, [key], ["seven"]))
    try:
        outcomes = await outcomes_of(*calls)
    finally:
        await client.delete(key)
    replies = [o for i, o in enumerate(outcomes) if i != 7]
    assert sorted(replies) == list(range(1, 51))  # every increment ran once, in some order
    assert isinstance(outcomes[7], rexc.ResponseError) and "refused seven" in str(outcomes[7])
    assert counting.pipelines == 1


async def test_callers_that_call_again_share_one_pipeline_a_turn(client: Redis, key: str) -> None:
    counting = CountingClient(client)
    batcher = ScriptBatcher(counting)  # type: ignore[arg-type]
    incr = client.register_script(INCR)
    await incr(keys=[key], args=[0])

    async def caller() -> None:
        for _ in range(5):
            await batcher.run(incr, [key], [1])

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(caller)
        assert await client.get(key) == "100"
    finally:
        await client.delete(key)
    # Every caller of a pipeline wakes in the same turn, so their next calls share one too.
    # (A first caller that sent the pipeline itself woke a turn after the others: each round
    # of calls took two pipelines or more.)
    assert counting.pipelines == 5


async def test_scripts_redis_forgot_are_loaded_and_run(client: Redis, key: str) -> None:
    batcher = ScriptBatcher(client)
    incr = client.register_script(INCR)
    await client.script_flush()
    try:
        outcomes = await outcomes_of(*(lambda: batcher.run(incr, [key], [2]) for _ in range(5)))
        assert sorted(outcomes) == [2, 4, 6, 8, 10]
    finally:
        await client.delete(key)


async def test_a_call_cancelled_in_the_queue_is_never_sent(client: Redis, key: str) -> None:
    from aioconductor._backends.redis.batch import _Call

    batcher = ScriptBatcher(client)
    incr = client.register_script(INCR)
    # A batch is about to be taken: its first call heads the queue, so the next caller joins.
    first = _Call(incr, [key], [1])
    batcher._queue.append(first)
    with anyio.move_on_after(0.05):
        await batcher.run(incr, [key], [100])
    assert batcher._queue == [first]  # the cancelled call left the queue: never sent
    batcher._queue.clear()
    assert await client.get(key) is None


async def test_a_connection_error_fails_every_call_with_its_own_error() -> None:
    require_redis().close()
    dead = Redis.from_url("redis://127.0.0.1:1/0", decode_responses=True)
    batcher = ScriptBatcher(dead)
    incr = dead.register_script(INCR)
    try:
        outcomes = await outcomes_of(*(lambda: batcher.run(incr, ["k"], [1]) for _ in range(3)))
    finally:
        await dead.aclose()
    assert all(isinstance(o, rexc.ConnectionError) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 3


async def test_a_first_caller_cancelled_by_asyncio_leaves_no_caller_without_a_sender(
    client: Redis, key: str
) -> None:
    import asyncio

    batcher = ScriptBatcher(client)
    incr = client.register_script(INCR)
    await incr(keys=[key], args=[0])
    try:
        first = asyncio.ensure_future(batcher.run(incr, [key], [1]))
        await asyncio.sleep(0)  # its call is queued for the sending task, letting others queue
        first.cancel()  # asyncio.wait_for, asyncio.timeout: shields do not stop these
        with pytest.raises(asyncio.CancelledError):
            await first
        assert batcher._queue == []
        with anyio.fail_after(5):
            assert await batcher.run(incr, [key], [1]) == 2  # the first call ran, then this one
    finally:
        await client.delete(key)


async def test_an_argument_that_cannot_be_sent_fails_its_call_alone(
    client: Redis, key: str
) -> None:
    batcher = ScriptBatcher(client)
    incr = client.register_script(INCR)
    await incr(keys=[key], args=[0])
    try:
        outcomes = await outcomes_of(
            lambda: batcher.run(incr, [key], [1]),
            lambda: batcher.run(incr, [key], [{"not": "sendable"}]),
            lambda: batcher.run(incr, [key], [1]),
        )
        assert sorted(o for o in outcomes if isinstance(o, int)) == [1, 2]
        assert isinstance(outcomes[1], rexc.DataError)
    finally:
        await client.delete(key)
