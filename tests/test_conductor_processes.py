"""Conductors in real processes on every backend that outlives a process (``tests/backends.py``):
killed mid-flow, restarted gracefully under a long job, and many sharing one board (on each
server), each job run exactly once; killed by poison jobs (SQLite)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from aioconductor import Conductor, JobState, open_board, open_store

from .apps import flows
from .backends import Space, params

REPO = Path(__file__).resolve().parent.parent


def conductor_command(url: str, *extra: str, store: str | None = None) -> list[str]:
    """``aioconductor run`` on board ``url`` with the store at ``store`` (default: ``url``)."""
    return [
        sys.executable, "-m", "aioconductor", "run", "--board", url, "--store", store or url,
        "--app", "tests.apps:flows", *extra,
    ]  # fmt: skip


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def wait_for_line(path: Path, line: str, within: float = 20) -> None:
    with anyio.fail_after(within):
        while line not in lines(path):
            await anyio.sleep(0.02)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("space", params(processes=True), indirect=True)
async def test_a_killed_conductor_is_taken_over_and_its_flow_resumed(
    tmp_path: Path, space: Space
) -> None:
    url, store_url = space.board_url("procs"), space.store_url("procs")
    record, release = tmp_path / "record.txt", tmp_path / "release"
    async with open_board(url, poll_interval=0.05) as board, open_store(store_url) as store:
        job = await board.post(
            "j", "held", {"key": 1, "record": str(record), "release": str(release)}
        )
        process = await anyio.open_process(
            conductor_command(url, "--lease", "1", store=store_url),
            cwd=REPO,
            stderr=subprocess.DEVNULL,
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
        with anyio.fail_after(30):
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
        # A conductor killed by the poison job also loses the good jobs it was running at that
        # moment, which spends one of their attempts too: give them room for that.
        good = [await board.post(f"g{n}", "noop", {"key": n}, max_attempts=10) for n in range(10)]
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
                late = await board.post(f"late{deaths}", "noop", {"key": deaths}, max_attempts=10)
                good.append(late)
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


#: Eight processes, each with a board pool, a store pool and a listener, must stay within the
#: PostgreSQL server's max_connections (100 by default).
_OPTIONS: dict[str, dict[str, object]] = {"postgres": {"pool_max": "4"}}
#: Where a board keeps no flow progress, each process has a memory store (the flow needs none).
_STORES = {"kafka": "memory://"}
#: Every Kafka process folds the whole state log: four of them are enough on a small machine.
_PROCESSES = {"kafka": 4}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("space", params(processes=True, server=True), indirect=True)
async def test_conductor_processes_share_a_board_and_run_each_job_exactly_once(
    space: Space, tmp_path: Path
) -> None:
    board_url = space.board_url("procs", **_OPTIONS.get(space.backend, {}))
    store_url = _STORES.get(space.backend)
    count = _PROCESSES.get(space.backend, 8)
    record = tmp_path / "record.txt"
    jobs = 5000
    async with open_board(board_url) as board:
        for first in range(0, jobs, 500):
            batch = range(first, min(jobs, first + 500))
            await board.post_many("tally", [{"key": k, "record": str(record)} for k in batch])
        processes = [
            await anyio.open_process(
                conductor_command(
                    board_url, "--concurrency", "16", "--name", f"proc-{n}", store=store_url
                ),
                cwd=REPO,
                stderr=subprocess.DEVNULL,
            )
            for n in range(count)
        ]
        try:
            with anyio.fail_after(240):
                while await board.job_count(state=JobState.COMPLETE) < jobs:
                    await anyio.sleep(0.2)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                with anyio.fail_after(30):
                    await process.wait()
        finished = [job async for job in board.iterjobs()]
    assert [p.returncode for p in processes] == [0] * count  # SIGTERM drains, then exits 0
    assert len(finished) == jobs
    assert all(job.state is JobState.COMPLETE and job.attempts == 1 for job in finished)
    executions = lines(record)
    keys = [int(line.split()[0]) for line in executions]
    assert sorted(keys) == list(range(jobs))  # each job's task ran exactly once
    assert len({line.split()[1] for line in executions}) >= 2  # the work was shared


@pytest.mark.timeout(240)
@pytest.mark.parametrize("space", params(processes=True), indirect=True)
async def test_graceful_restarts_under_a_long_job_spend_no_attempt(
    tmp_path: Path, space: Space
) -> None:
    # A rolling deploy: SIGTERM, a drain that times out, the claim given back; ten times over.
    options = _OPTIONS.get(space.backend, {})
    url, store_url = space.board_url("procs", **options), space.store_url("procs", **options)
    record, release = tmp_path / "record.txt", tmp_path / "release"
    restarts = 10
    async with open_board(url, poll_interval=0.05) as board:
        job = await board.post(
            "deploy-proof",
            "held",
            {"key": 1, "record": str(record), "release": str(release)},
            max_attempts=restarts,
        )
        command = conductor_command(url, "--drain-timeout", "0.1", "--lease", "5", store=store_url)
        for restart in range(1, restarts + 2):
            if restart > restarts:
                release.touch()  # the last run may finish
            process = await anyio.open_process(command, cwd=REPO, stderr=subprocess.DEVNULL)
            try:
                if restart > restarts:
                    done = await board.wait_for(job.id, timeout=60)
                else:
                    await wait_for_count(record, "hold-start 1", restart)
                    seen = await board.get(job.id)
                    assert seen.state is JobState.CLAIMED and seen.attempts == 1
            finally:
                process.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    await process.wait()
            assert process.returncode == 0
            if restart <= restarts:
                given_back = await board.get(job.id)
                assert given_back.state is JobState.UNCLAIMED
                assert (given_back.attempts, given_back.releases) == (0, restart)
    assert done.state is JobState.COMPLETE and done.attempts == 1
    assert done.result == {"first": "first:1", "held": 1, "third": "third:1"}
    # "first" ran once: every later run resumed after it.
    assert lines(record) == ["first 1", *["hold-start 1"] * (restarts + 1), "hold-end 1", "third 1"]


async def wait_for_count(path: Path, line: str, count: int, within: float = 30) -> None:
    with anyio.fail_after(within):
        while lines(path).count(line) < count:
            await anyio.sleep(0.02)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("space", params(processes=True), indirect=True)
async def test_a_job_that_always_outlasts_the_drain_is_trashed_after_the_give_back_cap(
    tmp_path: Path, space: Space
) -> None:
    # Every SIGTERM finds the job still running past its drain: two give-backs (its cap,
    # max_attempts=2), then two releases that spend an attempt, then a claim past the cap.
    options = _OPTIONS.get(space.backend, {})
    url, store_url = space.board_url("procs", **options), space.store_url("procs", **options)
    record, never = tmp_path / "record.txt", tmp_path / "never"
    async with open_board(url, poll_interval=0.05) as board:
        job = await board.post(
            "blocks-shutdown",
            "held",
            {"key": 1, "record": str(record), "release": str(never)},
            max_attempts=2,
        )
        command = conductor_command(url, "--drain-timeout", "0.1", "--lease", "5", store=store_url)
        for restart in range(1, 6):
            process = await anyio.open_process(command, cwd=REPO, stderr=subprocess.DEVNULL)
            try:
                if restart == 5:
                    done = await board.wait_for(job.id, timeout=60)
                else:
                    await wait_for_count(record, "hold-start 1", restart)
            finally:
                process.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    await process.wait()
            assert process.returncode == 0
            if restart < 5:
                spent = max(0, restart - 2)
                got = await board.get(job.id)
                assert got.state is JobState.UNCLAIMED
                assert (got.attempts, got.releases, got.abandons) == (spent, min(restart, 2), spent)
    assert done.state is JobState.TRASHED and done.attempts == 3
    assert "2 abandoned" in (done.trash_reason or "")
    assert "2 claims given back on shutdown were not counted" in (done.trash_reason or "")
    assert lines(record) == ["first 1", *["hold-start 1"] * 4]
