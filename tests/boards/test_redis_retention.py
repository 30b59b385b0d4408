"""What only the Redis board must show about keys and retention: the key hash, the ``ended``
indexes, what a purge leaves behind, and jobs written before keys and retention existed.

The behaviour every board shares is in the conformance suites ``boards_keys`` and
``boards_retention``."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
import redis
from redis import exceptions as rexc

from aioconductor._backends.redis import board_retention
from aioconductor.boards import JobBoard
from aioconductor.boards._posting import post_spec
from aioconductor.boards.redis import RedisJobBoard
from aioconductor.errors import BackendUnavailable, BoardError
from aioconductor.models import Job, JobState, Outcome
from tests.backends import RedisSpace, board_fixture, one_space_fixture

pytestmark = pytest.mark.redis

space = one_space_fixture("redis")
board = board_fixture("redis_retention", lease=5.0, poll_interval=0.05)


@pytest.fixture
def sync_redis(space: RedisSpace) -> redis.Redis:
    return space.client


@pytest.fixture
def prefix(space: RedisSpace) -> str:
    return f"aioc:{{{space.namespace('redis_retention')}}}:"


def server_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1_000_000


async def finished(board: JobBoard, how: str = "consume", **post: Any) -> Job:
    job = await board.post("j", "f", **post)
    claim = await board.claim(job.id, "owner-1")
    if how == "consume":
        return await board.consume(claim, outcome=Outcome.SUCCESS)
    return await board.trash(claim, reason="bad")


def write_old_job(
    client: redis.Redis, prefix: str, n: int, state: JobState, ended_at: float | None = None
) -> str:
    """A job as the board wrote it before keys and retention: no ``key`` field, and a finished
    one in ``state:<STATE>`` but in no ``ended:<STATE>``."""
    job_id = f"old-{n:05d}"
    seq = int(client.incr(prefix + "seq"))
    member = f"{seq:016x}:{job_id}"
    created = server_time(client) - 2000
    fields = {
        "id": job_id, "name": "old", "flow": "f", "args": json.dumps({"n": n}), "priority": "0",
        "seq": str(seq), "member": member, "created_at": f"{created:.6f}",
        "updated_at": f"{ended_at or created:.6f}", "max_attempts": "3",
        "attempts": "0" if state is JobState.UNCLAIMED else "1", "token": "0", "state": state.value,
    }  # fmt: skip
    if state is JobState.COMPLETE:
        fields |= {"outcome": "SUCCESS", "result": "{}"}
    elif state is JobState.TRASHED:
        fields["trash_reason"] = "bad"
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(f"{prefix}job:{job_id}", mapping=fields)
        pipe.zadd(prefix + "all", {member: 0})
        pipe.zadd(f"{prefix}state:{state.value}", {member: 0})
        if state is JobState.UNCLAIMED:
            pipe.zadd(prefix + "ready", {member: 0})
        pipe.execute()
    return job_id


# -- keys -----------------------------------------------------------------------------------------


async def test_the_key_hash_names_the_holder_and_its_job_keeps_the_key(
    board: JobBoard, prefix: str, sync_redis: redis.Redis
) -> None:
    job = await board.post("j", "f", key="order-1")
    await board.post("j", "f")
    assert sync_redis.hgetall(prefix + "keys") == {b"order-1": job.id.encode()}
    assert sync_redis.hget(f"{prefix}job:{job.id}", "key") == b"order-1"


async def test_a_keyed_post_sent_again_after_a_lost_reply_is_the_same_new_job(
    board: JobBoard,
) -> None:
    # The post is retried when its reply is lost: the job it wrote must read as created.
    spec = post_spec("j", "f", {"n": 1}, board.max_payload_bytes, key="k")
    first = await board._post(spec)
    again = await board._post(spec)
    assert first.id == again.id == spec.id
    assert again == first
    assert await board.job_count() == 1


async def test_a_holder_purged_while_a_post_reads_it_leaves_the_key_to_that_post(
    board: JobBoard, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(board, RedisJobBoard)
    holder = await finished(board, key="k")
    read = board._get_many

    async def purge_first(job_ids: list[str]) -> list[Job | None]:
        monkeypatch.undo()
        assert await board.purge(older_than=0) == 1
        return await read(job_ids)

    monkeypatch.setattr(board, "_get_many", purge_first)
    job, created = await board.get_or_post("j", "f", key="k")
    assert created and job.id != holder.id
    assert (await board.get_by_key("k")).id == job.id


async def test_a_key_whose_job_hash_is_gone_is_free_for_the_next_post(
    board: JobBoard, prefix: str, sync_redis: redis.Redis
) -> None:
    lost = await board.post("j", "f", key="k1")
    # Evicted, or deleted by hand: the key hash still names it.
    sync_redis.delete(f"{prefix}job:{lost.id}")
    with anyio.fail_after(5):
        job = await board.post("j", "f", key="k1")
    assert job.id != lost.id
    assert (await board.get_by_key("k1")).id == job.id
    assert sync_redis.hget(prefix + "keys", "k1") == job.id.encode()


async def test_a_post_whose_holder_is_never_found_gives_up(
    board: JobBoard, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(board, RedisJobBoard)
    await board.post("j", "f", key="k")

    async def gone(job_ids: list[str]) -> list[Job | None]:
        return [None] * len(job_ids)

    monkeypatch.setattr(board, "_get_many", gone)
    with anyio.fail_after(5), pytest.raises(BoardError, match="'k'"):
        await board.post("j", "f", key="k")


# -- retention ------------------------------------------------------------------------------------


async def test_purge_leaves_no_trace_of_the_jobs_it_deletes(
    board: JobBoard, prefix: str, sync_redis: redis.Redis
) -> None:
    kept = await board.post("kept", "f", key="kept")
    gone = [await finished(board, key="done"), await finished(board, "trash", key="bad")]
    assert await board.purge(older_than=0) == 2
    for key in sync_redis.scan_iter(match=prefix + "*"):
        kind = sync_redis.type(key)
        if kind == b"zset":
            found = b" ".join(sync_redis.zrange(key, 0, -1))
        elif kind == b"hash":
            found = b" ".join(b" ".join(pair) for pair in sync_redis.hgetall(key).items())
        else:
            found = b""
        for job in gone:
            assert job.id.encode() not in key + b" " + found
    assert sync_redis.hgetall(prefix + "keys") == {b"kept": kept.id.encode()}
    assert sync_redis.zcard(prefix + "ended:COMPLETE") == 0
    assert sync_redis.zcard(prefix + "ended:TRASHED") == 0


async def test_purge_never_deletes_a_job_that_is_not_finished(board: JobBoard) -> None:
    assert isinstance(board, RedisJobBoard)
    unclaimed = await board.post("u", "f", key="u")
    scheduled = await board.post("s", "f", delay=3600)
    claimed = await board.post("c", "f")
    await board.claim(claimed.id, "owner-1")
    ids = [unclaimed.id, scheduled.id, claimed.id, "no-such-job"]
    assert await board._purge(ids) == 0
    assert await board.job_count() == 3
    assert (await board.get_by_key("u")).id == unclaimed.id


async def test_jobs_are_purgeable_by_their_end_on_the_servers_clock(
    board: JobBoard, prefix: str, sync_redis: redis.Redis
) -> None:
    assert isinstance(board, RedisJobBoard)
    young = await finished(board)
    old = await finished(board, "trash")
    # `old` ended 1000 s ago by the server's clock, as its hash and its index say.
    ended_at = f"{server_time(sync_redis) - 1000:.6f}"
    sync_redis.hset(f"{prefix}job:{old.id}", "updated_at", ended_at)
    sync_redis.zadd(prefix + "ended:TRASHED", {f"{old.seq:016x}:{old.id}": ended_at})
    both = (JobState.COMPLETE, JobState.TRASHED)
    assert await board._purgeable(500, both, 10) == [old.id]
    assert await board._purgeable(0, both, 10) == [old.id, young.id]
    assert await board._purgeable(0, both, 1) == [old.id]
    assert await board._purgeable(0, (JobState.COMPLETE,), 10) == [young.id]


async def test_a_purge_whose_connection_fails_raises_and_deletes_nothing(
    board: JobBoard, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(board, RedisJobBoard)
    done = await finished(board)

    async def refused(*args: Any) -> Any:
        raise rexc.ConnectionError("Connection reset by peer")

    monkeypatch.setattr(board._link._batcher, "run", refused)
    with pytest.raises(BackendUnavailable):
        await board.purge(older_than=0)
    monkeypatch.undo()
    assert (await board.get(done.id)).state is JobState.COMPLETE


def ghost(client: redis.Redis, prefix: str, job: Job) -> str:
    """Delete ``job``'s hash behind the board's back (an evicting Redis, a DEL by hand); its
    index entries stay. Its member."""
    client.delete(f"{prefix}job:{job.id}")
    return f"{job.seq:016x}:{job.id}"


INDEXES = ("all", "state:COMPLETE", "state:TRASHED", "ended:COMPLETE", "ended:TRASHED")


async def test_entries_whose_job_hash_is_gone_neither_stall_a_purge_nor_stay(
    board: JobBoard, prefix: str, sync_redis: redis.Redis
) -> None:
    # The oldest entries, a whole batch of them and more, lead nowhere.
    ghosts = [ghost(sync_redis, prefix, await finished(board, how)) for how in ("consume", "trash")]
    # One left in `ended` only, as the scan of an earlier version left them.
    sync_redis.zrem(prefix + "state:COMPLETE", ghosts[0])
    sync_redis.zrem(prefix + "all", ghosts[0])
    kept = await board.post("kept", "f", key="kept")
    await finished(board, "trash", key="bad")
    with anyio.fail_after(10):
        assert await board.purge(older_than=0, batch=1) == 1
    assert [job.id async for job in board.iterjobs()] == [kept.id]
    for key in INDEXES:
        members = sync_redis.zrange(prefix + key, 0, -1)
        assert not {m.decode() for m in members} & set(ghosts), key
    assert sync_redis.hgetall(prefix + "keys") == {b"kept": kept.id.encode()}
    for state in ("COMPLETE", "TRASHED"):
        assert sync_redis.zcard(f"{prefix}state:{state}") == sync_redis.zcard(
            f"{prefix}ended:{state}"
        )


async def test_more_lost_entries_than_one_script_drops_are_all_dropped_by_one_purge(
    board: JobBoard, prefix: str, sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(board, RedisJobBoard)
    monkeypatch.setattr(board_retention, "GHOSTS_PER_STEP", 2)
    for _ in range(5):
        ghost(sync_redis, prefix, await finished(board))
    done = await finished(board)
    with anyio.fail_after(10):
        assert await board.purge(older_than=0, batch=1) == 1
    assert await board.job_count() == 0
    assert sync_redis.zcard(prefix + "ended:COMPLETE") == 0
    with pytest.raises(LookupError):
        await board.get(done.id)


async def test_the_index_scan_drops_a_lost_job_from_every_index(
    board: JobBoard, prefix: str, sync_redis: redis.Redis
) -> None:
    assert isinstance(board, RedisJobBoard)
    lost = ghost(sync_redis, prefix, await finished(board))
    old = write_old_job(sync_redis, prefix, 1, JobState.COMPLETE)
    assert await board._retention.backfill(JobState.COMPLETE) == 1
    for key in INDEXES:
        assert sync_redis.zscore(prefix + key, lost) is None, key
    assert [m.decode() for m in sync_redis.zrange(prefix + "ended:COMPLETE", 0, -1)] == [
        sync_redis.hget(f"{prefix}job:{old}", "member").decode()
    ]


# -- jobs written before keys and retention -------------------------------------------------------


async def test_jobs_written_before_keys_and_retention_read_run_and_are_purged(
    board: JobBoard, prefix: str, sync_redis: redis.Redis
) -> None:
    now = server_time(sync_redis)
    # More than one indexing step (ZSCAN pages through a large set) of old finished jobs.
    old_done = [
        write_old_job(sync_redis, prefix, n, JobState.COMPLETE, now - 1000 - n) for n in range(1200)
    ]
    old_trashed = [write_old_job(sync_redis, prefix, 5000, JobState.TRASHED, now - 900)]
    recent = write_old_job(sync_redis, prefix, 6000, JobState.COMPLETE, now)
    live = write_old_job(sync_redis, prefix, 7000, JobState.UNCLAIMED)
    # An index entry whose job hash is gone (an evicting Redis): dropped, not kept for ever.
    sync_redis.zadd(prefix + "state:COMPLETE", {f"{0:016x}:lost": 0})
    sync_redis.zadd(prefix + "all", {f"{0:016x}:lost": 0})

    job = await board.get(old_done[0])
    assert (job.key, job.state, job.args) == (None, JobState.COMPLETE, {"n": 0})
    claimed = await board.claim_next("owner-1")
    assert claimed is not None and claimed[0].id == live
    await board.consume(claimed[1])

    assert await board.purge(older_than=500) == len(old_done) + len(old_trashed)
    left = {job.id async for job in board.iterjobs()}
    assert left == {recent, live}
    for state in ("COMPLETE", "TRASHED"):
        assert sync_redis.zcard(f"{prefix}state:{state}") == sync_redis.zcard(
            f"{prefix}ended:{state}"
        )
    assert await board.purge(older_than=0) == 2
    assert await board.job_count() == 0


async def test_jobs_ended_by_an_older_conductor_later_are_purged_by_a_later_purge(
    board: JobBoard, prefix: str, sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rolling upgrade: conductors of the older version keep ending jobs unindexed.
    write_old_job(sync_redis, prefix, 1, JobState.COMPLETE, server_time(sync_redis) - 100)
    assert await board.purge(older_than=0) == 1
    write_old_job(sync_redis, prefix, 2, JobState.TRASHED, server_time(sync_redis) - 100)
    assert await board.purge(older_than=0) == 0  # indexed a moment ago: not scanned again yet
    monkeypatch.setattr(board_retention, "BACKFILL_PAUSE", 0.0)
    assert await board.purge(older_than=0) == 1
    assert await board.job_count() == 0
