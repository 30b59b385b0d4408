"""The board conformance suite: how a claim ends. Stale claims change nothing; leases expire and
renew; ``consume``, ``abandon`` and ``trash``; ``release`` (the attempt given back, capped) and
``retry`` (scheduled again, the attempt given back)."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import anyio
import pytest

from aioconductor.boards import JobBoard
from aioconductor.errors import ClaimLost
from aioconductor.errors import JobNotFound
from aioconductor.errors import PayloadError
from aioconductor.errors import UnclaimableJob
from aioconductor.models import MAX_KEPT_FAILURES
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.models import JobState
from aioconductor.models import Outcome
from aioconductor.models import RetryPolicy
from aioconductor.testing.conformance._common import SHORT_LEASE

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


# -- release and retry ----------------------------------------------------------------------------


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
