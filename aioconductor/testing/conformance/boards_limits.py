"""The board conformance suite: fleet-wide concurrency limits. At most ``limit`` jobs of a
limit key hold a live claim at once; claims pass a full key's jobs over and take the next
claimable job; every end of a claim frees its slot."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aioconductor.boards import JobBoard
from aioconductor.errors import ClaimLost
from aioconductor.errors import PayloadError
from aioconductor.errors import UnclaimableJob
from aioconductor.models import Claim
from aioconductor.models import LimitInfo
from aioconductor.models import NotificationKind
from aioconductor.models import Outcome
from aioconductor.testing.conformance._common import SHORT_LEASE
from aioconductor.testing.conformance._common import BoardOpener
from aioconductor.testing.conformance._common import subscribed
from aioconductor.testing.conformance._common import two_boards


async def _ids(board: JobBoard, owner: str, count: int) -> list[str]:
    return [job.id for job, _ in await board.claim_batch(owner, count)]


async def test_limits_are_set_listed_and_removed(board: JobBoard) -> None:
    assert await board.limits() == []
    await board.set_limit("payments", 5)
    await board.set_limit("emails", 0)
    await board.set_limit("payments", 3)
    assert await board.limits() == [
        LimitInfo(key="emails", limit=0, claimed=0),
        LimitInfo(key="payments", limit=3, claimed=0),
    ]
    await board.set_limit("emails", None)
    await board.set_limit("never-set", None)
    assert await board.limits() == [LimitInfo(key="payments", limit=3, claimed=0)]


async def test_limits_report_live_claims(board: JobBoard) -> None:
    await board.set_limit("payments", 3)
    jobs = [await board.post("p", "f", limit_key="payments") for _ in range(3)]
    await board.claim(jobs[0].id, "owner-1")
    await board.claim(jobs[1].id, "owner-1", lease=SHORT_LEASE)
    assert [info.claimed for info in await board.limits()] == [2]
    await anyio.sleep(SHORT_LEASE + 0.2)
    assert [info.claimed for info in await board.limits()] == [1]


async def test_a_full_key_is_passed_over_for_the_next_claimable_job(board: JobBoard) -> None:
    await board.set_limit("payments", 1)
    first = await board.post("p1", "f", limit_key="payments", priority=5)
    second = await board.post("p2", "f", limit_key="payments", priority=5)
    other = await board.post("o", "f")
    assert first.limit_key == "payments" and other.limit_key is None
    claimed = await board.claim_next("owner-1")
    assert claimed is not None and claimed[0].id == first.id
    claimed = await board.claim_next("owner-2")
    assert claimed is not None and claimed[0].id == other.id
    assert await board.claim_next("owner-3") is None
    with pytest.raises(UnclaimableJob):
        await board.claim(second.id, "owner-3")
    assert (await board.get(second.id)).attempts == 0


async def test_a_key_without_a_limit_limits_nothing(board: JobBoard) -> None:
    jobs = [await board.post("p", "f", limit_key="free") for _ in range(4)]
    assert sorted(await _ids(board, "owner-1", 10)) == sorted(job.id for job in jobs)


async def test_a_limit_of_zero_pauses_the_key(board: JobBoard) -> None:
    await board.set_limit("paused", 0)
    job = await board.post("p", "f", limit_key="paused")
    assert await board.claim_next("owner-1") is None
    await board.set_limit("paused", None)
    claimed = await board.claim_next("owner-1")
    assert claimed is not None and claimed[0].id == job.id


async def test_a_batch_claim_takes_no_more_than_the_free_slots(board: JobBoard) -> None:
    await board.set_limit("payments", 2)
    await board.set_limit("emails", 1)
    limited = [await board.post("p", "f", limit_key="payments") for _ in range(5)]
    mails = [await board.post("e", "f", limit_key="emails") for _ in range(3)]
    free = [await board.post("o", "f") for _ in range(3)]
    taken = await _ids(board, "owner-1", 20)
    assert taken == [limited[0].id, limited[1].id, mails[0].id, *(job.id for job in free)]
    assert await _ids(board, "owner-2", 20) == []


async def _end(board: JobBoard, claim: Claim, ending: str) -> None:
    if ending == "consume":
        await board.consume(claim, outcome=Outcome.SUCCESS)
    elif ending == "abandon":
        await board.abandon(claim)
    elif ending == "release":
        await board.release(claim)
    elif ending == "retry":
        await board.retry(claim, delay=3600)
    elif ending == "trash":
        await board.trash(claim, reason="bad")
    elif ending == "trash_by_id":
        await board.trash(claim.job_id, reason="by the operator")
    elif ending == "cancel_then_consume":
        await board.cancel(claim.job_id)
        await board.consume(claim, outcome=Outcome.CANCELLED)
    else:
        assert ending == "expiry"
        await anyio.sleep(SHORT_LEASE + 0.2)


ENDINGS = [
    "consume",
    "abandon",
    "release",
    "retry",
    "trash",
    "trash_by_id",
    "cancel_then_consume",
    "expiry",
]


@pytest.mark.parametrize("ending", ENDINGS)
async def test_every_end_of_a_claim_frees_its_slot(board: JobBoard, ending: str) -> None:
    await board.set_limit("payments", 1)
    first = await board.post("p1", "f", limit_key="payments", priority=1)
    second = await board.post("p2", "f", limit_key="payments")
    # Only the expiry case waits its lease out: a short lease elsewhere could run out before
    # the next call on a slow backend.
    lease = SHORT_LEASE if ending == "expiry" else None
    claim = await board.claim(first.id, "owner-1", lease=lease)
    if ending != "expiry":
        assert await board.claim_next("owner-2") is None
    await _end(board, claim, ending)
    claimed = await board.claim_next("owner-2")
    expected = first.id if ending in ("abandon", "release", "expiry") else second.id
    assert claimed is not None and claimed[0].id == expected
    assert await board.claim_next("owner-3") is None


async def test_lowering_a_limit_stops_nothing_running(board: JobBoard) -> None:
    await board.set_limit("payments", 2)
    jobs = [await board.post("p", "f", limit_key="payments") for _ in range(3)]
    claims = [await board.claim(job.id, "owner-1") for job in jobs[:2]]
    await board.set_limit("payments", 1)
    for claim in claims:
        await board.renew(claim)
    assert [info.claimed for info in await board.limits()] == [2]
    await board.consume(claims[0])
    assert await board.claim_next("owner-2") is None
    await board.consume(claims[1])
    claimed = await board.claim_next("owner-2")
    assert claimed is not None and claimed[0].id == jobs[2].id


async def test_renewing_a_lapsed_claim_fails_if_its_key_filled_meanwhile(board: JobBoard) -> None:
    await board.set_limit("payments", 1)
    first = await board.post("p1", "f", limit_key="payments")
    second = await board.post("p2", "f", limit_key="payments")
    lapsed = await board.claim(first.id, "owner-1", lease=SHORT_LEASE)
    await anyio.sleep(SHORT_LEASE + 0.2)
    taken = await board.claim(second.id, "owner-2")
    with pytest.raises(ClaimLost):
        await board.renew(lapsed)
    job = await board.get(first.id)
    assert job.claim is not None and job.claim.token == lapsed.token
    await board.consume(taken)
    renewed = await board.renew(lapsed)
    assert renewed.token == lapsed.token and renewed.expires_at > lapsed.expires_at


async def test_a_lapsed_claim_of_a_free_key_renews(board: JobBoard) -> None:
    await board.set_limit("payments", 1)
    job = await board.post("p", "f", limit_key="payments")
    lapsed = await board.claim(job.id, "owner-1", lease=SHORT_LEASE)
    await anyio.sleep(SHORT_LEASE + 0.2)
    assert (await board.renew(lapsed)).token == lapsed.token


async def test_limits_are_isolated_per_namespace(backend: BoardOpener) -> None:
    async with backend.open("limits_a") as a, backend.open("limits_b") as b:
        await a.set_limit("payments", 0)
        job = await b.post("p", "f", limit_key="payments")
        assert await b.limits() == []
        claimed = await b.claim_next("owner-1")
        assert claimed is not None and claimed[0].id == job.id


async def test_a_freed_slot_is_announced(backend: BoardOpener) -> None:
    async with two_boards(backend, poll_interval=0.05) as (worker, other):
        await worker.set_limit("payments", 1)
        first = await worker.post("p1", "f", limit_key="payments")
        waiting = await worker.post("p2", "f", limit_key="payments")
        claim = await worker.claim(first.id, "owner-1")
        marker = await worker.post("marker", "f", priority=-1)
        async with subscribed(other, marker) as iterator:
            await worker.consume(claim)
            with anyio.fail_after(5):
                note = await anext(iterator)
        assert note.kind.is_claimable
        assert note.job_id in (first.id, waiting.id)
        if note.kind is NotificationKind.SLOT_FREED:
            assert note.job_id == first.id


BAD_LIMITS: list[Any] = [-1, 1.5, "3", True, 10**7]


@pytest.mark.parametrize("limit", BAD_LIMITS, ids=repr)
async def test_a_bad_limit_is_refused(board: JobBoard, limit: Any) -> None:
    with pytest.raises(PayloadError):
        await board.set_limit("payments", limit)
    assert await board.limits() == []


BAD_KEYS: list[Any] = ["", " lead", "a\nb", "x" * 256, 5]


@pytest.mark.parametrize("key", BAD_KEYS, ids=[repr(k)[:12] for k in BAD_KEYS])
async def test_a_bad_limit_key_is_refused_and_nothing_is_written(board: JobBoard, key: Any) -> None:
    with pytest.raises(PayloadError):
        await board.set_limit(key, 3)
    with pytest.raises(PayloadError):
        await board.post("p", "f", limit_key=key)
    with pytest.raises(PayloadError):
        await board.post_many("f", [{}, {}], limit_key=key)
    assert await board.job_count() == 0
    assert await board.limits() == []
