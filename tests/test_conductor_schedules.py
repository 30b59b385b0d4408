"""Conductors running schedules on every board, on a fake clock: each tick posted once by a
fleet, a gap posts the latest tick (or each, bounded, with ``catch_up``), a purged tick is never
posted again, and the fleet publishes its schedules."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import pydantic
import pytest

from aioconductor import Conductor, FlowRegistry, JobBoard, Schedule, linear, task
from aioconductor.boards.memory import MemoryJobBoard
from aioconductor.errors import ConfigurationError, JobNotFound
from aioconductor.events import Event
from aioconductor.schedules import MAX_CATCH_UP
from aioconductor.testing import FakeClock
from tests.boards.conftest import BoardBackend, backend

__all__ = ["backend"]  # the fixture: every board backend in turn

#: 2026-01-01T00:00:00Z
T0 = 1_767_225_600.0
RUNS: collections.Counter[str] = collections.Counter()


def _flows() -> FlowRegistry:
    flows = FlowRegistry()

    @task
    async def tick(label: str) -> None:
        RUNS[label] += 1

    @flows.register("tick")
    def tick_flow(**args: Any) -> Any:
        return linear("tick", tick)

    return flows


@pytest.fixture(autouse=True)
def _reset_runs() -> None:
    RUNS.clear()


async def _until(check: Callable[[], Any], within: float = 30.0) -> None:
    with anyio.fail_after(within):
        while not await check():
            await anyio.sleep(0.02)


async def _has_key(board: JobBoard, key: str) -> bool:
    try:
        await board.get_by_key(key)
    except JobNotFound:
        return False
    return True


async def _scheduled(board: JobBoard) -> list[str]:
    return sorted([job.key async for job in board.iterjobs() if job.key])  # type: ignore[misc]


@contextlib.asynccontextmanager
async def _running(conductors: Sequence[Conductor]) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        for conductor in conductors:
            # Started: its scheduler took the time, so the clock may move on.
            await tg.start(conductor.run)
        yield
        for conductor in conductors:
            conductor.stop()


def _conductor(board: JobBoard, clock: FakeClock, *schedules: Schedule, n: int = 0) -> Conductor:
    return Conductor(
        f"c{n}", board, flows=_flows(), schedules=schedules, clock=clock, retention=None
    )


EVERY = Schedule("beat", flow="tick", every=1, args={"label": "beat"})


async def test_three_conductors_post_each_of_ten_ticks_once(backend: BoardBackend) -> None:
    boards = [backend.open("sched", poll_interval=0.05) for _ in range(3)]
    for board in boards:
        await board.connect()
    clock = FakeClock(T0 + 0.5)
    conductors = [_conductor(board, clock, EVERY, n=n) for n, board in enumerate(boards)]
    ticked: list[dict[str, Any]] = []
    for conductor in conductors:
        conductor.notifier.register(Event.SCHEDULE_TICKED, lambda e, d: ticked.append(dict(d)))
    async with _running(conductors):
        for k in range(1, 11):
            clock.set(T0 + k)
            await _until(lambda k=k: _has_key(boards[0], EVERY.key(T0 + k)))
        await _until(lambda: _ran(10))
    keys = await _scheduled(boards[0])
    assert keys == sorted(EVERY.key(T0 + k) for k in range(1, 11))
    assert sum(c.stats.scheduled for c in conductors) == 10 == len(ticked)
    assert sorted(d["tick"] for d in ticked) == [T0 + k for k in range(1, 11)]
    assert RUNS["beat"] == 10


async def _ran(count: int) -> bool:
    return RUNS["beat"] >= count


async def test_after_a_gap_only_the_latest_tick_is_posted(backend: BoardBackend) -> None:
    async with backend.open(poll_interval=0.05) as board:
        clock = FakeClock(T0 + 0.5)
        first = _conductor(board, clock, EVERY)
        async with _running([first]):
            clock.set(T0 + 1)
            await _until(lambda: _has_key(board, EVERY.key(T0 + 1)))
        # Nobody ran for 500 s; a new conductor posts the latest missed tick only.
        clock.set(T0 + 501.5)
        second = _conductor(board, clock, EVERY)
        async with _running([second]):
            await _until(lambda: _has_key(board, EVERY.key(T0 + 501)))
        assert await _scheduled(board) == sorted([EVERY.key(T0 + 1), EVERY.key(T0 + 501)])


async def test_after_a_gap_catch_up_posts_each_missed_tick_bounded(
    backend: BoardBackend,
) -> None:
    catching = Schedule("beat", flow="tick", every=1, args={"label": "c"}, catch_up=True)
    async with backend.open(poll_interval=0.05) as board:
        clock = FakeClock(T0 + 0.5)
        async with _running([_conductor(board, clock, catching)]):
            clock.set(T0 + 1)
            await _until(lambda: _has_key(board, catching.key(T0 + 1)))
        clock.set(T0 + 501.5)
        async with _running([_conductor(board, clock, catching)]):
            await _until(lambda: _has_key(board, catching.key(T0 + 501)))
        keys = await _scheduled(board)
    missed = [catching.key(T0 + t) for t in range(501 - MAX_CATCH_UP + 1, 502)]
    assert keys == sorted([catching.key(T0 + 1), *missed])


async def test_a_purged_tick_is_not_posted_again(backend: BoardBackend) -> None:
    async with backend.open(poll_interval=0.05) as board:
        clock = FakeClock(T0 + 0.5)
        async with _running([_conductor(board, clock, EVERY)]):
            clock.set(T0 + 1)
            await _until(lambda: _ran(1))
            await _until(lambda: _finished(board, EVERY.key(T0 + 1)))
        assert await board.purge(older_than=0) == 1
        # The same instant again (a conductor whose clock lags): nothing is posted.
        async with _running([_conductor(board, clock, EVERY)]):
            await anyio.sleep(0.3)
        assert await board.job_count() == 0
        assert await board.schedule_ticks() == {"beat": T0 + 1}


async def _finished(board: JobBoard, key: str) -> bool:
    return (await board.get_by_key(key)).state.is_final


async def test_conductors_publish_their_schedules_with_the_next_tick(
    backend: BoardBackend,
) -> None:
    nightly = Schedule("nightly", flow="tick", cron="0 2 * * *", args={"label": "n"})
    async with backend.open(poll_interval=0.05) as board:
        clock = FakeClock(T0 + 0.5)
        async with _running([_conductor(board, clock, EVERY, nightly)]):
            await _until(lambda: _published(board))


async def _published(board: JobBoard) -> bool:
    for info in await board.conductors():
        published = {s["name"]: s for s in info.meta.get("schedules", [])}
        if published:
            assert published["beat"]["every"] == 1
            assert published["beat"]["next_tick"] == T0 + 1
            assert published["nightly"]["cron"] == "0 2 * * *"
            assert published["nightly"]["next_tick"] == T0 + 2 * 3600
            return True
    return False


class _Args(pydantic.BaseModel):
    label: str


@pytest.mark.parametrize(
    "schedules",
    [
        [Schedule("s", flow="nope", every=1)],
        [Schedule("s", flow="typed", every=1, args={"label": 5})],
        [Schedule("s", flow="typed", every=1)],
        [EVERY, EVERY],
        [EVERY, "nightly"],
    ],
)
def test_a_schedule_of_an_unknown_flow_or_bad_args_is_refused_at_once(
    schedules: list[Any],
) -> None:
    flows = _flows()
    flows.register("typed", lambda **args: None, args=_Args)
    with pytest.raises(ConfigurationError):
        Conductor("c", MemoryJobBoard(), flows=flows, schedules=schedules)
