"""Conductors in real processes on a SQLite board: killed mid-flow, and killed by poison jobs."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from aioconductor import Conductor, JobState, open_board, open_store

from .apps import flows

REPO = Path(__file__).resolve().parent.parent


def conductor_command(url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "aioconductor", "run", "--board", url, "--store", url,
        "--app", "tests.apps:flows", *extra,
    ]  # fmt: skip


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def wait_for_line(path: Path, line: str, within: float = 20) -> None:
    with anyio.fail_after(within):
        while line not in lines(path):
            await anyio.sleep(0.02)


async def test_a_killed_conductor_is_taken_over_and_its_flow_resumed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    record, release = tmp_path / "record.txt", tmp_path / "release"
    async with open_board(url, poll_interval=0.05) as board, open_store(url) as store:
        job = await board.post(
            "j", "held", {"key": 1, "record": str(record), "release": str(release)}
        )
        process = await anyio.open_process(
            conductor_command(url, "--lease", "1"), cwd=REPO, stderr=subprocess.DEVNULL
        )
        try:
            await wait_for_line(record, "hold-start 1")
        finally:
            process.send_signal(signal.SIGKILL)
            await process.wait()
        victim = await board.get(job.id)
        assert victim.state is JobState.CLAIMED and victim.attempts == 1
        release.touch()
        heir = Conductor("heir", board, store=store, flows=flows, lease=5)
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(heir.run)
                done = await board.wait_for(job.id)
                heir.stop()
    assert done.state is JobState.COMPLETE and done.attempts == 2
    assert done.claim is not None and done.claim.owner == heir.owner
    assert done.result == {"first": "first:1", "held": 1, "third": "third:1"}
    # "first" finished in the killed process and was not run again; "hold" was running there
    # and ran again; "third" ran once.
    assert lines(record) == ["first 1", "hold-start 1", "hold-start 1", "hold-end 1", "third 1"]


@pytest.mark.timeout(120)
async def test_a_poison_job_runs_max_attempts_times_then_is_trashed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    record = tmp_path / "record.txt"
    async with open_board(url, poll_interval=0.05) as board:
        poison = await board.post(
            "poison", "poison", {"key": 1, "record": str(record)}, priority=-1, max_attempts=3
        )
        good = [await board.post(f"g{n}", "noop", {"key": n}) for n in range(10)]
        deaths = 0
        with anyio.fail_after(90):
            while (await board.get(poison.id)).state is not JobState.TRASHED:
                assert deaths <= 5, "the poison job is cycling"
                process = await anyio.open_process(
                    conductor_command(url, "--lease", "0.5", "--concurrency", "4"),
                    cwd=REPO,
                    stderr=subprocess.DEVNULL,
                )
                # Keep good jobs flowing while the poison job kills conductors.
                good.append(await board.post(f"late{deaths}", "noop", {"key": deaths}))
                with anyio.move_on_after(15):
                    await process.wait()
                if process.returncode is None:
                    process.terminate()
                    await process.wait()
                else:
                    assert process.returncode == 17
                    deaths += 1
            # Every good job finishes too.
            process = await anyio.open_process(
                conductor_command(url, "--lease", "0.5"), cwd=REPO, stderr=subprocess.DEVNULL
            )
            try:
                done = [await board.wait_for(job.id) for job in good]
            finally:
                process.terminate()
                await process.wait()
        trashed = await board.get(poison.id)
    assert lines(record) == ["die 1"] * 3
    assert deaths == 3
    assert trashed.attempts == 4 and "max_attempts=3" in (trashed.trash_reason or "")
    assert all(job.state is JobState.COMPLETE for job in done)
