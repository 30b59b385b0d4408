"""The board conformance suite: search. Filters by state, outcome, flow and a piece of the name
or key, combined; pages newest first by ``seq`` that neither repeat nor skip a job; counts; and
the jobs ended per time bucket; live claims by owner."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from aioconductor.boards import JobBoard
from aioconductor.errors import PayloadError
from aioconductor.models import EndedCount
from aioconductor.models import Job
from aioconductor.models import JobFilter
from aioconductor.models import JobState
from aioconductor.models import Outcome
from aioconductor.testing.conformance._common import SHORT_LEASE
from aioconductor.testing.conformance._common import BoardOpener


async def _ids(board: JobBoard, where: JobFilter | None = None, **kw: Any) -> list[str]:
    return [job.id for job in (await board.search(where, **kw)).jobs]


async def _fill(board: JobBoard) -> dict[str, Job]:
    """Six jobs in every kind of state, posted in this order."""
    jobs = {
        "waiting": await board.post("order 1 waiting", "orders", key="ORD-1"),
        "running": await board.post("order 2 running", "orders"),
        "done": await board.post("mail 3 done", "mails", key="mail-3"),
        "reverted": await board.post("order_4 reverted", "orders"),
        "trashed": await board.post("mail 5 trashed", "mails"),
        "later": await board.post("order 6 later", "orders", delay=3600),
    }
    await board.claim(jobs["running"].id, "owner-1")
    await board.consume(await board.claim(jobs["done"].id, "owner-1"))
    claim = await board.claim(jobs["reverted"].id, "owner-1")
    await board.consume(claim, outcome=Outcome.REVERTED)
    await board.trash(jobs["trashed"].id, reason="bad")
    return jobs


async def test_search_lists_every_job_newest_first(board: JobBoard) -> None:
    jobs = await _fill(board)
    page = await board.search()
    assert [job.id for job in page.jobs] == [j.id for j in reversed(list(jobs.values()))]
    assert page.next_before is None
    assert page.jobs[0] == await board.get(jobs["later"].id)
    assert await board.search_count() == 6


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (JobFilter(state=JobState.COMPLETE), ["reverted", "done"]),
        (JobFilter(state=JobState.CLAIMED), ["running"]),
        (JobFilter(state=JobState.UNCLAIMED), ["waiting"]),
        (JobFilter(state=JobState.SCHEDULED), ["later"]),
        (JobFilter(state=JobState.TRASHED), ["trashed"]),
        (JobFilter(outcome=Outcome.SUCCESS), ["done"]),
        (JobFilter(outcome=Outcome.REVERTED), ["reverted"]),
        (JobFilter(outcome=Outcome.CANCELLED), []),
        (JobFilter(flow="mails"), ["trashed", "done"]),
        (JobFilter(flow="mail"), []),
        (JobFilter(text="order"), ["later", "reverted", "running", "waiting"]),
        (JobFilter(text="ORD-1"), ["waiting"]),
        (JobFilter(text="ord-1"), ["waiting"]),
        (JobFilter(text="MAIL-3"), ["done"]),
        (JobFilter(text="_"), ["reverted"]),
        (JobFilter(text="%"), []),
        (JobFilter(flow="orders", state=JobState.COMPLETE), ["reverted"]),
        (JobFilter(flow="orders", text="2"), ["running"]),
        (JobFilter(flow="mails", outcome=Outcome.SUCCESS, text="done"), ["done"]),
    ],
    ids=lambda value: repr(value)[:60] if isinstance(value, JobFilter) else "",
)
async def test_filters_match_and_combine(
    board: JobBoard, where: JobFilter, expected: list[str]
) -> None:
    jobs = await _fill(board)
    assert await _ids(board, where) == [jobs[name].id for name in expected]
    assert await board.search_count(where) == len(expected)


async def test_a_scheduled_job_whose_time_came_is_found_as_unclaimed(board: JobBoard) -> None:
    due = await board.post("due", "f", not_before=time.time() - 10)
    assert await _ids(board, JobFilter(state=JobState.UNCLAIMED)) == [due.id]
    assert await _ids(board, JobFilter(state=JobState.SCHEDULED)) == []


async def test_pages_neither_repeat_nor_skip_while_jobs_are_posted(board: JobBoard) -> None:
    posted = [await board.post(f"job {n}", "f") for n in range(25)]
    seen: list[str] = []
    page = await board.search(limit=10)
    while True:
        seen.extend(job.id for job in page.jobs)
        await board.post("posted meanwhile", "f")  # newer: never on a later page
        if page.next_before is None:
            break
        page = await board.search(before=page.next_before, limit=10)
    assert seen == [job.id for job in reversed(posted)]


async def test_pages_of_a_filter(board: JobBoard) -> None:
    jobs = [await board.post(f"job {n}", "even" if n % 2 == 0 else "odd") for n in range(9)]
    where = JobFilter(flow="even")
    first = await board.search(where, limit=3)
    assert [j.id for j in first.jobs] == [jobs[8].id, jobs[6].id, jobs[4].id]
    assert first.next_before == jobs[4].seq
    second = await board.search(where, before=first.next_before, limit=3)
    assert [j.id for j in second.jobs] == [jobs[2].id, jobs[0].id]
    assert second.next_before is None


@pytest.mark.parametrize("bad", [{"limit": 0}, {"limit": 1001}, {"limit": True}, {"before": "x"}])
async def test_a_bad_page_is_refused(board: JobBoard, bad: dict[str, Any]) -> None:
    with pytest.raises(PayloadError):
        await board.search(**bad)


def test_a_bad_filter_is_refused() -> None:
    with pytest.raises(ValueError):
        JobFilter(text="")
    with pytest.raises(ValueError):
        JobFilter.model_validate({"state": "NOPE"})


async def test_ended_counts_count_each_ending_per_bucket(board: JobBoard) -> None:
    before = time.time() - 1
    await _fill(board)
    cancelled = await board.post("c", "f")
    await board.cancel(cancelled.id)
    counts = await board.ended_counts(before, bucket=3600)
    totals: dict[str, int] = {}
    for count in counts:
        assert isinstance(count, EndedCount) and count.start % 3600 == 0
        assert count.start <= time.time() and count.start + 3600 > before
        totals[count.ending] = totals.get(count.ending, 0) + count.count
    assert totals == {"SUCCESS": 1, "REVERTED": 1, "TRASHED": 1, "CANCELLED": 1}
    assert await board.ended_counts(time.time() + 60) == []


@pytest.mark.parametrize("bad", [{"bucket": 0}, {"bucket": -1}, {"since": float("nan")}])
async def test_bad_ended_counts_are_refused(board: JobBoard, bad: dict[str, Any]) -> None:
    with pytest.raises(PayloadError):
        await board.ended_counts(**{"since": 0.0, **bad})


async def test_search_is_isolated_per_namespace(backend: BoardOpener) -> None:
    async with backend.open("search_a") as a, backend.open("search_b") as b:
        mine = await a.post("same name", "f")
        await b.post("same name", "f")
        assert await _ids(a, JobFilter(text="same")) == [mine.id]
        assert await a.search_count() == 1


async def test_held_claims_count_live_claims_by_owner(board: JobBoard) -> None:
    assert await board.held_claims() == {}
    await _fill(board)  # owner-1: one live claim ("running"), two ended
    others = [await board.post(f"x{n}", "f") for n in range(4)]
    await board.claim(others[0].id, "owner-2")
    await board.claim(others[1].id, "owner-2")
    await board.claim(others[2].id, "owner-3", lease=SHORT_LEASE)
    released = await board.claim(others[3].id, "owner-4")
    await board.release(released)
    assert await board.held_claims() == {"owner-1": 1, "owner-2": 2, "owner-3": 1}
    await anyio.sleep(SHORT_LEASE + 0.2)
    assert await board.held_claims() == {"owner-1": 1, "owner-2": 2}


async def test_held_claims_are_isolated_per_namespace(backend: BoardOpener) -> None:
    async with backend.open("held_a") as a, backend.open("held_b") as b:
        await a.claim((await a.post("j", "f")).id, "owner")
        assert await b.held_claims() == {}
        assert await a.held_claims() == {"owner": 1}
