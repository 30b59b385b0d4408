"""The board conformance suite: every backend keeps these semantics, unchanged.

A backend joins by adding one entry to ``BACKENDS`` in ``tests/backends.py``.
"""

from __future__ import annotations

import contextlib
import re
import time
from typing import Any

import anyio
import pytest

from aioconductor.boards import JobBoard
from aioconductor.errors import (
    BoardClosed,
    ClaimLost,
    ConfigurationError,
    JobNotFound,
    PayloadError,
    UnclaimableJob,
)
from aioconductor.models import Claim, Job, JobNotification, JobState, NotificationKind, Outcome

from .conftest import BoardBackend

SHORT_LEASE = 0.3


async def snapshot(board: JobBoard) -> list[Job]:
    return [job async for job in board.iterjobs()]


async def collect(board: JobBoard, count: int, within: float = 5.0) -> list[JobNotification]:
    """The first ``count`` notifications of a fresh stream."""
    notes: list[JobNotification] = []
    with anyio.fail_after(within):
        async with contextlib.aclosing(board.stream()) as stream:
            async for note in stream:
                notes.append(note)
                if len(notes) == count:
                    break
    return notes


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
    backend: BoardBackend, board: JobBoard
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


async def test_claim_next_takes_each_job_once(backend: BoardBackend, board: JobBoard) -> None:
    posted = {(await board.post(f"j{i}", "f")).id for i in range(40)}
    others = [backend.open(lease=5.0) for _ in range(3)]
    for other in others:
        await other.connect()
    taken: list[str] = []

    async def drain(b: JobBoard, owner: str) -> None:
        while (claimed := await b.claim_next(owner)) is not None:
            taken.append(claimed[0].id)

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


async def test_claim_batch_races_take_each_job_once(backend: BoardBackend, board: JobBoard) -> None:
    posted = {(await board.post(f"j{i}", "f")).id for i in range(60)}
    others = [backend.open(lease=5.0) for _ in range(3)]
    for other in others:
        await other.connect()
    taken: list[str] = []

    async def drain(b: JobBoard, owner: str) -> None:
        while batch := await b.claim_batch(owner, 7):
            taken.extend(job.id for job, _ in batch)

    async with anyio.create_task_group() as tg:
        for i, b in enumerate([board, *others, board]):
            tg.start_soon(drain, b, f"owner-{i}")
    assert sorted(taken) == sorted(posted)


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


# -- stale claims change nothing ----------------------------------------------------------------


async def _stale_variants(board: JobBoard) -> tuple[Job, Claim, list[Claim]]:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "owner-1")
    stale = [
        claim.model_copy(update={"owner": "intruder"}),
        claim.model_copy(update={"token": claim.token - 1}),
        claim.model_copy(update={"token": claim.token + 1}),
    ]
    return job, claim, stale


@pytest.mark.parametrize("verb", ["consume", "abandon", "trash", "renew"])
async def test_stale_claim_is_refused_and_changes_nothing(board: JobBoard, verb: str) -> None:
    job, claim, stale = await _stale_variants(board)
    before = await board.get(job.id)
    for bad in stale:
        with pytest.raises(ClaimLost):
            if verb == "consume":
                await board.consume(bad, result={"x": 1})
            elif verb == "abandon":
                await board.abandon(bad)
            elif verb == "trash":
                await board.trash(bad, reason="nope")
            else:
                await board.renew(bad)
    assert await board.get(job.id) == before
    # The rightful owner is unaffected.
    done = await board.consume(claim)
    assert done.state is JobState.COMPLETE


async def test_verbs_on_finished_job_raise_claim_lost(board: JobBoard) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "owner-1")
    await board.consume(claim)
    for verb in (board.consume, board.abandon, board.renew):
        with pytest.raises(ClaimLost):
            await verb(claim)
    with pytest.raises(ClaimLost):
        await board.trash(claim, reason="late")
    assert (await board.get(job.id)).state is JobState.COMPLETE


async def test_claim_of_missing_job_in_verbs(board: JobBoard) -> None:
    ghost = Claim(job_id="00000000-0000-4000-8000-000000000000", owner="o", token=1, expires_at=0)
    with pytest.raises(JobNotFound):
        await board.consume(ghost)


# -- leases -------------------------------------------------------------------------------------


async def test_lease_expiry_makes_job_claimable_with_higher_token(board: JobBoard) -> None:
    job = await board.post("j", "f")
    first = await board.claim(job.id, "owner-1", lease=SHORT_LEASE)
    with pytest.raises(UnclaimableJob):
        await board.claim(job.id, "owner-2")
    await anyio.sleep(SHORT_LEASE + 0.1)
    assert await board.find_owner(job.id) is None
    second = await board.claim(job.id, "owner-2")
    assert second.token > first.token
    got = await board.get(job.id)
    assert got.attempts == 2 and got.claim == second
    # The first owner can do nothing with its old claim any more.
    for verb in (board.consume, board.abandon, board.renew):
        with pytest.raises(ClaimLost):
            await verb(first)
    assert (await board.get(job.id)).claim == second


async def test_expired_claim_is_taken_by_claim_next(board: JobBoard) -> None:
    job = await board.post("j", "f")
    await board.claim(job.id, "owner-1", lease=SHORT_LEASE)
    assert await board.claim_next("owner-2") is None
    await anyio.sleep(SHORT_LEASE + 0.1)
    claimed = await board.claim_next("owner-2")
    assert claimed is not None and claimed[0].id == job.id and claimed[1].owner == "owner-2"


async def test_expired_claim_stays_valid_until_someone_else_claims(board: JobBoard) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "owner-1", lease=SHORT_LEASE)
    await anyio.sleep(SHORT_LEASE + 0.1)
    done = await board.consume(claim, result={"late": True})
    assert done.state is JobState.COMPLETE and done.result == {"late": True}


async def test_renew_extends_the_lease(board: JobBoard) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "owner-1", lease=SHORT_LEASE)
    for _ in range(3):
        await anyio.sleep(SHORT_LEASE / 2)
        renewed = await board.renew(claim, lease=SHORT_LEASE)
        assert renewed.token == claim.token and renewed.expires_at > claim.expires_at
        claim = renewed
    with pytest.raises(UnclaimableJob):
        await board.claim(job.id, "owner-2")
    assert (await board.get(job.id)).attempts == 1


# -- consume, abandon, trash --------------------------------------------------------------------


async def test_consume_records_outcome_and_result(board: JobBoard) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "owner-1")
    done = await board.consume(claim, outcome=Outcome.REVERTED, result={"greeting": "hi"})
    assert done.state is JobState.COMPLETE and done.outcome is Outcome.REVERTED
    got = await board.get(job.id)
    assert got.outcome == "REVERTED" and got.result == {"greeting": "hi"}
    with pytest.raises(UnclaimableJob):
        await board.claim(job.id, "owner-2")
    assert await board.claim_next("owner-2") is None


async def test_consume_refuses_a_result_that_is_not_json(board: JobBoard) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "owner-1")
    with pytest.raises(PayloadError):
        await board.consume(claim, result={"x": object()})
    assert (await board.get(job.id)).state is JobState.CLAIMED
    await board.consume(claim, result={"x": 1})


async def test_abandon_returns_job_and_notifies(board: JobBoard) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "owner-1")
    async with contextlib.aclosing(board.stream()) as stream:
        iterator = aiter(stream)
        abandoned = await board.abandon(claim)
        assert abandoned.state is JobState.UNCLAIMED and abandoned.claim is None
        with anyio.fail_after(5):
            note = await anext(iterator)
        assert note.job_id == job.id
    got = await board.get(job.id)
    assert got.state is JobState.UNCLAIMED and got.attempts == 1
    assert await board.find_owner(job.id) is None
    again = await board.claim(job.id, "owner-2")
    assert again.token > claim.token and (await board.get(job.id)).attempts == 2


async def test_trash_keeps_the_job_and_never_offers_it_again(board: JobBoard) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "owner-1")
    trashed = await board.trash(claim, reason="poison: ran 3 times")
    assert trashed.state is JobState.TRASHED and trashed.trash_reason == "poison: ran 3 times"
    got = await board.get(job.id)
    assert got.state is JobState.TRASHED and got.trash_reason == "poison: ran 3 times"
    assert await board.claim_next("owner-2") is None
    with pytest.raises(UnclaimableJob):
        await board.claim(job.id, "owner-2")


async def test_a_trash_reason_is_kept_safely_whatever_it_quotes(board: JobBoard) -> None:
    job = await board.post("j", "f")
    trashed = await board.trash(job.id, reason="bad byte \x00 and \ud800 in an error")
    assert trashed.trash_reason == "bad byte \\x00 and \\ud800 in an error"
    assert (await board.get(job.id)).trash_reason == trashed.trash_reason


async def test_user_data_is_data_not_code(board: JobBoard) -> None:
    # Quotes, comments, placeholders and brackets of every backend's languages: SQL, Lua,
    # Redis hash tags, format strings.
    sneaky = "x'); DROP TABLE jobs; redis.call('FLUSHDB') --{ns} -- $1 {s} %s \" \\ \n ]]"
    job = await board.post(sneaky, sneaky, {sneaky: sneaky})
    claim = await board.claim(job.id, sneaky)
    got = await board.get(job.id)
    assert got.name == sneaky and got.flow == sneaky and got.args == {sneaky: sneaky}
    assert got.claim == claim and claim.owner == sneaky
    await board.trash(claim, reason=sneaky)
    assert (await board.get(job.id)).trash_reason == sneaky


async def test_trash_by_id_by_an_operator(board: JobBoard) -> None:
    waiting = await board.post("waiting", "f")
    held = await board.post("held", "f")
    claim = await board.claim(held.id, "owner-1")
    assert (await board.trash(waiting.id, reason="operator")).state is JobState.TRASHED
    assert (await board.trash(held.id, reason="operator")).state is JobState.TRASHED
    # The owner that held it can no longer complete it.
    with pytest.raises(ClaimLost):
        await board.consume(claim)
    with pytest.raises(UnclaimableJob):
        await board.trash(held.id, reason="twice")
    with pytest.raises(JobNotFound):
        await board.trash("00000000-0000-4000-8000-000000000000", reason="ghost")


# -- delays -------------------------------------------------------------------------------------


async def test_delayed_job_is_not_claimable_before_its_time(board: JobBoard) -> None:
    now_job = await board.post("now", "f")
    later = await board.post("later", "f", delay=0.4, priority=10)
    assert later.state is JobState.SCHEDULED and later.not_before is not None
    with pytest.raises(UnclaimableJob):
        await board.claim(later.id, "owner-1")
    first = await board.claim_next("owner-1")
    assert first is not None and first[0].id == now_job.id
    assert await board.claim_next("owner-1") is None
    await anyio.sleep(0.5)
    assert (await board.get(later.id)).state is JobState.UNCLAIMED
    second = await board.claim_next("owner-1")
    assert second is not None and second[0].id == later.id


async def test_not_before_in_the_past_is_claimable_now(board: JobBoard) -> None:
    job = await board.post("j", "f", not_before=time.time() - 10)
    assert job.state is JobState.UNCLAIMED
    assert (await board.claim_next("o")) is not None


async def test_stream_announces_a_delayed_job_when_due(board: JobBoard) -> None:
    job = await board.post("later", "f", delay=0.3)
    started = time.monotonic()
    notes = await collect(board, 1)
    assert notes[0].job_id == job.id
    assert time.monotonic() - started >= 0.25


# -- notifications ------------------------------------------------------------------------------


async def test_stream_sees_posts_made_before_and_after_it_started(board: JobBoard) -> None:
    before = await board.post("before", "f")
    received: list[JobNotification] = []
    async with contextlib.aclosing(board.stream()) as stream:
        iterator = aiter(stream)
        with anyio.fail_after(5):
            received.append(await anext(iterator))
            after = await board.post("after", "f")
            received.append(await anext(iterator))
    assert [n.job_id for n in received] == [before.id, after.id]
    assert received[1].kind is NotificationKind.POSTED


async def test_stream_announces_an_expired_lease(board: JobBoard) -> None:
    job = await board.post("j", "f")
    await board.claim(job.id, "owner-1", lease=SHORT_LEASE)
    notes = await collect(board, 1)
    assert notes[0].job_id == job.id
    assert await board.claim_next("owner-2") is not None


async def test_each_stream_is_an_independent_subscription(board: JobBoard) -> None:
    async def first_note(into: list[str]) -> None:
        into.extend(n.job_id for n in await collect(board, 1))

    a: list[str] = []
    b: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(first_note, a)
        tg.start_soon(first_note, b)
        await anyio.sleep(0.05)
        job = await board.post("j", "f")
    assert a == [job.id] and b == [job.id]


async def test_stream_from_another_board_object_sees_posts(backend: BoardBackend) -> None:
    async with (
        backend.open(poll_interval=0.05) as producer,
        backend.open(poll_interval=0.05) as consumer,
    ):
        async with contextlib.aclosing(consumer.stream()) as stream:
            iterator = aiter(stream)
            job = await producer.post("j", "f")
            with anyio.fail_after(5):
                note = await anext(iterator)
        assert note.job_id == job.id


async def test_wait_returns_once_a_job_is_claimable(board: JobBoard) -> None:
    with pytest.raises(TimeoutError):
        await board.wait(timeout=0.1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(board.wait)
        await anyio.sleep(0.05)
        await board.post("j", "f")
    await board.wait(timeout=1)


async def test_wait_for_returns_the_final_job(board: JobBoard) -> None:
    job = await board.post("j", "f")
    with pytest.raises(TimeoutError):
        await board.wait_for(job.id, timeout=0.1)

    async def finish() -> None:
        await anyio.sleep(0.05)
        claim = await board.claim(job.id, "owner-1")
        await board.consume(claim, result={"ok": True})

    async with anyio.create_task_group() as tg:
        tg.start_soon(finish)
        done = await board.wait_for(job.id, timeout=5)
    assert done.state is JobState.COMPLETE and done.result == {"ok": True}
    trashed = await board.post("t", "f")
    await board.trash(trashed.id, reason="r")
    assert (await board.wait_for(trashed.id, timeout=1)).state is JobState.TRASHED


# -- isolation, lifecycle, bad input -----------------------------------------------------------


async def test_namespaces_isolate_boards_on_one_backend(backend: BoardBackend) -> None:
    async with backend.open("tenant_a") as a, backend.open("tenant_b") as b:
        job = await a.post("j", "f")
        assert await b.job_count() == 0
        assert [j async for j in b.iterjobs()] == []
        assert await b.claim_next("o") is None
        with pytest.raises(JobNotFound):
            await b.get(job.id)
        with pytest.raises(JobNotFound):
            await b.claim(job.id, "o")
        claim = await a.claim(job.id, "o")
        with pytest.raises((JobNotFound, ClaimLost)):
            await b.consume(claim)
        assert (await a.get(job.id)).state is JobState.CLAIMED


async def test_a_closed_board_refuses_every_call(backend: BoardBackend) -> None:
    board = backend.open()
    with pytest.raises(BoardClosed):
        await board.post("j", "f")
    await board.connect()
    job = await board.post("j", "f")
    await board.aclose()
    await board.aclose()
    with pytest.raises(BoardClosed):
        await board.post("j", "f")
    with pytest.raises(BoardClosed):
        await board.get(job.id)
    with pytest.raises(BoardClosed):
        await board.claim_next("o")
    with pytest.raises(BoardClosed):
        await board.connect()


async def test_closing_a_board_ends_its_streams(backend: BoardBackend) -> None:
    board = backend.open(poll_interval=0.05)
    await board.connect()
    ended = anyio.Event()

    async def read() -> None:
        async with contextlib.aclosing(board.stream()) as stream:
            async for _ in stream:
                pass
        ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        await anyio.sleep(0.05)
        await board.aclose()
        with anyio.fail_after(2):
            await ended.wait()


BAD_POSTS: list[tuple[str, dict[str, Any]]] = [
    ("empty name", {"name": "", "flow": "f"}),
    ("blank name", {"name": "   ", "flow": "f"}),
    ("long name", {"name": "x" * 256, "flow": "f"}),
    ("empty flow", {"name": "j", "flow": ""}),
    ("not json", {"name": "j", "flow": "f", "args": {"x": {1, 2}}}),
    ("bytes", {"name": "j", "flow": "f", "args": {"x": b"raw"}}),
    ("nan", {"name": "j", "flow": "f", "args": {"x": float("nan")}}),
    ("lone surrogate", {"name": "j", "flow": "f", "args": {"x": "\ud800"}}),
    ("not a dict", {"name": "j", "flow": "f", "args": [1, 2]}),
    ("too large", {"name": "j", "flow": "f", "args": {"x": "y" * (1 << 20)}}),
    ("bad attempts", {"name": "j", "flow": "f", "max_attempts": 0}),
    ("bad priority", {"name": "j", "flow": "f", "priority": "high"}),
    ("negative delay", {"name": "j", "flow": "f", "delay": -1}),
    ("delay past a century", {"name": "j", "flow": "f", "delay": 1e300}),
    ("nul in name", {"name": "a\x00b", "flow": "f"}),
    ("nul in flow", {"name": "j", "flow": "f\x00"}),
    ("both delays", {"name": "j", "flow": "f", "delay": 1, "not_before": time.time()}),
]


@pytest.mark.parametrize(("why", "post"), BAD_POSTS, ids=[why for why, _ in BAD_POSTS])
async def test_bad_posts_are_refused_and_change_nothing(
    board: JobBoard, why: str, post: dict[str, Any]
) -> None:
    existing = await board.post("existing", "f")
    before = await snapshot(board)
    post = dict(post)
    name, flow = post.pop("name"), post.pop("flow")
    with pytest.raises(PayloadError):
        await board.post(name, flow, **post)
    assert await snapshot(board) == before
    assert [n.job_id for n in await collect(board, 1)] == [existing.id]


#: Payloads holding a dict key that is not a str (JSON would turn 1 into "1", and lose "a" in
#: the first), and what the refusal names: the key and the path to the dict holding it.
NON_STR_KEYS: list[tuple[dict[Any, Any], str]] = [
    ({1: "a", "1": "b"}, "key 1 (int) is not a string"),
    ({"a": {1: "x"}}, "key 1 (int) in ['a'] is not a string"),
    ({"rows": [{"ok": 1}, {"ok": 2, 3: "x"}]}, "key 3 (int) in ['rows'][1] is not a string"),
    ({"t": {(1, 2): "x"}}, "key (1, 2) (tuple) in ['t'] is not a string"),
    ({"deep": [({"b": {None: 0}},)]}, "key None (NoneType) in ['deep'][0][0]['b'] is not"),
    ({"f": {2.5: 1, True: 2}}, "key 2.5 (float) in ['f'] is not a string"),
]


async def test_keys_that_are_not_strings_are_refused_at_any_depth(board: JobBoard) -> None:
    existing = await board.post("existing", "f", {"ok": {"nested": [{"k": 1}]}})
    claim = await board.claim(existing.id, "owner-1")
    before, count = await snapshot(board), await board.job_count()
    for payload, refusal in NON_STR_KEYS:
        where = re.escape(refusal)
        with pytest.raises(PayloadError, match=f"the job's args.*{where}"):
            await board.post("j", "f", payload)
        with pytest.raises(PayloadError, match=where):
            await board.post_many("f", [{"fine": 1}, payload])
        with pytest.raises(PayloadError, match=f"the job's result.*{where}"):
            await board.consume(claim, result=payload)
        with pytest.raises(PayloadError, match=where):
            await board.register_conductor("owner-2", "worker-2", ttl=30, meta=payload)
    # Nothing was written: no job posted, the claimed job not consumed, no conductor.
    assert await board.job_count() == count
    assert await snapshot(board) == before
    assert await board.conductors() == []
    done = await board.consume(claim, result={"ok": {"1": "a", "2": [{"3": None}]}})
    assert (await board.get(done.id)).result == {"ok": {"1": "a", "2": [{"3": None}]}}


async def test_max_payload_bytes_is_a_board_setting(backend: BoardBackend) -> None:
    async with backend.open(max_payload_bytes=100) as small:
        await small.post("j", "f", {"x": "y" * 50})
        with pytest.raises(PayloadError, match="at most 100"):
            await small.post("j", "f", {"x": "y" * 100})
        assert await small.job_count() == 1


# -- conductors ---------------------------------------------------------------------------------


async def test_conductors_register_heartbeat_and_expire(board: JobBoard) -> None:
    await board.register_conductor("owner-a", "worker-a", ttl=0.3, meta={"running": 2})
    await board.register_conductor("owner-b", "worker-b", ttl=30)
    alive = await board.conductors()
    assert [(c.owner, c.name) for c in alive] == [("owner-a", "worker-a"), ("owner-b", "worker-b")]
    assert alive[0].meta == {"running": 2}
    await anyio.sleep(0.4)
    assert [c.owner for c in await board.conductors()] == ["owner-b"]
    await board.register_conductor("owner-b", "worker-b", ttl=30, meta={"running": 1})
    again = (await board.conductors())[0]
    assert again.started_at == alive[1].started_at and again.heartbeat_at >= alive[1].heartbeat_at
    await board.unregister_conductor("owner-b")
    assert await board.conductors() == []


# -- headers ---------------------------------------------------------------------------------------


async def test_headers_travel_with_the_job_and_not_into_its_args(board: JobBoard) -> None:
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "é": "ü"}
    job = await board.post("j", "f", {"a": 1}, headers=headers)
    assert job.headers == headers and job.args == {"a": 1}
    assert (await board.get(job.id)).headers == headers
    (claimed, claim), *_ = await board.claim_batch("o", 1)
    assert claimed.headers == headers
    assert (await board.consume(claim)).headers == headers
    plain = await board.post("k", "f")
    assert plain.headers == {} and (await board.get(plain.id)).headers == {}
    many = await board.post_many("f", [{}, {}], headers={"tenant": "t1"})
    assert [(await board.get(j.id)).headers for j in many] == [{"tenant": "t1"}] * 2


@pytest.mark.parametrize(
    "headers",
    [{"k": 1}, {1: "v"}, {"": "v"}, {"k": "a\x00b"}, {"k": "x" * 9000}, ["k"], {"k": "\ud800"}],
)
async def test_bad_headers_are_refused_and_nothing_is_posted(board: JobBoard, headers: Any) -> None:
    with pytest.raises(PayloadError):
        await board.post("j", "f", headers=headers)
    with pytest.raises(PayloadError):
        await board.post_many("f", [{}], headers=headers)
    assert await board.job_count() == 0
