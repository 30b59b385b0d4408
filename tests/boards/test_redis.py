"""What only the Redis board must show: cancellation safety, reconnection, secrets, key layout."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import shutil
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import redis
from redis.asyncio.connection import SSLConnection
from redis.crc import key_slot

from aioconductor.boards import JobBoard, open_board
from aioconductor.boards.base import EncodedObject
from aioconductor.boards.redis import RedisJobBoard
from aioconductor.errors import (
    BackendUnavailable,
    ClaimLost,
    ConfigurationError,
    UnclaimableJob,
)
from aioconductor.models import MAX_KEPT_FAILURES, JobNotification, JobState, RetryPolicy
from tests.conftest import service_missing
from tests.redis_helpers import delete_namespaces, redis_url, require_redis, unique

pytestmark = pytest.mark.redis


@pytest.fixture
def sync_redis() -> Iterator[redis.Redis]:
    client = require_redis()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def namespace(sync_redis: redis.Redis) -> Iterator[str]:
    name = unique("redis_board")
    try:
        yield name
    finally:
        delete_namespaces(sync_redis, [name])


@pytest.fixture
def client_name() -> str:
    """A client name for the board's connections, so a test can kill exactly those."""
    return f"aioc-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def board(namespace: str, client_name: str) -> AsyncIterator[JobBoard]:
    url = f"{redis_url()}?namespace={namespace}&client_name={client_name}"
    async with open_board(url, lease=5.0, poll_interval=0.05) as opened:
        yield opened


def kill_clients(sync_redis: redis.Redis, name: str, *, subscribers_only: bool = False) -> int:
    """Kill the server side of every connection named ``name``; how many were killed."""
    killed = 0
    for client in sync_redis.client_list():
        if client["name"] != name:
            continue
        if subscribers_only and client.get("sub") in ("0", 0):
            continue
        with contextlib.suppress(redis.ResponseError):  # it may have gone already
            killed += sync_redis.client_kill_filter(_id=client["id"])
    return killed


# -- layout ---------------------------------------------------------------------------------------


async def test_every_key_of_a_namespace_is_in_one_cluster_slot(
    board: JobBoard, namespace: str, sync_redis: redis.Redis
) -> None:
    job = await board.post("j", "f", delay=60)
    other = await board.post("k", "f")
    claim = await board.claim(other.id, "owner-1")
    await board.consume(claim)
    await board.register_conductor("a{b}c", "worker", ttl=30)
    keys = list(sync_redis.scan_iter(match=f"aioc:{{{namespace}}}:*"))
    assert any(job.id.encode() in key for key in keys)
    assert len({key_slot(key) for key in keys}) == 1
    assert {key_slot(key) for key in keys} == {key_slot(f"{{{namespace}}}".encode())}


async def test_user_data_is_data_not_code(board: JobBoard) -> None:
    sneaky = "x'); redis.call('FLUSHDB') --{ns} \" \\ \n ]]"
    job = await board.post(sneaky, sneaky, {sneaky: sneaky})
    claim = await board.claim(job.id, sneaky)
    got = await board.get(job.id)
    assert got.name == sneaky and got.flow == sneaky and got.args == {sneaky: sneaky}
    assert got.claim == claim and claim.owner == sneaky
    await board.trash(claim, reason=sneaky)
    assert (await board.get(job.id)).trash_reason == sneaky


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


async def test_a_cancelled_command_never_hands_its_reply_to_the_next_caller(
    board: JobBoard,
) -> None:
    # Big payloads take a while to arrive, so many cancellations land mid-reply.
    jobs = [await board.post(f"j{i}", "f", {"i": i, "pad": "x" * 800_000}) for i in range(8)]
    claims = [await board.claim(job.id, "owner-1", lease=60) for job in jobs[:4]]
    rng = random.Random(5)
    interrupted = 0
    for _ in range(300):
        victim = rng.choice(jobs)
        with anyio.move_on_after(rng.uniform(0, 0.004)) as scope:
            if rng.random() < 0.5:
                await board.get(victim.id)
            else:
                await board.renew(rng.choice(claims), lease=60)
        interrupted += scope.cancelled_caught
        expected = rng.choice(jobs)
        got = await board.get(expected.id)
        assert got.id == expected.id and got.args["i"] == expected.args["i"]
    assert interrupted > 30
    # Every claim is still current: a cancelled renew either happened whole or not at all.
    for claim in claims:
        assert (await board.renew(claim)).token == claim.token
    # No pooled connection holds an unread reply.
    assert isinstance(board, RedisJobBoard)
    pool = board._link.client.connection_pool
    for connection in pool._available_connections:
        if connection.is_connected:
            assert not await connection.can_read()


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


# -- reconnection ---------------------------------------------------------------------------------


async def test_killed_connections_lose_no_job_and_consume_none_twice(
    board: JobBoard, sync_redis: redis.Redis, client_name: str
) -> None:
    posted = {(await board.post(f"j{i}", "f")).id for i in range(300)}
    consumed: list[str] = []

    async def work() -> None:
        while True:
            try:
                claimed = await board.claim_next("worker", lease=0.3)
                if claimed is None:
                    if await board.job_count(state=JobState.COMPLETE) == len(posted):
                        return
                    # A claim or consume whose reply was lost: its lease expires, then the
                    # job is claimed again (or it was consumed after all).
                    await anyio.sleep(0.05)
                    continue
                await board.consume(claimed[1])
                consumed.append(claimed[0].id)
            except (BackendUnavailable, ClaimLost):
                await anyio.sleep(0.01)  # killed mid-command: the next call reconnects

    killed = 0

    async def kill() -> None:
        nonlocal killed
        while True:
            await anyio.sleep(0.02)
            killed += await anyio.to_thread.run_sync(kill_clients, sync_redis, client_name)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(kill)
            await work()
            tg.cancel_scope.cancel()
    assert killed >= 3
    assert len(consumed) == len(set(consumed))  # no job was consumed twice
    assert set(consumed) <= posted
    assert {job.state async for job in board.iterjobs()} == {JobState.COMPLETE}
    assert await board.job_count() == len(posted)


async def test_stream_recovers_when_its_subscription_is_killed(
    board: JobBoard, sync_redis: redis.Redis, client_name: str
) -> None:
    async with contextlib.aclosing(board.stream()) as stream:
        iterator = aiter(stream)
        first = await board.post("before", "f")
        with anyio.fail_after(5):
            assert (await anext(iterator)).job_id == first.id
        assert kill_clients(sync_redis, client_name, subscribers_only=True) == 1
        # Posted while the subscription is down: only the re-read after reconnecting finds it.
        missed = await board.post("during", "f")
        seen: list[JobNotification] = []
        with anyio.fail_after(5):
            while missed.id not in {note.job_id for note in seen}:
                seen.append(await anext(iterator))
        after = await board.post("after", "f")
        with anyio.fail_after(5):
            while after.id not in {note.job_id for note in seen}:
                seen.append(await anext(iterator))


# -- secrets, settings ----------------------------------------------------------------------------

SECRET = "s3cr3t-pa55word"


async def test_the_password_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"redis://alice:{SECRET}@127.0.0.1:1/9?namespace=secret"
    board = open_board(url)
    assert SECRET not in repr(board) and "***" in repr(board)
    with pytest.raises(BackendUnavailable) as caught:
        await board.connect()
    chain: list[BaseException] = []
    error: BaseException | None = caught.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for error in chain:
        assert SECRET not in str(error) and SECRET not in repr(error)
    assert "127.0.0.1:1" in str(caught.value)
    assert SECRET not in caplog.text


async def test_a_bad_password_is_refused_without_showing_it(namespace: str) -> None:
    url = redis_url().replace("redis://", f"redis://nobody:{SECRET}@", 1)
    board = open_board(f"{url}?namespace={namespace}")
    with pytest.raises(BackendUnavailable) as caught:
        await board.connect()
    assert SECRET not in str(caught.value)


async def test_username_and_password_come_from_the_url(
    namespace: str, sync_redis: redis.Redis
) -> None:
    user = f"aioc_test_{uuid.uuid4().hex[:10]}"
    sync_redis.acl_setuser(
        user, enabled=True, passwords=[f"+{SECRET}"], keys=["*"], channels=["*"], commands=["+@all"]
    )
    try:
        url = redis_url().replace("redis://", f"redis://{user}:{SECRET}@", 1)
        async with open_board(f"{url}?namespace={namespace}") as board:
            job = await board.post("j", "f")
            assert (await board.get(job.id)).id == job.id
            assert SECRET not in repr(board)
            assert user in {c["user"] for c in sync_redis.client_list()}
    finally:
        sync_redis.acl_deluser(user)


def test_rediss_urls_use_tls() -> None:
    board = open_board("rediss://127.0.0.1:6380/0?namespace=tls")
    assert isinstance(board, RedisJobBoard)
    assert board._link.client.connection_pool.connection_class is SSLConnection


async def test_options_the_board_sets_itself_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="decode_responses"):
        open_board(f"{redis_url()}?decode_responses=false")


async def test_evicting_redis_is_warned_about(
    namespace: str, sync_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{redis_url()}?namespace={namespace}"
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


# -- many processes -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_eight_processes_consume_each_of_5000_jobs_once(
    board: JobBoard, namespace: str, tmp_path: Path
) -> None:
    total = 5000
    posted = {(await board.post(f"j{i}", "f", {"i": i})).id for i in range(total)}
    url = f"{redis_url()}?namespace={namespace}"
    outs = [tmp_path / f"worker-{n}.txt" for n in range(8)]
    repo = Path(__file__).resolve().parents[2]
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for n, out in enumerate(outs):
                command = [sys.executable, "-m", "tests.board_drainer", url, f"w{n}", str(out)]
                tg.start_soon(
                    functools.partial(anyio.run_process, [*command, str(total)], cwd=repo)
                )
    consumed = [line for out in outs for line in out.read_text().splitlines()]
    assert len(consumed) == total and set(consumed) == posted
    assert sum(1 for out in outs if out.read_text()) > 1  # the work was shared
    assert await board.job_count(state=JobState.COMPLETE) == total


# -- a restarted server ---------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of this test's own (AOF on, in tmp_path), to stop and start at will."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            service_missing("the redis-server binary")
        self._binary = str(binary)
        self._directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._process: anyio.abc.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        command = [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "yes", "--dir", str(self._directory)]
        self._process = await anyio.open_process(command)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            with anyio.fail_after(10):
                while True:
                    with contextlib.suppress(redis.ConnectionError):
                        if await anyio.to_thread.run_sync(client.ping):
                            return
                    await anyio.sleep(0.05)
        finally:
            client.close()

    async def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()  # SIGTERM: Redis flushes its AOF and exits
            await self._process.wait()
            await self._process.aclose()
            self._process = None


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        with anyio.CancelScope(shield=True):
            await server.stop()


async def test_the_board_rides_out_a_redis_restart(private_redis: PrivateRedis) -> None:
    async with open_board(f"{private_redis.url}?namespace=restart", poll_interval=0.05) as board:
        jobs = [await board.post(f"j{i}", "f") for i in range(5)]
        claimed = await board.claim_next("owner-1")
        assert claimed is not None
        async with contextlib.aclosing(board.stream()) as stream:
            iterator = aiter(stream)
            with anyio.fail_after(5):
                await anext(iterator)
            await private_redis.stop()
            # A transition while Redis is down fails at once, and clearly.
            with pytest.raises(BackendUnavailable):
                await board.claim_next("owner-1")
            # A read waits for the restart (it retries with backoff).
            async with anyio.create_task_group() as tg:
                tg.start_soon(private_redis.start)
                with anyio.fail_after(8):
                    assert (await board.get(jobs[1].id)).state is JobState.UNCLAIMED
            # Nothing was lost; the claim made before the restart still holds.
            assert await board.job_count() == len(jobs)
            assert await board.find_owner(claimed[0].id) == "owner-1"
            await board.consume(claimed[1])
            # The stream reconnected: a post made now is announced.
            late = await board.post("late", "f")
            with anyio.fail_after(10):
                while (await anext(iterator)).job_id != late.id:
                    pass
