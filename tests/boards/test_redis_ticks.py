"""What only the Redis board must show about schedule ticks: the ``ticks`` hash, the keys the post
script declares, a tick sent again after a lost reply, and a holder purged while it is read.

The behaviour every board shares is in the conformance suite ``boards_ticks``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import redis

from aioconductor.boards import JobBoard
from aioconductor.boards._posting import post_spec
from aioconductor.boards._ticking import tick_key
from aioconductor.boards.redis import RedisJobBoard
from aioconductor.models import Job, Outcome
from tests.backends import RedisSpace, board_fixture, one_space_fixture

pytestmark = pytest.mark.redis

space = one_space_fixture("redis")
board = board_fixture("redis_ticks", lease=5.0, poll_interval=0.05)

#: 2026-01-01T00:00:00Z
T0 = 1_767_225_600.0


@pytest.fixture
def sync_redis(space: RedisSpace) -> redis.Redis:
    return space.client


@pytest.fixture
def prefix(space: RedisSpace) -> str:
    return f"aioc:{{{space.namespace('redis_ticks')}}}:"


def tick_spec(board: JobBoard, schedule: str, tick: float) -> Any:
    return post_spec(
        "j", "f", {}, board.max_payload_bytes, key=tick_key(schedule, tick), not_before=tick
    )


async def test_last_ticks_live_in_the_ticks_hash_and_outlive_a_purge(
    board: JobBoard, prefix: str, sync_redis: redis.Redis
) -> None:
    assert await board.post("plain", "f", key="k") is not None
    assert not sync_redis.exists(prefix + "ticks")  # a plain post writes no tick
    job = await board.post_tick("nightly", T0, "j", "f")
    assert job is not None
    await board.consume(await board.claim(job.id, "owner-1"), outcome=Outcome.SUCCESS)
    assert await board.purge(older_than=0) == 1
    assert sync_redis.hgetall(prefix + "ticks") == {b"nightly": repr(T0).encode()}
    assert sync_redis.hget(prefix + "keys", tick_key("nightly", T0)) is None
    assert await board.post_tick("nightly", T0, "j", "f") is None


async def test_the_tick_script_declares_every_key_it_touches_under_one_hash_tag(
    board: JobBoard, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(board, RedisJobBoard)
    sent: list[Sequence[str]] = []
    run = board._link.script

    async def spy(script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        sent.append(keys)
        return await run(script, keys, args)

    monkeypatch.setattr(board._link, "script", spy)
    assert await board.post_tick("s", T0, "j", "f") is not None
    (keys,) = sent
    assert prefix + "ticks" in keys and prefix + "keys" in keys
    assert all(key.startswith(prefix) for key in keys)


async def test_a_tick_sent_again_after_a_lost_reply_is_the_same_new_job(board: JobBoard) -> None:
    assert isinstance(board, RedisJobBoard)
    # A post is retried when its reply is lost: the job it wrote reads as created, even
    # though the schedule's last tick is now this one.
    spec = tick_spec(board, "s", T0)
    first = await board._post_tick("s", T0, spec)
    again = await board._post_tick("s", T0, spec)
    assert first is not None and again == first and first.id == spec.id
    assert await board.job_count() == 1
    assert await board._post_tick("s", T0, tick_spec(board, "s", T0)) is None


async def test_a_holder_purged_while_a_tick_reads_it_is_not_posted_again(
    board: JobBoard, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(board, RedisJobBoard)
    held = await board.post("by-hand", "f", key=tick_key("s", T0))
    await board.consume(await board.claim(held.id, "owner-1"), outcome=Outcome.SUCCESS)
    read = board._get_many

    async def purge_first(job_ids: list[str]) -> list[Job | None]:
        monkeypatch.undo()
        assert await board.purge(older_than=0) == 1
        return await read(job_ids)

    monkeypatch.setattr(board, "_get_many", purge_first)
    assert await board.post_tick("s", T0, "j", "f") is None
    assert await board.job_count() == 0
    assert await board.schedule_ticks() == {"s": T0}


async def test_a_namespace_written_before_ticks_reads_no_ticks_and_posts_them(
    board: JobBoard, prefix: str, sync_redis: redis.Redis
) -> None:
    old = await board.post("old", "f", key=tick_key("s", T0 + 60))
    assert await board.schedule_ticks() == {}
    assert await board.post_tick("s", T0, "j", "f") is not None
    # The next tick's key is already held (posted by hand before schedules): its holder.
    got = await board.post_tick("s", T0 + 60, "j", "f")
    assert got is not None and got.id == old.id
    assert sync_redis.hgetall(prefix + "ticks") == {b"s": repr(T0 + 60).encode()}


async def test_a_tick_whose_key_names_a_job_hash_that_is_gone_posts_its_job(
    board: JobBoard, prefix: str, sync_redis: redis.Redis
) -> None:
    lost = await board.post("by-hand", "f", key=tick_key("s", T0))
    sync_redis.delete(f"{prefix}job:{lost.id}")  # evicted, or deleted by hand
    job = await board.post_tick("s", T0, "j", "f")
    assert job is not None and job.id != lost.id
    assert (await board.get_by_key(tick_key("s", T0))).id == job.id
