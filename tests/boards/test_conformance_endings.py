"""The board conformance suite, continued: how the end of a run comes back to the board.

``release`` (the owner let go on purpose: the attempt is given back, capped), ``abandon`` (a
storage or internal failure: the attempt is spent) and ``retry`` (the flow failed and its retry
policy has retries left: scheduled again, the attempt given back). Every backend keeps these.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import anyio
import pytest

from aioconductor.boards import JobBoard
from aioconductor.errors import ClaimLost, PayloadError, UnclaimableJob
from aioconductor.models import MAX_KEPT_FAILURES, JobState, RetryPolicy

from .test_conformance import SHORT_LEASE

POLICY = RetryPolicy(retries=3, base=0.5, factor=3.0, max_delay=60.0, jitter=0.2)


async def test_the_first_claim_has_token_one_and_every_later_claim_a_larger_one(
    board: JobBoard,
) -> None:
    # The conductor tells a job's first run from its token: no earlier run can have saved
    # progress under a smaller one.
    job = await board.post("j", "f")
    tokens = []
    for _ in range(3):
        claim = await board.claim(job.id, "o")
        tokens.append(claim.token)
        await board.release(claim)
    assert tokens[0] == 1 and tokens == sorted(set(tokens))


async def test_a_release_gives_the_attempt_back_and_the_job_is_claimable_at_once(
    board: JobBoard,
) -> None:
    job = await board.post("j", "f", max_attempts=2)
    claim = await board.claim(job.id, "o")
    released = await board.release(claim)
    assert released.state is JobState.UNCLAIMED and released.claim is None
    assert (released.attempts, released.releases, released.abandons) == (0, 1, 0)
    assert await board.get(job.id) == released
    again = await board.claim_next("p")
    assert again is not None and again[0].id == job.id and again[0].attempts == 1


async def test_give_backs_are_capped_at_max_attempts_then_a_release_spends(
    board: JobBoard,
) -> None:
    job = await board.post("j", "f", max_attempts=2)
    for _ in range(2):
        released = await board.release(await board.claim(job.id, "o"))
    assert (released.attempts, released.releases, released.abandons) == (0, 2, 0)
    for spent in (1, 2):
        released = await board.release(await board.claim(job.id, "o"))
        assert (released.attempts, released.releases, released.abandons) == (spent, 2, spent)


async def test_an_abandon_spends_the_attempt_and_is_counted(board: JobBoard) -> None:
    job = await board.post("j", "f")
    abandoned = await board.abandon(await board.claim(job.id, "o"))
    assert (abandoned.attempts, abandoned.releases, abandoned.abandons) == (1, 0, 1)
    assert abandoned.state is JobState.UNCLAIMED


async def test_a_stale_claim_can_neither_release_nor_retry(board: JobBoard) -> None:
    job = await board.post("j", "f", retry=POLICY)
    old = await board.claim(job.id, "owner-1", lease=SHORT_LEASE)
    await anyio.sleep(SHORT_LEASE + 0.1)
    current = await board.claim(job.id, "owner-2")
    before = await board.get(job.id)
    with pytest.raises(ClaimLost):
        await board.release(old)
    with pytest.raises(ClaimLost):
        await board.retry(old, delay=1.0, failure={"message": "late"})
    assert await board.get(job.id) == before
    await board.release(current)
    with pytest.raises(ClaimLost):
        await board.release(current)  # a claim given back is no claim


async def test_a_job_posted_with_a_retry_policy_keeps_it(board: JobBoard) -> None:
    job = await board.post("j", "f", retry=POLICY)
    assert job.retry == POLICY and job.retries == 0 and job.failures == []
    assert (await board.get(job.id)).retry == POLICY
    assert (await board.post("plain", "f")).retry is None
    many = await board.post_many("f", [{"n": 1}, {"n": 2}], retry=POLICY)
    assert [(await board.get(j.id)).retry for j in many] == [POLICY, POLICY]
    listed = {j.id: j.retry async for j in board.iterjobs()}
    assert listed[job.id] == POLICY


async def test_a_retry_schedules_the_job_with_its_attempt_given_back(board: JobBoard) -> None:
    job = await board.post("j", "f", retry=POLICY)
    claim = await board.claim(job.id, "o")
    failure = {"exc_type": "builtins.RuntimeError", "message": "boom", "traceback": "..."}
    retried = await board.retry(claim, delay=0.6, failure=failure)
    assert retried.state is JobState.SCHEDULED and retried.claim is None
    assert (retried.attempts, retried.retries, retried.failures) == (0, 1, [failure])
    assert retried.not_before is not None
    assert retried.not_before - retried.updated_at == pytest.approx(0.6, abs=0.05)
    assert await board.get(job.id) == retried
    assert await board.job_count(state=JobState.SCHEDULED) == 1
    with pytest.raises(UnclaimableJob):
        await board.claim(job.id, "o")
    assert await board.claim_next("o") is None

    with anyio.fail_after(5):
        while (again := await board.claim_next("o")) is None:
            await anyio.sleep(0.05)
    assert again[0].id == job.id and again[0].attempts == 1 and again[0].retries == 1
    assert again[1].token > claim.token
    done = await board.consume(again[1], result={"ok": True})
    assert done.retries == 1 and done.failures == [failure] and done.attempts == 1


async def test_a_job_keeps_the_failures_of_its_latest_retries(board: JobBoard) -> None:
    job = await board.post("j", "f")
    for n in range(MAX_KEPT_FAILURES + 2):
        claim = await board.claim(job.id, "o")
        retried = await board.retry(claim, delay=0, failure={"n": n})
    assert retried.retries == MAX_KEPT_FAILURES + 2 and retried.attempts == 0
    assert [f["n"] for f in retried.failures] == list(range(2, MAX_KEPT_FAILURES + 2))
    retried = await board.retry(await board.claim(job.id, "o"), delay=0)
    assert len(retried.failures) == MAX_KEPT_FAILURES  # no failure given: none added


@pytest.mark.parametrize(
    ("delay", "failure"),
    [
        (-1, None),
        (math.nan, None),
        (math.inf, None),
        ("soon", None),
        (1.0, {"bad": {1, 2}}),
        (1.0, {1: "not a str key"}),
        (1.0, ["not", "an", "object"]),
    ],
)
async def test_a_bad_retry_is_refused_and_changes_nothing(
    board: JobBoard, delay: Any, failure: Any
) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "o")
    before = await board.get(job.id)
    with pytest.raises(PayloadError):
        await board.retry(claim, delay=delay, failure=failure)
    assert await board.get(job.id) == before
    assert (await board.consume(claim)).state is JobState.COMPLETE  # the claim still holds


async def test_a_retried_job_is_announced_when_it_is_due(board: JobBoard) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "o")
    async with contextlib.aclosing(board.stream()) as stream:
        await board.retry(claim, delay=0.3)
        with anyio.fail_after(5):
            async for note in stream:
                if note.job_id == job.id:
                    break
    claimed = await board.claim_next("o")
    assert claimed is not None and claimed[0].id == job.id


async def test_post_refuses_a_retry_that_is_not_a_policy(board: JobBoard) -> None:
    with pytest.raises(PayloadError, match="RetryPolicy"):
        await board.post("j", "f", retry={"retries": 3})  # type: ignore[arg-type]
    assert await board.job_count() == 0
