"""A conductor whose board fails or stalls at the worst moment: no job runs twice at once, and
one job's failed ending does not end the conductor."""

from __future__ import annotations

import collections
from typing import Any

import anyio
import pytest

from aioconductor import Conductor, FlowRegistry, JobState, linear, task
from aioconductor.boards.memory import MemoryJobBoard
from aioconductor.errors import BackendUnavailable

#: Runs of each job under way now, and the most at once.
RUNNING: collections.Counter[str] = collections.Counter()
PEAK: collections.Counter[str] = collections.Counter()


def _flows() -> FlowRegistry:
    flows = FlowRegistry()

    @task
    async def hold(key: str) -> None:
        RUNNING[key] += 1
        PEAK[key] = max(PEAK[key], RUNNING[key])
        try:
            await anyio.sleep(3600)
        finally:
            RUNNING[key] -= 1

    flows.register("hold", lambda **args: linear("hold", hold))
    return flows


class StallingClaims(MemoryJobBoard):
    """Claim calls by ``stalling`` take 3 s (a slow server: the conductor shields them)."""

    stalling: str | None = None

    async def claim_batch(self, owner: str, *args: Any, **kwargs: Any) -> Any:
        if owner == self.stalling:
            await anyio.sleep(3)
        return await super().claim_batch(owner, *args, **kwargs)


async def test_a_conductor_cancelled_in_a_claim_call_stops_its_jobs_at_once() -> None:
    # Once the conductor is cancelled its leases are no longer renewed: its jobs must stop at
    # once, not when its claim call returns, or the next owner runs them beside it.
    RUNNING.clear()
    PEAK.clear()
    async with StallingClaims(poll_interval=0.05) as board:
        await board.post("a", "hold", {"key": "a"})
        first = Conductor("first", board, flows=_flows(), lease=1.5)
        second = Conductor("second", board, flows=_flows(), lease=1.5, sweep_interval=0.1)
        with anyio.fail_after(20):
            async with anyio.create_task_group() as outer:
                async with anyio.create_task_group() as owner:
                    owner.start_soon(first.run)
                    while not RUNNING["a"]:
                        await anyio.sleep(0.01)
                    board.stalling = first.owner
                    await board.post("b", "hold", {"key": "b"})  # first goes into a claim
                    await anyio.sleep(0.2)
                    outer.start_soon(second.run)
                    owner.cancel_scope.cancel()
                # The first gives the job back as it stops; the second takes it over.
                while not RUNNING["a"]:
                    await anyio.sleep(0.05)
                await anyio.sleep(0.5)
                second.stop(drain=False)
    assert PEAK["a"] == 1, "the job ran twice at once"


class FailingTrash(MemoryJobBoard):
    """The board is down whenever a job is trashed."""

    async def trash(self, claim: Any, *args: Any, **kwargs: Any) -> Any:
        raise BackendUnavailable("the board is down")


async def test_a_job_whose_trash_fails_is_left_to_its_lease_and_the_rest_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    RUNNING.clear()
    async with FailingTrash(poll_interval=0.05) as board:
        spent = await board.post("spent", "hold", {"key": "spent"}, max_attempts=1)
        await board.claim(spent.id, "gone", lease=0.1)  # its one attempt: the next claim trashes
        await anyio.sleep(0.2)
        for n in range(3):
            await board.post(f"g{n}", "hold", {"key": f"g{n}"})
        conductor = Conductor("c", board, flows=_flows(), lease=30.0)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                while sum(RUNNING.values()) < 3:
                    await anyio.sleep(0.01)
                assert conductor.is_running
                conductor.stop(drain=False)
        assert (await board.get(spent.id)).state is JobState.CLAIMED  # until its lease ends
    assert "ending it failed" in caplog.text
