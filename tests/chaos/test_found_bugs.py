"""Library bugs the chaos runs found, kept as regression tests now that they are fixed.

The first two come from one shape of fault the network scenarios produce: a renewal that
neither succeeds nor fails for a while, because its connection went silent (a partition; the
PostgreSQL pool sets no client-side ``command_timeout``, so a renewal can wait for as long as the
partition lasts). Another showed up as ``lease_lost`` events for jobs their own run consumed;
and the last came from the payload fuzz.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioconductor import Conductor, FlowRegistry, JobState, PayloadError, linear, task
from aioconductor.boards.memory import MemoryJobBoard
from aioconductor.models import Claim
from aioconductor.persistence.memory import MemoryStore

LEASE = 0.4


class SilentRenewBoard(MemoryJobBoard):
    """A board whose renewals never answer, as over a connection that went silent."""

    async def _renew(self, claim: Claim, lease: float) -> Claim:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


def slow_flow(marker: Path) -> FlowRegistry:
    """One task that takes 1.5 s the first time it runs, and no time afterwards."""
    flows = FlowRegistry()

    @flows.register("slow")
    def factory(**args: Any) -> Any:
        @task(provides="done")
        async def work() -> bool:
            first = not marker.exists()
            marker.touch()
            await anyio.sleep(1.5 if first else 0.0)
            return True

        return linear("slow", work)

    return flows


async def test_a_conductor_reclaiming_a_job_it_still_runs_reports_no_internal_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flows = slow_flow(tmp_path / "ran-once")
    board = SilentRenewBoard(backend_name=f"bug-{uuid.uuid4().hex}", poll_interval=0.05)
    store = MemoryStore()
    caplog.set_level(logging.WARNING, logger="aioconductor")
    async with board, store:
        job = await board.post("j", "slow")
        conductor = Conductor(
            "c", board, store=store, flows=flows, lease=LEASE, sweep_interval=0.05
        )
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                await board.wait_for(job.id)
                await anyio.sleep(1.5)  # the first run ends too
                conductor.stop(drain=False)
        done = await board.get(job.id)
    assert done.state is JobState.COMPLETE
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_a_renewal_that_never_answers_stops_the_engine_before_the_lease_expires(
    tmp_path: Path,
) -> None:
    name = f"bug-{uuid.uuid4().hex}"
    spans: dict[str, tuple[float, float]] = {}
    flows = FlowRegistry()

    @flows.register("slow")
    def factory(**args: Any) -> Any:
        @task(provides="done")
        async def work() -> bool:
            return True

        return linear("slow", work)

    class Recording(Conductor):
        def make_engine(self, job: Any, claim: Claim, flow: Any) -> Any:
            engine = super().make_engine(job, claim, flow)
            run = engine.run

            async def timed() -> Any:
                start = anyio.current_time()
                try:
                    await anyio.sleep(1.5)  # the flow's work, for 1.5 s
                    return await run()
                finally:
                    spans[self.name] = (start, anyio.current_time())

            engine.run = timed
            return engine

    silent = SilentRenewBoard(backend_name=name, poll_interval=0.05)
    healthy = MemoryJobBoard(backend_name=name, poll_interval=0.05)
    store = MemoryStore()
    async with silent, healthy, store:
        job = await silent.post("j", "slow")
        a = Recording("a", silent, store=store, flows=flows, lease=LEASE, sweep_interval=0.05)
        b = Recording("b", healthy, store=store, flows=flows, lease=LEASE, sweep_interval=0.05)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(a.run)
                while (await silent.get(job.id)).state is not JobState.CLAIMED:
                    await anyio.sleep(0.01)
                await tg.start(b.run)
                await healthy.wait_for(job.id)
                await anyio.sleep(1.6)
                a.stop(drain=False)
                b.stop(drain=False)
    assert set(spans) == {"a", "b"}, spans
    (a_start, a_end), (b_start, b_end) = spans["a"], spans["b"]
    # a's engine must have been stopped before b could claim the job.
    assert a_end <= b_start or b_end <= a_start, spans


@pytest.mark.parametrize("args", [[], "", 0, False], ids=["list", "str", "zero", "false"])
async def test_falsy_args_that_are_not_an_object_are_refused(args: Any) -> None:
    async with MemoryJobBoard() as board:
        with pytest.raises(PayloadError):
            await board.post("j", "f", args)
        assert await board.job_count() == 0


class SlowRenewBoard(MemoryJobBoard):
    """A board whose renewal of the job named ``slow`` takes 0.8 s (well within its lease)."""

    async def _renew(self, claim: Claim, lease: float) -> Claim:
        if (await self._get(claim.job_id)).name == "slow":
            await anyio.sleep(0.8)
        return await super()._renew(claim, lease)


async def test_a_job_consumed_by_its_run_is_never_reported_as_a_lost_lease() -> None:
    flows = FlowRegistry()

    @flows.register("sleep")
    def factory(**args: Any) -> Any:
        @task(provides="done")
        async def work(seconds: float) -> bool:
            await anyio.sleep(seconds)
            return True

        return linear("sleep", work)

    board = SlowRenewBoard(poll_interval=0.05)
    lost: list[str] = []
    async with board, MemoryStore() as store:
        # Both claimed at once (lease 3 s); the keeper renews them together 1 or 1.5 s later,
        # slow first (0.8 s); quick ends at 1.6 s, while slow's renewal is under way, and is
        # renewed after that.
        slow = await board.post("slow", "sleep", {"seconds": 3.0})
        quick = await board.post("quick", "sleep", {"seconds": 1.6})
        conductor = Conductor("c", board, store=store, flows=flows, lease=3.0)

        def on_lost(event: str, details: Any) -> None:
            lost.append(details["job_name"])

        conductor.notifier.register("lease_lost", on_lost)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                await board.wait_for(slow.id)
                await board.wait_for(quick.id)
                conductor.stop()
    assert conductor.stats.consumed == 2
    assert lost == [] and conductor.stats.lease_lost == 0
