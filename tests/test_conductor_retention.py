"""A conductor's retention: finished jobs past their age are purged, with their logbooks, by
one conductor of the fleet at a time; ``retention=None`` keeps everything."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aioconductor import Conductor, FlowRegistry, JobState, Retention, linear, task
from aioconductor.boards import JobBoard, open_board
from aioconductor.boards.memory import MemoryJobBoard
from aioconductor.conductor.retention import DAY
from aioconductor.errors import ConfigurationError, JobNotFound, LogBookNotFound
from aioconductor.events import Event
from aioconductor.persistence.memory import MemoryStore
from tests.boards.conftest import BoardBackend, backend

__all__ = ["backend"]  # the fixture: every board backend in turn


def _flows() -> FlowRegistry:
    flows = FlowRegistry()

    @task(provides="done")
    async def ok() -> bool:
        return True

    @flows.register("ok")
    def ok_flow(**args: Any) -> Any:
        return linear("ok", ok)

    return flows


async def _wait_until(check: Any, within: float = 60.0) -> None:
    with anyio.fail_after(within):
        while not await check():
            await anyio.sleep(0.05)


def test_the_default_keeps_complete_jobs_a_week_and_trashed_ones_a_month() -> None:
    retention = Retention()
    assert (retention.complete, retention.trashed) == (7 * DAY, 30 * DAY)
    assert retention.every == 300.0
    assert Retention(complete=1.0).every == pytest.approx(0.1)
    assert Retention(complete=None, trashed=None).every is None
    assert Conductor("c", MemoryJobBoard(), flows=FlowRegistry()).retention == Retention()


@pytest.mark.parametrize(
    "bad",
    [
        {"complete": -1.0},
        {"trashed": float("inf")},
        {"complete": "7d"},
        {"interval": 0},
        {"batch": 0},
        {"batch": 10_001},
    ],
)
def test_a_bad_retention_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Retention(**bad)


def test_a_retention_that_is_not_one_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        Conductor("c", MemoryJobBoard(), flows=FlowRegistry(), retention=7.0)  # type: ignore[arg-type]


async def test_a_conductor_purges_finished_jobs_past_their_age_with_their_logbooks(
    backend: BoardBackend,
) -> None:
    async with backend.open(poll_interval=0.05) as board, MemoryStore() as store:
        retention = Retention(complete=0.5, trashed=None, interval=0.1)
        conductor = Conductor("c", board, store=store, flows=_flows(), retention=retention)
        purged_events: list[dict[str, Any]] = []

        async def on_purged(event: str, details: dict[str, Any]) -> None:
            purged_events.append(dict(details))

        conductor.notifier.register(Event.JOBS_PURGED, on_purged)
        jobs = await board.post_many("ok", [{} for _ in range(5)], keys=[f"k{n}" for n in range(5)])
        trashed = await board.post("t", "ok")
        await board.trash(trashed.id, reason="not wanted")
        live = await board.post("later", "ok", delay=3600)

        async def purged() -> bool:
            # Both: the board can show a purge before the purger is back from it to count it.
            return conductor.stats.purged == 5 and await board.job_count() == 2

        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            await _wait_until(purged)
            conductor.stop()
        for job in jobs:
            with pytest.raises(JobNotFound):
                await board.get(job.id)
            with pytest.raises(LogBookNotFound):
                await store.get_logbook(job.id)
        # A key of a purged job is free again; the trashed job (kept for ever) and the
        # scheduled one are still there.
        _, created = await board.get_or_post("again", "ok", key="k0")
        assert created
        assert (await board.get(trashed.id)).state is JobState.TRASHED
        assert (await board.get(live.id)).state is JobState.SCHEDULED
    assert conductor.stats.purged == 5
    assert sum(event["complete"] for event in purged_events) == 5
    assert all("trashed" not in event for event in purged_events)


async def test_retention_none_keeps_every_finished_job() -> None:
    async with MemoryJobBoard(poll_interval=0.05) as board:
        conductor = Conductor("c", board, flows=_flows(), retention=None)
        job = await board.post("j", "ok")
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            done = await board.wait_for(job.id)
            await anyio.sleep(0.5)
            conductor.stop()
        assert (await board.get(done.id)).state is JobState.COMPLETE
    assert conductor.stats.purged == 0


async def test_one_conductor_of_a_fleet_purges() -> None:
    url = "memory://retention_fleet?namespace=fleet"
    boards = [open_board(url, poll_interval=0.05) for _ in range(3)]
    retention = Retention(complete=0.0, interval=0.05)
    conductors = [
        Conductor(f"c{n}", board, flows=_flows(), retention=retention, lease=3.0)
        for n, board in enumerate(boards)
    ]
    async with boards[0], boards[1], boards[2]:
        async with anyio.create_task_group() as tg:
            for conductor in conductors:
                tg.start_soon(conductor.run)
            # Let every conductor register before the jobs come, so all of them see the fleet.
            await _wait_until(lambda: _registered(boards[0], 3))
            await boards[0].post_many("ok", [{} for _ in range(40)])
            await _wait_until(lambda: _empty(boards[0]))
            for conductor in conductors:
                conductor.stop()
    purgers = [c for c in conductors if c.stats.purged]
    assert len(purgers) == 1 and purgers[0].stats.purged == 40
    assert purgers[0].owner == min(c.owner for c in conductors)


async def _registered(board: JobBoard, count: int) -> bool:
    return len(await board.conductors()) >= count


async def _empty(board: JobBoard) -> bool:
    return bool(await board.job_count() == 0)
