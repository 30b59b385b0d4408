"""Chaos scenarios on every backend, checked by the history checker.

Bounded by default (a few hundred jobs, two or three processes, a handful of faults);
``AIOCONDUCTOR_CHAOS_SCALE=full`` (``nox -s chaos``) runs the issue's numbers.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioconductor import JobState, open_board

from .backends import BY_NAME, backend_params, open_target, scale
from .cluster import (
    Cluster,
    board_final,
    conductors_in_process,
    finished,
    history_folder,
    post_jobs,
    report,
    wait_finished,
)
from .history import load

pytestmark = [pytest.mark.chaos]

LEASE = 1.0
SWEEP = 0.5


def effects_per_task(folder: Path) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for event in load(folder):
        if event["ev"] == "effect":
            key = (event["job"], event["task"])
            counts[key] = counts.get(key, 0) + 1
    return counts


# -- race: many conductors, one winner per job --------------------------------------------------


@pytest.mark.timeout(scale(120, 900))
@pytest.mark.parametrize("backend", backend_params())
async def test_race_each_job_consumed_exactly_once(backend: str, tmp_path: Path) -> None:
    jobs, procs = scale(300, 5000), scale(3, 8)
    folder = history_folder(tmp_path)
    async with open_target(backend, tmp_path) as target:
        async with open_board(target.board_url) as board:
            await post_jobs(board, jobs, prefix="race")
            # A long lease: no fault here, so every job must be claimed exactly once.
            if not BY_NAME[backend].processes:
                async with conductors_in_process(target, folder, procs, lease=30) as _:
                    await wait_finished(board, jobs, scale(60, 600))
                codes: list[int | None] = [0]
            else:
                cluster = Cluster(target, folder, concurrency=4, lease=30, sweep=SWEEP)
                try:
                    for n in range(procs):
                        cluster.start(f"p{n}")
                    await wait_finished(board, jobs, scale(75, 800), cluster)
                    codes = cluster.stop_all()
                finally:
                    cluster.kill_all()
            final = await board_final(board)
    result = report("race", backend, folder, final)
    assert not result.violations, result.violations
    assert codes == [0] * len(codes)  # SIGTERM drains, then exits 0
    assert result.figures["consumed"] == jobs and result.figures["lost"] == 0
    assert all(job.attempts == 1 for job in final.values())
    effects = effects_per_task(folder)
    assert len(effects) == 3 * jobs and set(effects.values()) == {1}
    claimers = {e["owner"] for e in load(folder) if e["ev"] == "claimed"}
    assert len(claimers) >= 2, "the work was not shared: no race happened"


# -- SIGKILL: conductors killed at random, restarted after a pause ------------------------------


@pytest.mark.timeout(scale(120, 900))
@pytest.mark.parametrize("backend", backend_params(processes=True))
async def test_sigkilled_conductors_lose_nothing_and_rerun_no_finished_task(
    backend: str, tmp_path: Path
) -> None:
    jobs, procs, kills = scale(300, 5000), scale(3, 8), scale(5, 20)
    folder = history_folder(tmp_path)
    rng = random.Random(9)
    done_kills = 0
    async with open_target(backend, tmp_path) as target:
        async with open_board(target.board_url) as board:
            # Every kill spends an attempt of each job its victim held: allow for many. A tenth
            # of the jobs fail their first run and are retried by their flow's policy.
            await post_jobs(board, jobs, prefix="kill", args={"work": 0.05}, max_attempts=20)
            markers = tmp_path / "markers"
            markers.mkdir()
            retried = await post_jobs(
                board, jobs // 10, prefix="retry", flow="flaky3", args={"markers": str(markers)},
                max_attempts=20,
            )  # fmt: skip
            jobs += len(retried)
            cluster = Cluster(target, folder, concurrency=4, lease=LEASE, sweep=SWEEP)
            try:
                names = [f"p{n}" for n in range(procs)]
                for name in names:
                    cluster.start(name)
                for name in names:
                    await cluster.started(name)
                with anyio.fail_after(scale(80, 800)):
                    while done_kills < kills and await finished(board) < jobs:
                        await anyio.sleep(rng.uniform(0.2, 0.6))
                        victim = rng.choice(names)
                        if cluster.owner(victim) is None:
                            continue  # still starting: nothing to kill yet
                        cluster.signal(victim, signal.SIGKILL, "kill")
                        done_kills += 1
                        await anyio.sleep(0.3)
                        cluster.start(victim)
                    await wait_finished(board, jobs, scale(60, 600), cluster)
                cluster.stop_all()
            finally:
                cluster.kill_all()
            final = await board_final(board)
    result = report("sigkill", backend, folder, final)
    assert not result.violations, result.violations
    assert done_kills == kills, f"only {done_kills} of {kills} kills happened before the end"
    assert result.figures["lost"] == 0 and result.figures["consumed"] == jobs
    assert result.figures["completed_task_reruns"] == 0
    # A retried job failed its first run and succeeded later (a kill between the marker and the
    # failure makes a first run that did not fail: then no retry).
    assert all(final[job_id].outcome == "SUCCESS" for job_id in retried)
    assert {final[job_id].retries for job_id in retried} <= {0, 1}
    assert sum(final[job_id].retries for job_id in retried) >= len(retried) // 2
    assert result.reclaim_latencies, "no kill left a job to re-claim: the test proved nothing"
    assert result.figures["reclaim_p99_s"] <= LEASE + SWEEP + 1.0, result.figures


# -- zombie: a conductor stopped for three leases, then continued -------------------------------


@pytest.mark.timeout(scale(120, 600))
@pytest.mark.parametrize("backend", backend_params(processes=True))
async def test_a_zombie_conductor_is_fenced_out(backend: str, tmp_path: Path) -> None:
    jobs, procs = scale(120, 1000), scale(3, 6)
    folder = history_folder(tmp_path)
    async with open_target(backend, tmp_path) as target:
        async with open_board(target.board_url) as board:
            await post_jobs(board, jobs, prefix="zombie", args={"work": 0.1}, max_attempts=10)
            cluster = Cluster(target, folder, concurrency=4, lease=LEASE, sweep=SWEEP)
            try:
                names = [f"p{n}" for n in range(procs)]
                for name in names:
                    cluster.start(name)
                zombie = await cluster.started("p0")
                with anyio.fail_after(30):
                    while sum(1 for _ in _claims_by(folder, zombie)) < 4:
                        await anyio.sleep(0.05)
                cluster.signal("p0", signal.SIGSTOP, "stop")
                await anyio.sleep(3 * LEASE)
                cluster.signal("p0", signal.SIGCONT, "cont")
                await wait_finished(board, jobs, scale(60, 600), cluster)
                cluster.stop_all()
            finally:
                cluster.kill_all()
            final = await board_final(board)
    result = report("zombie", backend, folder, final)
    assert not result.violations, result.violations
    assert result.figures["stale_accepted"] == 0 and result.figures["consumed_twice"] == 0
    assert result.figures["lost"] == 0
    # The zombie's jobs were taken over, and the zombie learned it had lost them.
    assert result.reclaim_latencies, "the zombie held no job when stopped"
    # On waking, the zombie either tried to write (and was refused: fencing) or its lease
    # keeper saw the leases were past and stopped its engines first; either way it knew.
    events = load(folder)
    refused = [e for e in events if e.get("owner") == zombie and e["ev"] == "refused"]
    stopped = [e for e in events if e["ev"] == "lease_lost" and e.get("owner") == zombie]
    assert refused or stopped, "the zombie neither wrote nor stopped after waking"


def _claims_by(folder: Path, owner: str) -> list[dict[str, Any]]:
    return [e for e in load(folder) if e["ev"] == "claimed" and e.get("owner") == owner]


# -- hung and blocking tasks ----------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", backend_params())
async def test_a_task_past_its_timeout_is_reverted_and_counted(
    backend: str, tmp_path: Path
) -> None:
    hung, good = scale(5, 50), scale(20, 200)
    folder = history_folder(tmp_path)
    async with open_target(backend, tmp_path) as target:
        async with open_board(target.board_url) as board:
            hung_ids = await post_jobs(
                board, hung, prefix="hung", flow="hung", args={"timeout": 0.2}
            )
            await post_jobs(board, good, prefix="good")
            async with conductors_in_process(target, folder, 1, concurrency=8, lease=5) as _:
                await wait_finished(board, hung + good, 60)
            final = await board_final(board)
    result = report("hung", backend, folder, final)
    assert not result.violations, result.violations
    assert result.figures["reverted"] == hung
    events = load(folder)
    for job_id in hung_ids:
        job = final[job_id]
        assert job.state is JobState.COMPLETE and str(job.outcome) == "REVERTED"
        assert "ran past its timeout" in str(job.result)
        states = [
            (e["atom"], e["state"]) for e in events if e["ev"] == "atom" and e["job"] == job_id
        ]
        assert ("a", "REVERTED") in states  # the finished task before it was reverted


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", backend_params(processes=True))
async def test_a_task_blocking_the_loop_past_its_lease_is_fenced_out(
    backend: str, tmp_path: Path
) -> None:
    folder = history_folder(tmp_path)
    marker = tmp_path / "blocked-once"
    async with open_target(backend, tmp_path) as target:
        async with open_board(target.board_url) as board:
            (blocker,) = await post_jobs(
                board,
                1,
                prefix="blocker",
                flow="blocker",
                args={"marker": str(marker), "block": 3 * LEASE},
                priority=1,
                max_attempts=5,
            )
            await post_jobs(board, 20, prefix="good", args={"work": 0.05})
            cluster = Cluster(target, folder, concurrency=2, lease=LEASE, sweep=SWEEP)
            try:
                for name in ("p0", "p1"):
                    cluster.start(name)
                await wait_finished(board, 21, 60, cluster)
                cluster.stop_all()
            finally:
                cluster.kill_all()
            final = await board_final(board)
    result = report("blocking", backend, folder, final)
    assert not result.violations, result.violations
    events = [e for e in load(folder) if e.get("job") == blocker]
    first = next(e for e in events if e["ev"] == "claimed")
    blocked_owner = first["owner"]
    done = final[blocker]
    assert done.state is JobState.COMPLETE and done.claim is not None
    # The heir completed it; the owner that blocked its loop was fenced out when it woke.
    assert done.claim.owner != blocked_owner and done.claim.token > first["token"]
    mine = {e["ev"] for e in events if e["owner"] == blocked_owner}
    assert "consumed" not in mine
    assert {"refused", "lease_lost"} & mine, sorted(mine)


# -- poison: jobs that kill their process every time ---------------------------------------------


@pytest.mark.timeout(scale(120, 900))
@pytest.mark.parametrize("backend", backend_params(processes=True))
async def test_poison_jobs_run_max_attempts_times_and_are_trashed(
    backend: str, tmp_path: Path
) -> None:
    poison, good, procs = scale(3, 10), scale(100, 1000), scale(2, 8)
    folder = history_folder(tmp_path)
    deaths = 0
    async with open_target(backend, tmp_path) as target:
        async with open_board(target.board_url) as board:
            poison_ids: list[str] = []
            per = good // poison
            for n in range(poison):
                await post_jobs(board, per, prefix=f"good{n}_")
                poison_ids += await post_jobs(
                    board, 1, prefix=f"poison{n}_", flow="poison", max_attempts=3
                )
            total = per * poison + poison
            # One job at a time per process: a poison job kills nothing but itself.
            cluster = Cluster(target, folder, concurrency=1, lease=LEASE, sweep=SWEEP)
            try:
                names = [f"p{n}" for n in range(procs)]
                for name in names:
                    cluster.start(name)
                with anyio.fail_after(scale(90, 800)):
                    while await finished(board) < total:
                        for name, code in cluster.exited().items():
                            assert code == 17, cluster.logs()
                            deaths += 1
                            assert deaths <= 3 * poison, "a poison job is cycling"
                            cluster.start(name)
                        await anyio.sleep(0.1)
                cluster.stop_all()
            finally:
                cluster.kill_all()
            final = await board_final(board)
    result = report("poison", backend, folder, final, poison=poison_ids)
    assert not result.violations, result.violations
    assert deaths == 3 * poison
    assert result.figures["poison_runs"] == [3] * poison
    for job_id in poison_ids:
        job = final[job_id]
        assert job.state is JobState.TRASHED and job.attempts == 4
        assert "max_attempts=3" in (job.trash_reason or "")
    good_jobs = [job for job in final.values() if job.id not in poison_ids]
    assert all(job.state is JobState.COMPLETE for job in good_jobs)
