"""What only the Redis board must show: key layout, scripts, its pool, secrets, settings.

What every server backend must show (killed connections, restarts, cancelled calls, passwords,
many processes) is in the tests parametrised over ``tests/backends.py``."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import anyio
import pytest
import redis
from redis.asyncio.connection import SSLConnection
from redis.crc import key_slot

from aioconductor.boards import JobBoard, open_board
from aioconductor.boards.base import EncodedObject
from aioconductor.boards.redis import RedisJobBoard
from aioconductor.errors import (
    BackendUnavailable,
    ConfigurationError,
    UnclaimableJob,
)
from aioconductor.models import MAX_KEPT_FAILURES, JobState, RetryPolicy
from tests.backends import RedisSpace, board_fixture, one_space_fixture, with_user
from tests.redis_helpers import redis_url

pytestmark = pytest.mark.redis

space = one_space_fixture("redis")


@pytest.fixture
def sync_redis(space: RedisSpace) -> redis.Redis:
    return space.client


@pytest.fixture
def namespace(space: RedisSpace) -> str:
    return space.namespace("redis_board")


board = board_fixture("redis_board", lease=5.0, poll_interval=0.05)


# -- layout ---------------------------------------------------------------------------------------


async def test_every_key_of_a_namespace_is_in_one_cluster_slot(
    board: JobBoard, namespace: str, sync_redis: redis.Redis
) -> None:
    job = await board.post("j", "f", delay=60)
    other = await board.post("k", "f", key="{key}")
    claim = await board.claim(other.id, "owner-1")
    await board.consume(claim)
    await board.register_conductor("a{b}c", "worker", ttl=30)
    keys = list(sync_redis.scan_iter(match=f"aioc:{{{namespace}}}:*"))
    assert any(job.id.encode() in key for key in keys)
    prefix = f"aioc:{{{namespace}}}:".encode()
    assert {prefix + b"keys", prefix + b"ended:COMPLETE"} <= set(keys)
    assert len({key_slot(key) for key in keys}) == 1
    assert {key_slot(key) for key in keys} == {key_slot(f"{{{namespace}}}".encode())}


async def test_extreme_priorities_keep_claim_order(board: JobBoard) -> None:
    lowest = await board.post("lowest", "f", priority=-(2**31))
    highest = await board.post("highest", "f", priority=2**31 - 1)
    middle = [await board.post(f"m{i}", "f") for i in range(3)]
    expected = [highest.id, *(job.id for job in middle), lowest.id]
    assert [job.id async for job in board.iterjobs()] == expected
    assert [job.id async for job in board.iterjobs(state=JobState.UNCLAIMED)] == expected
    claimed = []
    while (next_job := await board.claim_next("o")) is not None:
        claimed.append(next_job[0].id)
    assert claimed == expected


async def test_more_due_jobs_than_one_promotion_takes_are_all_announced(
    board: JobBoard,
) -> None:
    delayed = {(await board.post(f"j{i}", "f", delay=1.0)).id for i in range(1200)}
    await anyio.sleep(1.1)
    seen: set[str] = set()
    with anyio.fail_after(10):
        async with contextlib.aclosing(board.stream()) as stream:
            async for note in stream:
                seen.add(note.job_id)
                if seen >= delayed:
                    break
    assert await board.job_count(state=JobState.UNCLAIMED) == len(delayed)


async def test_scripts_are_reloaded_after_script_flush(
    board: JobBoard, sync_redis: redis.Redis
) -> None:
    first = await board.post("a", "f")
    sync_redis.script_flush()
    second = await board.post("b", "f")
    claimed = await board.claim_next("owner-1")
    assert claimed is not None and claimed[0].id == first.id
    assert (await board.get(second.id)).state is JobState.UNCLAIMED


async def test_claim_takes_an_expired_lease_without_a_sweep(board: JobBoard) -> None:
    job = await board.post("j", "f")
    first = await board.claim(job.id, "owner-1", lease=0.2)
    await anyio.sleep(0.3)
    # Renewing an expired (but still current) claim takes it off the ready set again.
    renewed = await board.renew(first, lease=5)
    assert await board.claim_next("owner-2") is None
    with pytest.raises(UnclaimableJob):
        await board.claim(job.id, "owner-2")
    assert renewed.token == first.token


async def test_failures_are_kept_exactly_as_given(board: JobBoard) -> None:
    # The script keeps the latest failures without decoding them: nothing is rounded or
    # retyped on the way (cjson would round the float and make the empty list an object).
    def failure(n: int) -> dict[str, Any]:
        return {
            "n": n,
            "ratio": 0.1 + 0.2,
            "big": 2**62 + 1,
            "empty": [],
            "nested": {"": {}},
            "message": 'line one\nline two,\n]\u2028 "quoted" é 💥',
        }

    job = await board.post("j", "f")
    for n in range(MAX_KEPT_FAILURES + 3):
        retried = await board.retry(await board.claim(job.id, "o"), delay=0, failure=failure(n))
    expected = [failure(n) for n in range(3, MAX_KEPT_FAILURES + 3)]
    assert retried.failures == expected
    assert (await board.get(job.id)).failures == expected
    claimed = await board.claim_next("o")
    assert claimed is not None and claimed[0].failures == expected


async def test_failures_encoded_with_newlines_are_kept_whole(board: JobBoard) -> None:
    # The base class hands over compact JSON; text from an indenting encoder must not be
    # split into several failures by the script's one-a-line store.
    assert isinstance(board, RedisJobBoard)
    job = await board.post("j", "f")
    failures = [{"n": n, "lines": ["a", "b"]} for n in range(2)]
    for failure in failures:
        claim = await board.claim(job.id, "o")
        text = json.dumps(failure, indent=2).encode()
        retried = await board._retry(claim, 0.0, EncodedObject(failure, text))
    assert retried.failures == failures
    assert (await board.get(job.id)).failures == failures


async def test_a_retried_job_leaves_the_ready_set_its_expired_lease_put_it_in(
    board: JobBoard, namespace: str, sync_redis: redis.Redis
) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "owner-1", lease=0.2)
    await anyio.sleep(0.3)
    async with contextlib.aclosing(board.stream()) as stream:
        with anyio.fail_after(5):
            note = await anext(stream)  # the sweep put the expired lease in the ready set
    assert note.job_id == job.id
    # Nobody took the job over, so the expired claim is still its current one.
    retried = await board.retry(claim, delay=60)
    assert retried.state is JobState.SCHEDULED
    prefix = f"aioc:{{{namespace}}}:"
    assert sync_redis.zcard(prefix + "ready") == sync_redis.zcard(prefix + "leases") == 0
    assert sync_redis.zcard(prefix + "delayed") == 1
    assert await board.claim_next("owner-2") is None
    assert await board.job_count(state=JobState.SCHEDULED) == 1


async def test_jobs_written_before_releases_and_retries_existed_still_read(
    board: JobBoard, namespace: str, sync_redis: redis.Redis
) -> None:
    job = await board.post("j", "f", retry=RetryPolicy(retries=2))
    await board.retry(await board.claim(job.id, "o"), delay=0, failure={"message": "boom"})
    await board.release(await board.claim(job.id, "o"))
    await board.abandon(await board.claim(job.id, "o"))
    key = f"aioc:{{{namespace}}}:job:{job.id}"
    new_fields = ("releases", "abandons", "retries", "retry", "failures")
    assert sync_redis.hdel(key, *new_fields) == len(new_fields)
    old = await board.get(job.id)
    assert (old.releases, old.abandons, old.retries, old.retry, old.failures) == (0, 0, 0, None, [])
    released = await board.release(await board.claim(job.id, "o"))
    assert (released.releases, released.abandons) == (1, 0)


# -- cancellation ---------------------------------------------------------------------------------


async def test_a_cancelled_stream_releases_its_connection(board: JobBoard) -> None:
    assert isinstance(board, RedisJobBoard)
    pool = board._link.client.connection_pool
    await board.get((await board.post("j", "f")).id)
    for _ in range(20):
        with anyio.move_on_after(0.01):
            async with contextlib.aclosing(board.stream()) as stream:
                async for _ in stream:
                    await anyio.sleep_forever()
    assert len(pool._in_use_connections) == 0


# -- secrets, settings ----------------------------------------------------------------------------

SECRET = "s3cr3t-pa55word"


async def test_a_bad_password_is_refused_without_showing_it(space: RedisSpace) -> None:
    board = open_board(with_user(space.board_url("redis_board"), "nobody", SECRET))
    with pytest.raises(BackendUnavailable) as caught:
        await board.connect()
    assert SECRET not in str(caught.value)


async def test_username_and_password_come_from_the_url(
    space: RedisSpace, sync_redis: redis.Redis
) -> None:
    async with space.user(SECRET) as user:
        url = with_user(space.board_url("redis_board"), user, SECRET)
        async with open_board(url) as board:
            job = await board.post("j", "f")
            assert (await board.get(job.id)).id == job.id
            assert SECRET not in repr(board)
            assert user in {c["user"] for c in sync_redis.client_list()}


def test_rediss_urls_use_tls() -> None:
    board = open_board("rediss://127.0.0.1:6380/0?namespace=tls")
    assert isinstance(board, RedisJobBoard)
    assert board._link.client.connection_pool.connection_class is SSLConnection


async def test_options_the_board_sets_itself_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="decode_responses"):
        open_board(f"{redis_url()}?decode_responses=false")


async def test_evicting_redis_is_warned_about(
    space: RedisSpace, sync_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    url = space.board_url("redis_board")
    async with open_board(url):
        pass
    assert "maxmemory-policy" not in caplog.text
    policy = str(sync_redis.config_get("maxmemory-policy")["maxmemory-policy"])
    sync_redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with caplog.at_level(logging.WARNING, logger="aioconductor"):
            async with open_board(url):
                pass
    finally:
        sync_redis.config_set("maxmemory-policy", policy)
    assert "maxmemory-policy 'allkeys-lru'" in caplog.text


async def test_jobs_without_headers_read_back_each_with_a_dict_of_its_own(board: JobBoard) -> None:
    """A job posted without headers is stored without the field; read back (claimed, got) it
    has empty headers of its own, which a caller may fill without reaching another job's."""
    await board.post("plain-1", "noop", {"key": 1})
    await board.post("plain-2", "noop", {"key": 2})
    await board.post("with", "noop", {"key": 3}, headers={"trace": "t-1"})
    claimed = {job.name: job for job, _ in await board.claim_batch("owner", 3)}
    first, second = claimed["plain-1"], claimed["plain-2"]
    assert first.headers == {} and second.headers == {}
    first.headers["mine"] = "x"
    assert second.headers == {} and (await board.get(second.id)).headers == {}
    assert claimed["with"].headers == {"trace": "t-1"}
