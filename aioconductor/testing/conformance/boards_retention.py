"""The board conformance suite: retention. ``purge`` deletes finished jobs that ended before
the cutoff (never a job that is not finished), frees their keys and deletes their logbooks."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aioconductor.boards import JobBoard
from aioconductor.errors import ConfigurationError
from aioconductor.errors import JobNotFound
from aioconductor.errors import LogBookNotFound
from aioconductor.models import Job
from aioconductor.models import JobState
from aioconductor.models import Outcome
from aioconductor.persistence.memory import MemoryStore
from aioconductor.persistence.models import LogBook
from aioconductor.testing.conformance._common import BoardOpener
from aioconductor.testing.conformance._common import snapshot


async def _finished(board: JobBoard, how: str = "consume", **post: Any) -> Job:
    job = await board.post("j", "f", **post)
    claim = await board.claim(job.id, "owner-1")
    if how == "consume":
        return await board.consume(claim, outcome=Outcome.SUCCESS, result={"ok": True})
    return await board.trash(claim, reason="bad")


async def test_purge_deletes_finished_jobs_only_and_counts_them(board: JobBoard) -> None:
    unclaimed = await board.post("u", "f")
    scheduled = await board.post("s", "f", delay=3600)
    claimed = await board.post("c", "f")
    await board.claim(claimed.id, "owner-1")
    done = await _finished(board)
    trashed = await _finished(board, "trash")
    assert await board.purge(older_than=0) == 2
    for gone in (done, trashed):
        with pytest.raises(JobNotFound):
            await board.get(gone.id)
    left = {job.id: job.state for job in await snapshot(board)}
    assert left == {
        unclaimed.id: JobState.UNCLAIMED,
        scheduled.id: JobState.SCHEDULED,
        claimed.id: JobState.CLAIMED,
    }
    assert await board.job_count() == 3
    assert await board.purge(older_than=0) == 0


async def test_purge_keeps_jobs_that_ended_after_the_cutoff(board: JobBoard) -> None:
    old = await _finished(board)
    await anyio.sleep(1.5)
    young = await _finished(board)
    assert await board.purge(older_than=3600) == 0
    assert await board.purge(older_than=0.75) == 1
    with pytest.raises(JobNotFound):
        await board.get(old.id)
    assert (await board.get(young.id)).state is JobState.COMPLETE


async def test_purge_deletes_only_the_states_asked_for(board: JobBoard) -> None:
    done = await _finished(board)
    trashed = await _finished(board, "trash")
    assert await board.purge(older_than=0, states=[JobState.TRASHED]) == 1
    assert (await board.get(done.id)).state is JobState.COMPLETE
    with pytest.raises(JobNotFound):
        await board.get(trashed.id)
    assert await board.purge(older_than=0, states=["COMPLETE"]) == 1
    assert await board.job_count() == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"older_than": -1},
        {"older_than": float("nan")},
        {"older_than": "7d"},
        {"older_than": 0, "states": [JobState.UNCLAIMED]},
        {"older_than": 0, "states": [JobState.COMPLETE, JobState.CLAIMED]},
        {"older_than": 0, "states": ["FINISHED"]},
        {"older_than": 0, "states": []},
        {"older_than": 0, "batch": 0},
    ],
)
async def test_a_bad_purge_is_refused_and_deletes_nothing(
    board: JobBoard, bad: dict[str, Any]
) -> None:
    await _finished(board)
    with pytest.raises(ConfigurationError):
        await board.purge(**bad)
    assert await board.job_count() == 1


async def test_purge_frees_the_keys_of_the_jobs_it_deletes(board: JobBoard) -> None:
    old = await _finished(board, key="order-1")
    kept = await _finished(board, key="order-2")
    assert await board.purge(older_than=0, states=[JobState.COMPLETE]) == 2
    with pytest.raises(JobNotFound):
        await board.get_by_key("order-1")
    fresh, created = await board.get_or_post("j", "f", key="order-1")
    assert created and fresh.id != old.id and fresh.state is JobState.UNCLAIMED
    assert (await board.get_by_key("order-1")).id == fresh.id
    del kept


async def test_purge_deletes_the_logbooks_of_the_jobs_it_deletes(board: JobBoard) -> None:
    done = await _finished(board)
    live = await board.post("live", "f")
    async with MemoryStore() as store:
        for job in (done, live):
            await store.save_logbook(LogBook(uuid=job.id, name=job.name))
        await store.save_logbook(LogBook(uuid="not-a-job", name="stray"))
        finished_without_book = await _finished(board)
        assert await board.purge(older_than=0, store=store) == 2
        with pytest.raises(LogBookNotFound):
            await store.get_logbook(done.id)
        assert (await store.get_logbook(live.id)).name == "live"
        assert (await store.get_logbook("not-a-job")).name == "stray"
    with pytest.raises(JobNotFound):
        await board.get(finished_without_book.id)


async def test_purge_works_in_batches_until_nothing_is_left(board: JobBoard) -> None:
    jobs = await board.post_many("f", [{"n": n} for n in range(25)])
    for job in jobs:
        claim = await board.claim(job.id, "owner-1")
        await board.consume(claim)
    keep = await board.post("keep", "f")
    assert await board.purge(older_than=0, batch=10) == 25
    assert [job.id for job in await snapshot(board)] == [keep.id]


async def test_purge_is_isolated_per_namespace(backend: BoardOpener) -> None:
    async with backend.open("purge_a") as a, backend.open("purge_b") as b:
        await _finished(a)
        other = await _finished(b)
        assert await a.purge(older_than=0) == 1
        assert (await b.get(other.id)).state is JobState.COMPLETE


async def test_concurrent_purges_delete_each_job_once(backend: BoardOpener) -> None:
    async with backend.open("purge_race") as a, backend.open("purge_race") as b:
        jobs = await a.post_many("f", [{} for _ in range(20)])
        for job in jobs:
            await a.consume(await a.claim(job.id, "owner-1"))
        counts: list[int] = []

        async def purge(board: JobBoard) -> None:
            counts.append(await board.purge(older_than=0, batch=5))

        async with anyio.create_task_group() as tg:
            for board in (a, b, a, b):
                tg.start_soon(purge, board)
        assert sum(counts) == 20
        assert await b.job_count() == 0


async def test_a_purge_racing_a_post_of_the_same_key_leaves_exactly_one_live_job(
    backend: BoardOpener,
) -> None:
    async with backend.open("purge_key") as a, backend.open("purge_key") as b:
        for round_ in range(5):
            key = f"race-{round_}"
            holder = await _finished(a, key=key)
            posted: list[tuple[Job, bool]] = []

            async def post(
                board: JobBoard, key: str = key, posted: list[tuple[Job, bool]] = posted
            ) -> None:
                posted.append(await board.get_or_post("j", "f", key=key))

            async def purge() -> None:
                await a.purge(older_than=0)

            async with anyio.create_task_group() as tg:
                tg.start_soon(purge)
                tg.start_soon(post, b)
            job, created = posted[0]
            if created:
                # The purge went first: the post made a new job, and the purge never touches it.
                assert job.id != holder.id
            else:
                # The post went first and found the finished holder; the purge then took it.
                assert job.id == holder.id
            # Either way, once the dust settles the key names exactly one live job.
            live, _ = await b.get_or_post("j", "f", key=key)
            assert live.state is JobState.UNCLAIMED
            holders = [j for j in await snapshot(a) if j.key == key]
            assert [j.id for j in holders] == [live.id]
            if created:
                assert live.id == job.id
