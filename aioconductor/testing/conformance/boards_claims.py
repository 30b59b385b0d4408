"""The board conformance suite: posting, reading and claiming jobs (``post``, ``get``,
``iterjobs``, ``claim``, ``claim_next``, ``claim_batch``, ``post_many``)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from aioconductor.boards import JobBoard
from aioconductor.errors import ConfigurationError
from aioconductor.errors import JobNotFound
from aioconductor.errors import PayloadError
from aioconductor.errors import UnclaimableJob
from aioconductor.models import Claim
from aioconductor.models import JobState
from aioconductor.models import NotificationKind
from aioconductor.testing.conformance._common import SHORT_LEASE
from aioconductor.testing.conformance._common import BoardOpener
from aioconductor.testing.conformance._common import collect
from aioconductor.testing.conformance._common import snapshot

# -- post, get, iterjobs ------------------------------------------------------------------------


async def test_post_get_round_trip(board: JobBoard) -> None:
    args: dict[str, Any] = {"name": "world", "n": 3, "nested": {"xs": [1, 2.5, None, True]}}
    posted = await board.post("say-hello", "hello", args, priority=2, max_attempts=5)
    assert isinstance(posted.id, str) and len(posted.id) == 36
    got = await board.get(posted.id)
    assert got == posted
    assert got.name == "say-hello" and got.flow == "hello" and got.args == args
    assert got.priority == 2 and got.max_attempts == 5 and got.attempts == 0
    assert got.state is JobState.UNCLAIMED and got.claim is None and got.outcome is None
    assert got.created_at <= time.time() + 1


async def test_args_are_stored_as_json(board: JobBoard) -> None:
    job = await board.post("j", "f", {"pair": (1, 2), "text": "naïve ✓ \x00"})
    assert (await board.get(job.id)).args == {"pair": [1, 2], "text": "naïve ✓ \x00"}


async def test_iterjobs_lists_priority_then_post_order(board: JobBoard) -> None:
    low = await board.post("low", "f", priority=0)
    high = await board.post("high", "f", priority=5)
    low2 = await board.post("low2", "f", priority=0)
    mid = await board.post("mid", "f", priority=1)
    assert [j.id for j in await snapshot(board)] == [high.id, mid.id, low.id, low2.id]
    assert low.seq < low2.seq


async def test_iterjobs_and_job_count_filter_by_state(board: JobBoard) -> None:
    first = await board.post("a", "f")
    await board.post("b", "f")
    await board.post("c", "f", delay=60)
    claim = await board.claim(first.id, "owner-1")
    await board.consume(claim)
    assert await board.job_count() == 3
    assert await board.job_count(state=JobState.UNCLAIMED) == 1
    assert await board.job_count(state=JobState.SCHEDULED) == 1
    assert await board.job_count(state=JobState.COMPLETE) == 1
    completes = [j async for j in board.iterjobs(state=JobState.COMPLETE)]
    assert [j.id for j in completes] == [first.id]


async def test_get_missing_job(board: JobBoard) -> None:
    with pytest.raises(JobNotFound):
        await board.get("00000000-0000-4000-8000-000000000000")


# -- claims ---------------------------------------------------------------------------------------


async def test_claim_sets_owner_token_attempts(board: JobBoard) -> None:
    job = await board.post("j", "f")
    assert await board.find_owner(job.id) is None
    claim = await board.claim(job.id, "owner-1", lease=10)
    assert claim.job_id == job.id and claim.owner == "owner-1" and claim.token >= 1
    assert claim.expires_at > time.time() + 5
    got = await board.get(job.id)
    assert got.state is JobState.CLAIMED and got.claim == claim and got.attempts == 1
    assert await board.find_owner(job.id) == "owner-1"


async def test_claim_missing_job(board: JobBoard) -> None:
    with pytest.raises(JobNotFound):
        await board.claim("00000000-0000-4000-8000-000000000000", "owner-1")


async def test_claim_held_job_is_refused(board: JobBoard) -> None:
    job = await board.post("j", "f")
    await board.claim(job.id, "owner-1")
    with pytest.raises(UnclaimableJob):
        await board.claim(job.id, "owner-2")
    assert await board.find_owner(job.id) == "owner-1"


async def test_hundred_concurrent_claims_have_one_winner(
    backend: BoardOpener, board: JobBoard
) -> None:
    job = await board.post("contested", "f")
    # Half the claimers share the fixture's board object, half use their own board objects
    # (separate connections, like separate processes).
    others = [backend.open(lease=5.0) for _ in range(4)]
    for other in others:
        await other.connect()
    boards = [board, *others]
    winners: list[Claim] = []
    losers = 0

    async def contend(i: int) -> None:
        nonlocal losers
        try:
            winners.append(await boards[i % len(boards)].claim(job.id, f"owner-{i}"))
        except UnclaimableJob:
            losers += 1

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(contend, i)
    assert len(winners) == 1 and losers == 99
    assert (await board.get(job.id)).attempts == 1
    assert await board.find_owner(job.id) == winners[0].owner


async def _claim_some(board: JobBoard, owner: str, verb: str) -> list[str]:
    """The ids of the jobs one ``claim_next`` or ``claim_batch`` call took."""
    if verb == "claim_next":
        claimed = await board.claim_next(owner)
        return [] if claimed is None else [claimed[0].id]
    return [job.id for job, _ in await board.claim_batch(owner, 7)]


@pytest.mark.parametrize("verb", ["claim_next", "claim_batch"])
async def test_racing_claimers_take_each_job_once(
    backend: BoardOpener, board: JobBoard, verb: str
) -> None:
    posted = {(await board.post(f"j{i}", "f")).id for i in range(50)}
    others = [backend.open(lease=5.0) for _ in range(3)]
    for other in others:
        await other.connect()
    taken: list[str] = []

    async def drain(b: JobBoard, owner: str) -> None:
        while ids := await _claim_some(b, owner, verb):
            taken.extend(ids)

    async with anyio.create_task_group() as tg:
        for i, b in enumerate([board, *others, board]):
            tg.start_soon(drain, b, f"owner-{i}")
    assert sorted(taken) == sorted(posted)
    assert await board.claim_next("late") is None


async def test_claim_next_follows_priority_then_post_order(board: JobBoard) -> None:
    a = await board.post("a", "f", priority=0)
    b = await board.post("b", "f", priority=9)
    c = await board.post("c", "f", priority=0)
    d = await board.post("d", "f", priority=-3)
    e = await board.post("e", "f", priority=9)
    order = []
    while (claimed := await board.claim_next("o")) is not None:
        job, claim = claimed
        assert job.claim == claim and job.state is JobState.CLAIMED and job.attempts == 1
        order.append(job.id)
    assert order == [b.id, e.id, a.id, c.id, d.id]


async def test_claim_next_on_empty_board(board: JobBoard) -> None:
    assert await board.claim_next("o") is None


async def test_claim_batch_takes_the_best_jobs_in_claim_order(board: JobBoard) -> None:
    posted = [await board.post(f"j{i}", "f", priority=i % 3) for i in range(7)]
    expected = sorted(posted, key=lambda job: (-job.priority, job.seq))
    first = await board.claim_batch("o", 4, lease=5.0)
    assert [job.id for job, _ in first] == [job.id for job in expected[:4]]
    for job, claim in first:
        assert job.claim == claim and claim.owner == "o" and claim.job_id == job.id
        assert job.state is JobState.CLAIMED and job.attempts == 1
        assert (await board.get(job.id)).claim == claim
    rest = await board.claim_batch("o", 10)
    assert [job.id for job, _ in rest] == [job.id for job in expected[4:]]
    assert await board.claim_batch("o", 10) == []
    # Each claim is a claim like any other: consumed one by one.
    for _, claim in first + rest:
        await board.consume(claim)
    assert await board.job_count(state=JobState.COMPLETE) == 7


async def test_claim_batch_takes_expired_and_skips_held_and_scheduled(board: JobBoard) -> None:
    held = await board.post("held", "f")
    await board.claim(held.id, "other", lease=30.0)
    lapsed = await board.post("lapsed", "f")
    old = await board.claim(lapsed.id, "other", lease=SHORT_LEASE)
    later = await board.post("later", "f", delay=30.0)
    await anyio.sleep(SHORT_LEASE + 0.2)
    batch = await board.claim_batch("o", 10)
    assert [job.id for job, _ in batch] == [lapsed.id]
    assert batch[0][1].token > old.token and batch[0][0].attempts == 2
    assert (await board.get(held.id)).owner == "other"
    assert (await board.get(later.id)).state is JobState.SCHEDULED


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "3"])
async def test_claim_batch_refuses_a_bad_limit(board: JobBoard, limit: Any) -> None:
    await board.post("j", "f")
    with pytest.raises(ConfigurationError):
        await board.claim_batch("o", limit)
    assert await board.job_count(state=JobState.UNCLAIMED) == 1


async def test_post_many_posts_in_order_in_one_call(board: JobBoard) -> None:
    args = [{"n": i, "text": "x" * i} for i in range(25)]
    jobs = await board.post_many("f", args, priority=3, max_attempts=4)
    assert [job.args for job in jobs] == args
    assert [job.seq for job in jobs] == sorted(job.seq for job in jobs)
    assert len({job.id for job in jobs}) == 25
    for job in jobs:
        assert job.name == "f" and job.flow == "f" and job.priority == 3
        assert job.max_attempts == 4 and job.state is JobState.UNCLAIMED
        assert await board.get(job.id) == job
    claimed = await board.claim_batch("o", 100)
    assert [job.id for job, _ in claimed] == [job.id for job in jobs]  # post order
    assert await board.post_many("f", []) == []


async def test_post_many_with_a_delay_and_a_name(board: JobBoard) -> None:
    jobs = await board.post_many("f", [{"a": 1}, None], name="later", delay=30.0)
    assert [job.state for job in jobs] == [JobState.SCHEDULED] * 2
    assert [job.args for job in jobs] == [{"a": 1}, {}]
    assert all(job.name == "later" for job in jobs)
    assert await board.claim_batch("o", 10) == []


@pytest.mark.parametrize(
    "bad", [{"x": float("nan")}, ["not", "an", "object"], {"x": object()}, "text"]
)
async def test_post_many_with_one_bad_item_posts_nothing(board: JobBoard, bad: Any) -> None:
    with pytest.raises(PayloadError):
        await board.post_many("f", [{"ok": 1}, bad, {"ok": 2}])
    with pytest.raises(PayloadError):
        await board.post_many("", [{"ok": 1}])
    assert await board.job_count() == 0


async def test_post_many_announces_every_job(board: JobBoard) -> None:
    async def post_later() -> None:
        await anyio.sleep(0.1)
        await board.post_many("f", [{"i": i} for i in range(5)])

    async with anyio.create_task_group() as tg:
        tg.start_soon(post_later)
        notes = await collect(board, 5)
    assert all(note.kind is NotificationKind.POSTED for note in notes)
    assert len({note.job_id for note in notes}) == 5
