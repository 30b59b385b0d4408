"""The board conformance suite: cancel. A job nobody runs ends ``CANCELLED`` at once; a
claimed one is flagged and its owner told (a ``CANCEL`` notification, and the flag on every
claim the board hands out for it); a flagged job is never retried; a final job is left as it
is."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aioconductor.boards import JobBoard
from aioconductor.errors import ClaimLost
from aioconductor.errors import JobNotFound
from aioconductor.errors import PayloadError
from aioconductor.models import Job
from aioconductor.models import JobState
from aioconductor.models import NotificationKind
from aioconductor.models import Outcome
from aioconductor.testing.conformance._common import SHORT_LEASE
from aioconductor.testing.conformance._common import BoardOpener
from aioconductor.testing.conformance._common import subscribed
from aioconductor.testing.conformance._common import two_boards


def _ended_cancelled(job: Job, reason: str) -> None:
    assert job.state is JobState.COMPLETE
    assert job.outcome is Outcome.CANCELLED
    assert job.cancel_reason == reason
    assert not job.cancel_requested


@pytest.mark.parametrize("state", ["unclaimed", "scheduled"])
async def test_a_job_nobody_runs_ends_cancelled_at_once(board: JobBoard, state: str) -> None:
    job = await board.post("j", "f", {"n": 1}, delay=3600 if state == "scheduled" else None)
    other = await board.post("k", "f")
    cancelled = await board.cancel(job.id, reason="the order was withdrawn")
    _ended_cancelled(cancelled, "the order was withdrawn")
    assert cancelled.result == {}
    assert await board.get(job.id) == cancelled
    assert (await board.wait_for(job.id, timeout=5)).outcome is Outcome.CANCELLED
    claimed = await board.claim_next("owner-1")
    assert claimed is not None and claimed[0].id == other.id
    assert await board.claim_next("owner-1") is None


async def test_cancel_has_a_default_reason(board: JobBoard) -> None:
    job = await board.post("j", "f")
    cancelled = await board.cancel(job.id)
    assert cancelled.outcome is Outcome.CANCELLED and cancelled.cancel_reason


async def test_a_claimed_job_is_flagged_and_its_owner_told_on_renew(board: JobBoard) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "owner-1")
    assert not claim.cancel_requested
    flagged = await board.cancel(job.id, reason="stop it")
    assert flagged.state is JobState.CLAIMED
    assert flagged.cancel_reason == "stop it" and flagged.cancel_requested
    assert flagged.claim is not None and flagged.claim.cancel_requested
    assert flagged.claim.token == claim.token and flagged.claim.owner == "owner-1"
    assert flagged.attempts == 1
    renewed = await board.renew(claim)
    assert renewed.cancel_requested and renewed.token == claim.token
    ended = await board.consume(renewed, outcome=Outcome.CANCELLED)
    _ended_cancelled(ended, "stop it")
    assert await board.claim_next("owner-2") is None


async def test_a_second_cancel_changes_nothing(board: JobBoard) -> None:
    job = await board.post("j", "f")
    await board.claim(job.id, "owner-1")
    first = await board.cancel(job.id, reason="first")
    second = await board.cancel(job.id, reason="second")
    assert second == first == await board.get(job.id)
    assert second.cancel_reason == "first"


@pytest.mark.parametrize("ending", ["consume", "trash", "cancel"])
async def test_cancelling_a_final_job_changes_nothing(board: JobBoard, ending: str) -> None:
    job = await board.post("j", "f")
    if ending == "cancel":
        await board.cancel(job.id, reason="once")
    else:
        claim = await board.claim(job.id, "owner-1")
        if ending == "consume":
            await board.consume(claim, result={"x": 1})
        else:
            await board.trash(claim, reason="bad")
    before = await board.get(job.id)
    assert await board.cancel(job.id, reason="again") == before
    assert await board.get(job.id) == before


async def test_a_consume_before_the_owner_saw_the_flag_stands(board: JobBoard) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "owner-1")
    await board.cancel(job.id, reason="too late")
    done = await board.consume(claim, outcome=Outcome.SUCCESS, result={"x": 1})
    assert done.state is JobState.COMPLETE and done.outcome is Outcome.SUCCESS
    assert done.result == {"x": 1} and done.cancel_reason == "too late"
    assert not done.cancel_requested


async def test_a_flagged_job_is_never_retried(board: JobBoard) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "owner-1")
    await board.cancel(job.id, reason="no more")
    ended = await board.retry(claim, delay=0, failure={"message": "boom"})
    _ended_cancelled(ended, "no more")
    assert ended.retries == 0
    assert ended.failures == [{"message": "boom"}]
    assert await board.claim_next("owner-2") is None
    assert await board.get(job.id) == ended


@pytest.mark.parametrize("give_back", ["release", "abandon"])
async def test_a_flagged_job_given_back_is_claimed_flagged(board: JobBoard, give_back: str) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "owner-1")
    await board.cancel(job.id, reason="revert it")
    back = await getattr(board, give_back)(claim)
    assert back.state is JobState.UNCLAIMED
    assert back.cancel_requested and back.cancel_reason == "revert it"
    assert await board.cancel(job.id, reason="again") == await board.get(job.id)
    claimed = await board.claim_next("owner-2")
    assert claimed is not None
    again, new_claim = claimed
    assert again.id == job.id and again.cancel_requested
    assert new_claim.cancel_requested and new_claim.token == claim.token + 1
    _ended_cancelled(await board.consume(new_claim, outcome=Outcome.CANCELLED), "revert it")


async def test_a_flagged_job_past_its_lease_goes_to_a_new_owner_flagged(board: JobBoard) -> None:
    job = await board.post("j", "f")
    old = await board.claim(job.id, "owner-1", lease=SHORT_LEASE)
    await board.cancel(job.id, reason="owner died")
    await anyio.sleep(SHORT_LEASE + 0.2)
    new = await board.claim(job.id, "owner-2")
    assert new.cancel_requested and new.token == old.token + 1
    with pytest.raises(ClaimLost):
        await board.consume(old, outcome=Outcome.CANCELLED)
    _ended_cancelled(await board.consume(new, outcome=Outcome.CANCELLED), "owner died")


async def test_the_owner_is_told_by_a_cancel_notification(backend: BoardOpener) -> None:
    async with two_boards(backend, poll_interval=0.05) as (owner_board, operator):
        job = await owner_board.post("j", "f")
        await owner_board.claim(job.id, "owner-1")
        marker = await owner_board.post("marker", "f")
        async with subscribed(owner_board, marker) as iterator:
            await operator.cancel(job.id, reason="by the operator")
            with anyio.fail_after(5):
                while (note := await anext(iterator)).kind is not NotificationKind.CANCEL:
                    pass
        assert note.job_id == job.id


async def test_a_cancel_notification_does_not_end_wait(board: JobBoard) -> None:
    job = await board.post("j", "f")
    await board.claim(job.id, "owner-1")
    async with anyio.create_task_group() as tg:
        tg.start_soon(board.cancel, job.id)
        with pytest.raises(TimeoutError):
            await board.wait(timeout=0.5)


async def test_cancelled_jobs_are_listed_and_purged_like_other_finished_jobs(
    board: JobBoard,
) -> None:
    job = await board.post("j", "f", key="order-7")
    cancelled = await board.cancel(job.id, reason="gone")
    assert [j async for j in board.iterjobs(state=JobState.COMPLETE)] == [cancelled]
    assert await board.get_by_key("order-7") == cancelled
    assert await board.purge(older_than=0) == 1
    with pytest.raises(JobNotFound):
        await board.get(job.id)


async def test_cancel_of_an_unknown_job_is_refused(board: JobBoard) -> None:
    with pytest.raises(JobNotFound):
        await board.cancel("00000000-0000-4000-8000-000000000000")


BAD_REASONS: list[Any] = [None, 5, b"bytes"]


@pytest.mark.parametrize("reason", BAD_REASONS, ids=repr)
async def test_a_bad_reason_is_refused_and_nothing_changes(board: JobBoard, reason: Any) -> None:
    job = await board.post("j", "f")
    with pytest.raises(PayloadError):
        await board.cancel(job.id, reason=reason)
    assert await board.get(job.id) == job


async def test_a_long_or_odd_reason_is_kept_safely(board: JobBoard) -> None:
    job = await board.post("j", "f")
    cancelled = await board.cancel(job.id, reason="nul\x00 " + "x" * 5000)
    assert cancelled.cancel_reason is not None
    assert "\x00" not in cancelled.cancel_reason and len(cancelled.cancel_reason) <= 4000
    assert (await board.get(job.id)).cancel_reason == cancelled.cancel_reason
