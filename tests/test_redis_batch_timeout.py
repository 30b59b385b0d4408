"""A pipeline whose replies stop coming is bounded by the connection's socket timeout: the
batcher reads a pipeline's replies under one timeout, not redis-py's own one per reply.

A fake server (it answers the connection's set-up, then a set number of commands, then nothing)
stands in for a Redis that stopped answering, so no test pauses the shared Redis."""

from __future__ import annotations

import contextlib
import time

import anyio
import pytest
from redis import exceptions as rexc
from redis.asyncio import Redis

from aioconductor._backends.redis import wire
from aioconductor._backends.redis.batch import ScriptBatcher
from tests.redis_helpers import ScriptedRedis, scripted_redis

RETURN_ONE = "return 1"


@pytest.fixture(params=[True, False], ids=["direct", "redis-py"])
def direct(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Replies read straight from the hiredis reader, or by redis-py's ``read_response``."""
    monkeypatch.setattr(wire, "_DIRECT", request.param)
    return bool(request.param)


def stalling(answered: int) -> contextlib.AbstractAsyncContextManager[tuple[ScriptedRedis, int]]:
    """A fake Redis answering ``:1`` to the first ``answered`` scripts, then nothing."""
    return scripted_redis(lambda n: b":1\r\n" if n <= answered else b"")


async def test_replies_that_stop_coming_fail_every_call_after_the_socket_timeout(
    direct: bool,
) -> None:
    async with stalling(answered=1) as (server, port):
        client = Redis.from_url(f"redis://127.0.0.1:{port}/0?socket_timeout=0.3", protocol=2)
        try:
            batcher = ScriptBatcher(client)
            script = client.register_script(RETURN_ONE)
            outcomes: list[object] = []

            async def call() -> None:
                try:
                    outcomes.append(await batcher.run(script, [], []))
                except Exception as exc:
                    outcomes.append(exc)

            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(call)
            elapsed = time.monotonic() - started
            # One pipeline of three: the first reply came, then none. Like a lost connection,
            # the timeout fails every call of the pipeline (each may or may not have run).
            assert server.evals == 3
            assert len(outcomes) == 3
            assert all(isinstance(o, rexc.TimeoutError) for o in outcomes), outcomes
            assert elapsed < 2.0  # the socket timeout, not the batcher's 10 s bound
            # The connection that may still owe replies is never handed out again.
            assert all(
                c.is_connected is False for c in client.connection_pool._available_connections
            )
        finally:
            await client.aclose()
