"""A fleet-wide concurrency limit holds across conductor processes on every backend that
outlives a process: four conductors, 500 jobs on one key with limit 3 and 500 without; the
peak of concurrent runs of the key is exactly 3 (reached, never passed), the other jobs flow
meanwhile, nothing is lost or run twice at once, and a SIGKILLed holder's slots come back
after its lease."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from aioconductor import JobState, open_board

from . import gauge
from .backends import Space, params
from .test_conductor_processes import REPO, conductor_command

LIMITED, FREE, LIMIT, PROCESSES = 500, 500, 3, 4
LEASE = 2.0
#: Where a board keeps no flow progress, each process has a memory store (the flow needs none).
_STORES = {"kafka": "memory://"}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("space", params(processes=True), indirect=True)
async def test_a_limit_is_exact_across_conductor_processes(space: Space, tmp_path: Path) -> None:
    board_url = space.board_url("limits")
    meter = str(tmp_path / "gauge.json")
    async with open_board(board_url, poll_interval=0.2) as board:
        await board.set_limit("payments", LIMIT)
        limited = await board.post_many(
            "gauged",
            [{"key": f"pay-{n}", "gauge": meter, "hold": 0.02} for n in range(LIMITED)],
            limit_key="payments",
        )
        free = await board.post_many(
            "tally", [{"key": n, "record": str(tmp_path / "free.txt")} for n in range(FREE)]
        )
        processes = [
            await anyio.open_process(
                conductor_command(
                    board_url,
                    *("--concurrency", "16", "--lease", str(LEASE), "--name", f"proc-{n}"),
                    store=_STORES.get(space.backend),
                ),
                cwd=REPO,
                stderr=subprocess.DEVNULL,
            )
            for n in range(PROCESSES)
        ]
        try:
            with anyio.fail_after(240):
                victim = await _kill_a_holder(meter, {p.pid for p in processes})
                # Its claims run out after the lease; the others then take its jobs.
                while await board.job_count(state=JobState.COMPLETE) < LIMITED + FREE:
                    await anyio.sleep(0.2)
        finally:
            for process in processes:
                if process.pid != victim:
                    process.terminate()
            for process in processes:
                with anyio.fail_after(30):
                    await process.wait()
        ended = {job.id: job async for job in board.iterjobs()}
    state = gauge.read(meter)
    assert state["peak"] == LIMIT  # reached, never passed
    assert state["overlaps"] == []  # no job ran twice at once
    assert sorted(state["runs"]) == sorted(f"pay-{n}" for n in range(LIMITED))
    assert all(ended[job.id].state is JobState.COMPLETE for job in [*limited, *free])
    finished_free = sorted(ended[job.id].updated_at for job in free)
    finished_limited = sorted(ended[job.id].updated_at for job in limited)
    # The free jobs were not held up behind the limited ones (posted before them): most
    # finished while limited jobs still waited for a slot.
    assert finished_free[FREE * 9 // 10] < finished_limited[-1]


async def _kill_a_holder(meter: str, pids: set[int]) -> int:
    """SIGKILL a conductor process while it runs a limited job (under the gauge's lock, so the
    gauge never counts a dead process's runs), once the limit was reached; its pid."""
    while True:
        with gauge.locked(meter) as state:
            holders = set(state["active"].values()) & pids
            if state["peak"] == LIMIT and holders:
                victim = min(holders)
                os.kill(victim, signal.SIGKILL)
                _until_dead(victim)
                state["active"] = {k: p for k, p in state["active"].items() if p != victim}
                return victim
        await anyio.sleep(0.05)


def _until_dead(pid: int) -> None:
    """Block until ``pid`` is a zombie or gone (anyio reaps it later)."""
    stat = Path(f"/proc/{pid}/stat")
    for _ in range(500):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return
        except FileNotFoundError:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not die within 5 s of SIGKILL")
