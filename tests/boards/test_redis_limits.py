"""What only the Redis board must show about cancel and concurrency limits: exactness under
concurrent claims from separate board objects (each claim one Lua script), the ``holders`` and
``parked`` sets the scripts keep per limit key, and the pub/sub pushes (``cancel``,
``slot_freed``).

The behaviour every board shares is in the conformance suites ``boards_cancel`` and
``boards_limits``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest
import redis
from redis.crc import key_slot

from aioconductor.boards import JobBoard, open_board
from aioconductor.errors import ClaimLost, UnclaimableJob
from aioconductor.models import Job, JobState, NotificationKind, Outcome
from tests.backends import RedisSpace, board_fixture, one_space_fixture

pytestmark = pytest.mark.redis

space = one_space_fixture("redis")

board = board_fixture("redis_limits", lease=5.0, poll_interval=0.05)

#: A lease that runs out within a test.
SHORT = 0.3


@pytest.fixture
def prefix(space: RedisSpace) -> str:
    return f"aioc:{{{space.namespace('redis_limits')}}}:"


@pytest.fixture
def sync_redis(space: RedisSpace) -> redis.Redis:
    return space.client


@contextlib.asynccontextmanager
async def boards(space: RedisSpace, count: int) -> AsyncIterator[list[JobBoard]]:
    """``count`` board objects on the namespace, each with its own connection pool."""
    async with contextlib.AsyncExitStack() as stack:
        url = space.board_url("redis_limits")
        yield [await stack.enter_async_context(open_board(url)) for _ in range(count)]


def members(sync_redis: redis.Redis, key: str) -> list[str]:
    """The job ids in sorted set ``key``, in order."""
    return [member.decode()[17:] for member in sync_redis.zrange(key, 0, -1)]


# -- exactness under concurrency ------------------------------------------------------------------


async def test_concurrent_batch_claims_from_many_boards_never_exceed_the_limit(
    space: RedisSpace, board: JobBoard
) -> None:
    await board.set_limit("payments", 3)
    await board.post_many("f", [{"n": n} for n in range(60)], limit_key="payments")
    free = await board.post_many("f", [{"n": n} for n in range(5)])
    taken: list[Job] = []

    async def claim(one: JobBoard, owner: str) -> None:
        for _ in range(5):
            taken.extend(job for job, _ in await one.claim_batch(owner, 4))

    async with boards(space, 8) as many, anyio.create_task_group() as tg:
        for at, one in enumerate(many):
            tg.start_soon(claim, one, f"owner-{at}")
    assert sum(job.limit_key == "payments" for job in taken) == 3
    assert {job.id for job in taken if job.limit_key is None} == {job.id for job in free}
    assert [info.claimed for info in await board.limits()] == [3]


async def test_concurrent_claims_by_id_of_one_full_key_let_exactly_the_limit_win(
    space: RedisSpace, board: JobBoard
) -> None:
    await board.set_limit("payments", 2)
    jobs = await board.post_many("f", [{} for _ in range(10)], limit_key="payments")
    won: list[str] = []
    refused: list[str] = []

    async def claim(one: JobBoard, job_id: str) -> None:
        try:
            await one.claim(job_id, "owner")
            won.append(job_id)
        except UnclaimableJob:
            refused.append(job_id)

    async with boards(space, 10) as many, anyio.create_task_group() as tg:
        for one, job in zip(many, jobs, strict=True):
            tg.start_soon(claim, one, job.id)
    assert len(won) == 2 and len(refused) == 8


async def test_lapsed_renewals_racing_new_claims_never_exceed_the_limit(
    space: RedisSpace, board: JobBoard
) -> None:
    await board.set_limit("payments", 1)
    first, _ = await board.post_many("f", [{}, {}], limit_key="payments")
    lapsed = await board.claim(first.id, "owner-1", lease=SHORT)
    await anyio.sleep(SHORT + 0.1)
    outcomes: dict[str, bool] = {}

    async def renew(one: JobBoard) -> None:
        try:
            await one.renew(lapsed)
            outcomes["renew"] = True
        except ClaimLost:
            outcomes["renew"] = False

    async def claim(one: JobBoard) -> None:
        outcomes["claim"] = await one.claim_next("owner-2") is not None

    async with boards(space, 2) as (a, b), anyio.create_task_group() as tg:
        tg.start_soon(renew, a)
        tg.start_soon(claim, b)
    # Either the renewal kept the slot (the claim parks the second job and takes nothing), or
    # the claim took the lapsed first job (and the renewal lost it): one live claim, always.
    assert [info.claimed for info in await board.limits()] == [1]
    assert outcomes["renew"] != outcomes["claim"]


# -- the holders and parked sets ------------------------------------------------------------------


async def test_a_claim_passes_a_full_keys_jobs_over_once_and_parks_them(
    board: JobBoard, sync_redis: redis.Redis, prefix: str
) -> None:
    await board.set_limit("payments", 1)
    jobs = await board.post_many("f", [{} for _ in range(4)], limit_key="payments", priority=5)
    other = await board.post("o", "f")
    first = await board.claim_next("owner-1")
    assert first is not None and first[0].id == jobs[0].id
    assert members(sync_redis, prefix + "holders:payments") == [jobs[0].id]
    taken = await board.claim_next("owner-2")
    assert taken is not None and taken[0].id == other.id
    # Passed over once, parked: no later claim reads them again until a slot is free.
    assert members(sync_redis, prefix + "parked:payments") == [job.id for job in jobs[1:]]
    assert members(sync_redis, prefix + "ready") == []
    assert await board.job_count(state=JobState.UNCLAIMED) == 3
    await board.consume(first[1])
    # One slot freed: the best parked job goes back to ready, the others stay parked.
    assert members(sync_redis, prefix + "ready") == [jobs[1].id]
    assert members(sync_redis, prefix + "parked:payments") == [job.id for job in jobs[2:]]
    assert members(sync_redis, prefix + "holders:payments") == []


async def test_a_job_handed_a_slot_and_then_cancelled_hands_it_on(board: JobBoard) -> None:
    await board.set_limit("payments", 1)
    jobs = await board.post_many("f", [{} for _ in range(3)], limit_key="payments")
    claimed = await board.claim_next("owner-1")
    assert claimed is not None
    assert await board.claim_next("owner-2") is None  # parks the other two
    await board.consume(claimed[1])  # hands the slot to jobs[1]
    await board.cancel(jobs[1].id)  # which ends without taking it
    taken = await board.claim_next("owner-2")
    assert taken is not None and taken[0].id == jobs[2].id


async def test_a_job_handed_a_slot_and_then_trashed_hands_it_on(board: JobBoard) -> None:
    await board.set_limit("payments", 1)
    jobs = await board.post_many("f", [{} for _ in range(3)], limit_key="payments")
    claimed = await board.claim_next("owner-1")
    assert claimed is not None
    assert await board.claim_next("owner-2") is None
    await board.consume(claimed[1])
    await board.trash(jobs[1].id, reason="not wanted")
    taken = await board.claim_next("owner-2")
    assert taken is not None and taken[0].id == jobs[2].id


async def test_an_expired_lease_found_by_a_claim_frees_its_slot_for_parked_jobs(
    board: JobBoard,
) -> None:
    await board.set_limit("payments", 1)
    first = await board.post("p1", "f", limit_key="payments")
    second = await board.post("p2", "f", limit_key="payments", priority=9)
    lapsing = await board.claim(first.id, "owner-1", lease=SHORT)
    assert await board.claim_next("owner-2") is None  # parks the second
    await anyio.sleep(SHORT + 0.1)
    taken = await board.claim_next("owner-2")
    assert taken is not None and taken[0].id == second.id  # by priority, not the expired one
    with pytest.raises(ClaimLost):
        await board.renew(lapsing)


async def test_a_lapsed_holder_parked_by_a_claim_renews_out_of_the_parked_set(
    board: JobBoard, sync_redis: redis.Redis, prefix: str
) -> None:
    await board.set_limit("payments", 1)
    first, second = await board.post_many("f", [{}, {}], limit_key="payments")
    lapsed = await board.claim(first.id, "owner-1", lease=SHORT)
    await anyio.sleep(SHORT + 0.1)
    taken = await board.claim(second.id, "owner-2")
    # The expired lease is promoted to ready, then parked: the key is full.
    assert await board.claim_next("owner-3") is None
    assert members(sync_redis, prefix + "parked:payments") == [first.id]
    await board.consume(taken)  # its slot goes to the parked first job
    renewed = await board.renew(lapsed)
    assert renewed.token == lapsed.token
    assert members(sync_redis, prefix + "parked:payments") == []
    assert members(sync_redis, prefix + "ready") == []
    assert await board.claim_next("owner-3") is None


async def test_a_removed_limit_gives_every_parked_job_back(
    board: JobBoard, sync_redis: redis.Redis, prefix: str
) -> None:
    await board.set_limit("paused", 0)
    jobs = await board.post_many("f", [{} for _ in range(1200)], limit_key="paused")
    assert await board.claim_next("owner-1") is None
    assert sync_redis.zcard(prefix + "parked:paused") == 1200
    await board.set_limit("paused", None)
    assert sync_redis.exists(prefix + "parked:paused") == 0
    assert members(sync_redis, prefix + "ready") == [job.id for job in jobs]


async def test_a_raised_limit_gives_back_as_many_parked_jobs_as_it_frees_and_says_so(
    board: JobBoard, sync_redis: redis.Redis, prefix: str
) -> None:
    await board.set_limit("payments", 0)
    jobs = await board.post_many("f", [{} for _ in range(5)], limit_key="payments")
    assert await board.claim_next("owner-1") is None
    marker = await board.post("marker", "f")
    async with contextlib.aclosing(board.stream()) as stream:
        iterator = aiter(stream)
        with anyio.fail_after(5):  # subscribed once it announced the marker
            assert (await anext(iterator)).job_id == marker.id
        await board.set_limit("payments", 2)
        with anyio.fail_after(5):
            note = await anext(iterator)
    assert note.kind is NotificationKind.SLOT_FREED and note.job_id == jobs[0].id
    assert members(sync_redis, prefix + "ready") == [jobs[0].id, jobs[1].id, marker.id]
    assert len(await board.claim_batch("owner-1", 10)) == 3


async def test_jobs_without_a_limit_key_leave_no_limit_state(
    board: JobBoard, sync_redis: redis.Redis, prefix: str
) -> None:
    await board.set_limit("payments", 1)
    await board.post_many("f", [{} for _ in range(3)])
    for job, claim in await board.claim_batch("owner-1", 3):
        assert job.limit_key is None
        await board.consume(claim)
    assert list(sync_redis.scan_iter(match=prefix + "holders:*")) == []
    assert list(sync_redis.scan_iter(match=prefix + "parked:*")) == []


async def test_a_limit_set_later_counts_the_claims_already_running(board: JobBoard) -> None:
    jobs = await board.post_many("f", [{} for _ in range(3)], limit_key="payments")
    await board.claim(jobs[0].id, "owner-1")
    await board.claim(jobs[1].id, "owner-1")
    await board.set_limit("payments", 2)
    assert [info.claimed for info in await board.limits()] == [2]
    assert await board.claim_next("owner-2") is None


async def test_limit_keys_are_in_the_namespaces_cluster_slot(
    board: JobBoard, sync_redis: redis.Redis, prefix: str
) -> None:
    await board.set_limit("a{b}c", 1)
    jobs = await board.post_many("f", [{}, {}], limit_key="a{b}c")
    await board.claim(jobs[0].id, "owner-1")
    assert await board.claim_next("owner-2") is None
    keys = set(sync_redis.scan_iter(match=prefix + "*"))
    assert {
        (prefix + name).encode() for name in ("limits", "holders:a{b}c", "parked:a{b}c")
    } <= keys
    assert {key_slot(key) for key in keys} == {key_slot(prefix.encode())}


# -- cancel -------------------------------------------------------------------------------------


async def test_a_cancel_reaches_the_owner_within_a_poll_free_push(
    space: RedisSpace, board: JobBoard
) -> None:
    job = await board.post("j", "f")
    await board.claim(job.id, "owner-1")
    marker = await board.post("marker", "f")
    async with (
        boards(space, 1) as (operator,),
        open_board(space.board_url("redis_limits"), poll_interval=60) as owner,
        contextlib.aclosing(owner.stream()) as stream,
    ):
        iterator = aiter(stream)
        with anyio.fail_after(5):
            assert (await anext(iterator)).job_id == marker.id
        started = anyio.current_time()
        await operator.cancel(job.id, reason="stop")
        with anyio.fail_after(5):
            note = await anext(iterator)
        # Pushed: no sweep (every 60 s here) was needed.
        assert note.kind is NotificationKind.CANCEL and note.job_id == job.id
        assert anyio.current_time() - started < 1


async def test_a_flagged_job_keeps_its_limit_slot_until_it_ends(board: JobBoard) -> None:
    await board.set_limit("payments", 1)
    first, second = await board.post_many("f", [{}, {}], limit_key="payments")
    claim = await board.claim(first.id, "owner-1")
    flagged = await board.cancel(first.id)
    assert flagged.cancel_requested
    assert await board.claim_next("owner-2") is None
    ended = await board.retry(claim, delay=0)
    assert ended.outcome is Outcome.CANCELLED and ended.state is JobState.COMPLETE
    taken = await board.claim_next("owner-2")
    assert taken is not None and taken[0].id == second.id


async def test_jobs_written_before_cancel_and_limits_existed_are_cancelled(
    board: JobBoard, sync_redis: redis.Redis, prefix: str
) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "owner-1")
    key = f"{prefix}job:{job.id}"
    assert sync_redis.hget(key, "limit_key") is None
    assert sync_redis.hget(key, "cancel_reason") is None
    flagged = await board.cancel(job.id, reason="old job")
    assert flagged.cancel_requested and flagged.limit_key is None
    assert (await board.renew(claim)).cancel_requested
