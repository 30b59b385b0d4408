"""The board conformance suite: schedule ticks. ``post_tick`` posts each tick of a schedule
once (keyed, not before the tick), advances the schedule's last tick in the same step, and never
posts a tick at or before it again, even once the tick's job was purged."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aioconductor.boards import JobBoard
from aioconductor.boards._ticking import MAX_SCHEDULE_NAME
from aioconductor.errors import PayloadError
from aioconductor.models import Job
from aioconductor.models import JobState
from aioconductor.testing.conformance._common import BoardOpener
from aioconductor.testing.conformance._common import snapshot

#: 2026-01-01T00:00:00Z
T0 = 1_767_225_600.0


async def test_a_tick_is_posted_once_keyed_and_not_before_its_time(board: JobBoard) -> None:
    job = await board.post_tick("nightly", T0, "report", "f", {"day": 1}, priority=2)
    assert job is not None
    assert job.key == "schedule:nightly:2026-01-01T00:00:00Z"
    assert job.not_before == T0 and job.priority == 2 and job.args == {"day": 1}
    assert job.name == "report" and job.flow == "f"
    assert await board.post_tick("nightly", T0, "report", "f") is None
    assert await board.post_tick("nightly", T0 - 60, "report", "f") is None
    later = await board.post_tick("nightly", T0 + 60, "report", "f")
    assert later is not None and later.key == "schedule:nightly:2026-01-01T00:01:00Z"
    assert await board.schedule_ticks() == {"nightly": T0 + 60}
    assert [j.id for j in await snapshot(board)] == [job.id, later.id]


async def test_a_tick_in_the_future_is_scheduled_until_then(board: JobBoard) -> None:
    import time

    tick = float(int(time.time()) + 3600)
    job = await board.post_tick("hourly", tick, "j", "f")
    assert job is not None and job.state is JobState.SCHEDULED and job.not_before == tick
    assert await board.claim_next("owner-1") is None


async def test_schedules_keep_their_own_last_tick(board: JobBoard) -> None:
    assert await board.schedule_ticks() == {}
    assert await board.post_tick("a", T0 + 10, "j", "f") is not None
    assert await board.post_tick("b", T0, "j", "f") is not None
    assert await board.post_tick("b", T0 + 5, "j", "f") is not None
    assert await board.schedule_ticks() == {"a": T0 + 10, "b": T0 + 5}


async def test_a_purged_tick_is_never_posted_again(board: JobBoard) -> None:
    job = await board.post_tick("s", T0, "j", "f")
    assert job is not None
    await board.consume(await board.claim(job.id, "owner-1"))
    assert await board.purge(older_than=0) == 1
    assert await board.post_tick("s", T0, "j", "f") is None
    assert await board.job_count() == 0
    assert await board.schedule_ticks() == {"s": T0}


async def test_a_tick_whose_key_is_held_returns_the_holder_and_advances(board: JobBoard) -> None:
    held = await board.post("by-hand", "f", key="schedule:s:2026-01-01T00:00:00Z")
    got = await board.post_tick("s", T0, "j", "f")
    assert got is not None and got.id == held.id
    assert await board.schedule_ticks() == {"s": T0}
    assert await board.job_count() == 1


async def test_concurrent_ticks_on_several_boards_post_one_job_each(backend: BoardOpener) -> None:
    boards = [backend.open("ticks_race") for _ in range(3)]
    for each in boards:
        await each.connect()
    posted: list[Job | None] = []

    async def tick(board: JobBoard, at: float) -> None:
        posted.append(await board.post_tick("every", at, "j", "f"))

    async with anyio.create_task_group() as tg:
        for n in range(30):
            tg.start_soon(tick, boards[n % 3], T0 + n // 10)
    jobs = [job for job in posted if job is not None]
    # Three ticks; each posted by exactly one of its ten callers (a later tick can win
    # before an earlier one, which then is never posted: ticks only move forward).
    assert 1 <= len(jobs) <= 3 and len({job.id for job in jobs}) == len(jobs)
    assert await boards[0].job_count() == len(jobs)
    assert (await boards[1].schedule_ticks())["every"] == T0 + 2


async def test_ticks_are_isolated_per_namespace(backend: BoardOpener) -> None:
    async with backend.open("ticks_a") as a, backend.open("ticks_b") as b:
        assert await a.post_tick("s", T0, "j", "f") is not None
        assert await b.post_tick("s", T0, "j", "f") is not None
        assert await a.schedule_ticks() == await b.schedule_ticks() == {"s": T0}


BAD: list[dict[str, Any]] = [
    {"schedule": ""},
    {"schedule": "x" * (MAX_SCHEDULE_NAME + 1)},
    {"schedule": "tab\tname"},
    {"tick": T0 + 0.5},
    {"tick": -60.0},
    {"tick": float("nan")},
    {"tick": "2026-01-01"},
    {"options": {"not_before": T0}},
    {"options": {"delay": 5.0}},
    {"options": {"priority": "high"}},
    {"flow": ""},
]


@pytest.mark.parametrize("bad", BAD, ids=[next(iter(b)) + str(n) for n, b in enumerate(BAD)])
async def test_a_bad_tick_is_refused_and_writes_nothing(
    board: JobBoard, bad: dict[str, Any]
) -> None:
    call: dict[str, Any] = {"schedule": "s", "tick": T0, "name": "j", "flow": "f", **bad}
    options = call.pop("options", {})
    with pytest.raises(PayloadError):
        await board.post_tick(call["schedule"], call["tick"], call["name"], call["flow"], **options)
    assert await board.job_count() == 0
    assert await board.schedule_ticks() == {}


async def test_the_longest_schedule_name_makes_a_valid_key(board: JobBoard) -> None:
    name = "n" * MAX_SCHEDULE_NAME
    job = await board.post_tick(name, T0, "j", "f")
    assert job is not None and job.key is not None and len(job.key) == 255
    assert (await board.get_by_key(job.key)).id == job.id


async def test_a_retried_post_tick_finds_the_job_its_first_attempt_posted(
    backend: BoardOpener,
) -> None:
    async with backend.open() as board, backend.open() as reopened:
        first = await board.post_tick("beat", T0, "beat", "f", poster="conductor-a")
        assert first is not None
        # The same call again (its first reply lost on the way back), from any board object
        # of that poster: the job it posted.
        again = await reopened.post_tick("beat", T0, "beat", "f", poster="conductor-a")
        assert again == await board.get(first.id)
        # Another poster of the same tick did not post it; nor does a call without a poster.
        assert await board.post_tick("beat", T0, "beat", "f", poster="conductor-b") is None
        assert await board.post_tick("beat", T0, "beat", "f") is None
        assert await board.job_count() == 1
