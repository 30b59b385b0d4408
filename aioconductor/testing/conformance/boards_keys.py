"""The board conformance suite: idempotency keys. A key is held by one job of the namespace,
whatever its state, until the job is purged; a post whose key is held writes nothing and hands
back the holder; bad keys are refused before anything is written."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aioconductor.boards import JobBoard
from aioconductor.errors import JobNotFound
from aioconductor.errors import PayloadError
from aioconductor.models import Job
from aioconductor.models import JobState
from aioconductor.models import Outcome
from aioconductor.testing.conformance._common import BoardOpener
from aioconductor.testing.conformance._common import snapshot


async def test_a_post_whose_key_is_held_writes_nothing_and_returns_the_holder(
    board: JobBoard,
) -> None:
    first = await board.post("order", "f", {"n": 1}, key="order-42", priority=3)
    assert first.key == "order-42"
    again = await board.post("other", "g", {"n": 2}, key="order-42", priority=9)
    assert again == first
    assert await board.job_count() == 1
    holder, created = await board.get_or_post("order", "f", {"n": 3}, key="order-42")
    assert (holder, created) == (first, False)
    fresh, created = await board.get_or_post("order", "f", {"n": 4}, key="order-43")
    assert created and fresh.key == "order-43" and fresh.args == {"n": 4}
    assert [job.key for job in await snapshot(board)] == ["order-42", "order-43"]


@pytest.mark.parametrize("ending", ["consume", "trash", "claim", "delay"])
async def test_a_key_is_held_whatever_the_state_of_its_job(board: JobBoard, ending: str) -> None:
    job = await board.post("j", "f", key="k", delay=3600 if ending == "delay" else None)
    if ending != "delay":
        claim = await board.claim(job.id, "owner-1")
        if ending == "consume":
            await board.consume(claim, outcome=Outcome.FAILURE)
        elif ending == "trash":
            await board.trash(claim, reason="bad")
    holder = await board.get(job.id)
    assert await board.post("j", "f", key="k") == holder
    assert await board.get_by_key("k") == holder
    assert await board.job_count() == 1


async def test_jobs_without_keys_never_collide(board: JobBoard) -> None:
    one = await board.post("j", "f")
    two = await board.post("j", "f", key=None)
    assert one.id != two.id and one.key is None and two.key is None
    assert await board.job_count() == 2


async def test_keys_are_isolated_per_namespace(backend: BoardOpener) -> None:
    async with backend.open("keys_a") as a, backend.open("keys_b") as b:
        in_a = await a.post("j", "f", key="shared")
        in_b = await b.post("j", "f", key="shared")
        assert in_a.id != in_b.id
        assert (await a.get_by_key("shared")).id == in_a.id
        assert (await b.get_by_key("shared")).id == in_b.id


BAD_KEYS: list[Any] = ["", "   ", "x" * 256, "a\x00b", "a\nb", "tab\tkey", " lead", "trail ", 5]


@pytest.mark.parametrize("key", BAD_KEYS, ids=[repr(k)[:12] for k in BAD_KEYS])
async def test_a_bad_key_is_refused_and_nothing_is_written(board: JobBoard, key: Any) -> None:
    with pytest.raises(PayloadError):
        await board.post("j", "f", key=key)
    with pytest.raises(PayloadError):
        await board.get_or_post("j", "f", key=key)
    with pytest.raises(PayloadError):
        await board.post_many("f", [{}, {}], keys=["fine", key])
    with pytest.raises(PayloadError):
        await board.get_by_key(key)
    assert await board.job_count() == 0


async def test_a_key_of_255_characters_any_script_is_accepted(board: JobBoard) -> None:
    key = "ключ-🔑:" + "k" * 248
    assert len(key) == 255
    job = await board.post("j", "f", key=key)
    assert (await board.get_by_key(key)).id == job.id == (await board.get(job.id)).id
    assert (await board.get(job.id)).key == key


async def test_get_by_key_finds_the_holder_or_raises(board: JobBoard) -> None:
    job = await board.post("j", "f", key="find-me")
    assert await board.get_by_key("find-me") == await board.get(job.id)
    with pytest.raises(JobNotFound):
        await board.get_by_key("nobody-holds-this")


async def test_post_many_takes_a_key_per_item(board: JobBoard) -> None:
    held = await board.post("held", "f", {"n": 0}, key="b")
    jobs = await board.post_many(
        "f", [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}], keys=["a", None, "b", "a"]
    )
    assert [job.key for job in jobs] == ["a", None, "b", "a"]
    assert jobs[0].args == {"n": 1} and jobs[1].args == {"n": 2}
    assert jobs[2] == held and jobs[3] == jobs[0]
    assert jobs[0].seq < jobs[1].seq
    assert await board.job_count() == 3
    assert sorted(job.key or "" for job in await snapshot(board)) == ["", "a", "b"]


async def test_post_many_with_keys_that_do_not_match_writes_nothing(board: JobBoard) -> None:
    for keys in (["a"], ["a", "b", "c"], "ab"):
        with pytest.raises(PayloadError):
            await board.post_many("f", [{}, {}], keys=keys)
    assert await board.job_count() == 0


async def test_get_or_post_without_a_key_is_refused(board: JobBoard) -> None:
    with pytest.raises(PayloadError):
        await board.get_or_post("j", "f", key=None)  # type: ignore[arg-type]
    assert await board.job_count() == 0


async def test_concurrent_posts_of_one_key_on_several_boards_create_one_job(
    backend: BoardOpener,
) -> None:
    boards = [backend.open("keys_race") for _ in range(3)]
    for each in boards:
        await each.connect()
    got: list[Job] = []

    async def post(board: JobBoard, n: int) -> None:
        got.append(await board.post("j", "f", {"n": n}, key="once"))

    async with anyio.create_task_group() as tg:
        for n in range(30):
            tg.start_soon(post, boards[n % 3], n)
    assert len({job.id for job in got}) == 1
    assert await boards[0].job_count() == 1
    holder = await boards[1].get_by_key("once")
    assert holder.id == got[0].id and holder.state is JobState.UNCLAIMED
