"""Cancels and fleet-wide limits while conductors die, on every backend that outlives a process.

Conductor processes run three-task jobs whose tasks record their effects and their reverts;
some jobs count against a limit key (``pay``: 2, ``ship``: 3) and hold a slot of their key's
gauge (``tests/gauge.py``: a file under ``flock`` shared by the processes) while their middle
task works. The harness cancels a random sample of jobs at random moments (some before any
conductor starts, most while they run, some already finished), writing a ``cancel`` event for
each, and SIGKILLs conductors (restarting each 0.3 s later): every other kill cancels a running
job and kills its owner at once (a later owner must revert it from the store), the others
prefer a conductor that holds a slot; each under the gauges' locks, so the gauges drop the dead
process's runs at once. SIGKILL only: no process survives past its lease, so the gauge's peak
is exact. Reverts take time too (and hold the slot: a job being reverted still holds its
claim), so conductors also die while reverting.

The checker (``tests/chaos/history.py``, rules in ``history_cancels.py``) proves nothing was lost,
only cancelled jobs ended ``CANCELLED``, every effect of a job consumed ``CANCELLED`` was
reverted and nothing ran after, each key's peak of concurrent runs stayed within its limit, and
the usual invariants (consumed once, fenced, no re-run after resume). The harness also asserts
each limit was reached.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioconductor import JobState, open_board
from aioconductor.boards import JobBoard
from tests import gauge

from .backends import backend_params, open_target, scale
from .cluster import Cluster, board_final, finished, history_folder, post_jobs, report

pytestmark = [pytest.mark.chaos]

LEASE = 1.0
SWEEP = 0.5
LIMITS = {"pay": 2, "ship": 3}
#: Where the harness picks the jobs it cancels while the conductors run (weights).
TARGETS = {JobState.CLAIMED: 6, JobState.UNCLAIMED: 2, JobState.COMPLETE: 2}


@pytest.mark.timeout(scale(150, 900))
@pytest.mark.parametrize("backend", backend_params(processes=True))
async def test_cancels_are_reverted_and_limits_hold_while_conductors_die(
    backend: str, tmp_path: Path
) -> None:
    rounds, procs, kills = scale(10, 100), scale(3, 6), scale(2, 10)
    early, during = scale(10, 100), scale(50, 500)
    folder = history_folder(tmp_path)
    gauges = {key: str(tmp_path / f"gauge-{key}.json") for key in LIMITS}
    rng = random.Random(21)
    cancelled: set[str] = set()
    done_kills = 0
    async with open_target(backend, tmp_path) as target:
        async with open_board(target.board_url) as board:
            for key, limit in LIMITS.items():
                await board.set_limit(key, limit)
            ids = await _post(board, rounds, gauges)
            total = len(ids)
            cluster = Cluster(target, folder, concurrency=4, lease=LEASE, sweep=SWEEP)
            try:
                # Before any conductor runs: these end CANCELLED at once.
                for job_id in rng.sample(ids, early):
                    await _cancel(board, cluster, job_id, cancelled)
                names = [f"p{n}" for n in range(procs)]
                for name in names:
                    cluster.start(name)
                for name in names:
                    await cluster.started(name)
                started = time.monotonic()
                kill_at = sorted(rng.uniform(1.0, scale(6.0, 60.0)) for _ in range(kills))
                with anyio.fail_after(scale(100, 800)):
                    while await finished(board) < total:
                        await anyio.sleep(rng.uniform(0.05, 0.15))
                        if len(cancelled) < early + during:
                            await _cancel_one(board, cluster, rng, cancelled)
                        if kill_at and time.monotonic() - started >= kill_at[0]:
                            kill_at.pop(0)
                            # Every other kill cancels a running job first, then kills its
                            # owner: a later owner must revert it from the store.
                            owner = None
                            if done_kills % 2 == 0:
                                owner = await _cancel_a_run(board, cluster, names, cancelled)
                            victim = _kill(cluster, names, gauges, rng, owner)
                            done_kills += 1
                            await anyio.sleep(0.3)
                            cluster.start(victim)
                        if len(cluster.exited()) == len(cluster.procs):
                            raise AssertionError(f"every conductor exited\n{cluster.logs()}")
                cluster.stop_all()
            finally:
                cluster.kill_all()
            final = await board_final(board)
    peaks = {key: gauge.read(path) for key, path in gauges.items()}
    result = report(
        "cancel-limits", backend, folder, final, cancelled=cancelled, limits=LIMITS,
        extra={"kills": done_kills, "gauge_peaks": {k: s["peak"] for k, s in peaks.items()}},
    )  # fmt: skip
    figures = result.figures
    assert not result.violations, result.violations
    assert done_kills == kills, f"only {done_kills} of {kills} kills happened before the end"
    assert figures["lost"] == 0 and figures["consumed"] == total, figures
    assert figures["completed_task_reruns"] == 0
    for key, limit in LIMITS.items():
        # Reached, never passed: the checker's replay of the history and the gauge agree.
        assert figures["limits"][key]["peak"] == peaks[key]["peak"] == limit, figures["limits"]
        assert peaks[key]["overlaps"] == []
    # Every kind of cancel happened, and some runs were stopped and reverted.
    assert set(figures["cancel_results"]) == {"ended", "flagged", "final"}, figures
    assert figures["cancelled_at_once"] >= early
    assert figures["cancelled_by_owner"] > 0 and figures["reverted_tasks"] > 0, figures
    assert figures["cancelled_by_heir"] > 0, figures  # a dead owner's flagged job was reverted
    assert all(str(job.outcome) == "SUCCESS" for i, job in final.items() if i not in cancelled)


async def _post(board: JobBoard, rounds: int, gauges: dict[str, str]) -> list[str]:
    """Jobs in rounds (so limited jobs are spread over the run): per round 20 free jobs and 4
    of each limit key, every job of flow ``undo3``."""
    ids: list[str] = []
    for r in range(rounds):
        ids += await post_jobs(
            board, 20, prefix=f"free{r}_", flow="undo3", args={"step": 0.1, "work": 0.3},
            max_attempts=20,
        )  # fmt: skip
        for key, path in gauges.items():
            args = {"step": 0.02, "work": 0.25, "gauge": path, "limit": key}
            ids += await post_jobs(
                board, 4, prefix=f"{key}{r}_", flow="undo3", args=args, limit_key=key,
                max_attempts=20,
            )  # fmt: skip
    return ids


async def _cancel_one(
    board: JobBoard, cluster: Cluster, rng: random.Random, cancelled: set[str]
) -> None:
    """Cancel a job not cancelled yet: running, waiting or finished (at random)."""
    (state,) = rng.choices(list(TARGETS), weights=list(TARGETS.values()))
    candidates = [job.id async for job in board.iterjobs(state=state) if job.id not in cancelled]
    if candidates:
        await _cancel(board, cluster, rng.choice(candidates), cancelled)


async def _cancel(board: JobBoard, cluster: Cluster, job_id: str, cancelled: set[str]) -> None:
    """Cancel ``job_id`` and record what ``cancel`` returned (see ``history_cancels``)."""
    sent = time.time()
    job = await board.cancel(job_id, reason="chaos")
    cancelled.add(job_id)
    fields: dict[str, Any] = {"state": str(job.state)}
    if job.state.is_final:
        ended = job.state is JobState.COMPLETE and str(job.outcome) == "CANCELLED"
        fields.update(result="ended" if ended else "final", outcome=str(job.outcome))
    elif job.cancel_requested:
        fields.update(result="flagged")
    else:
        fields.update(result="unchanged")  # not a result the contract allows: the check fails
    cluster.harness.write("cancel", job=job_id, sent=sent, **fields)
    assert fields["result"] != "unchanged", job


async def _cancel_a_run(
    board: JobBoard, cluster: Cluster, names: list[str], cancelled: set[str]
) -> str | None:
    """Cancel a job a conductor of ``names`` runs; the conductor's name (None if none runs)."""
    by_owner = {cluster.owner(name): name for name in names}
    async for job in board.iterjobs(state=JobState.CLAIMED):
        if job.claim is not None and job.claim.owner in by_owner and job.id not in cancelled:
            await _cancel(board, cluster, job.id, cancelled)
            return by_owner[job.claim.owner]
    return None


def _kill(
    cluster: Cluster,
    names: list[str],
    gauges: dict[str, str],
    rng: random.Random,
    prefer: str | None = None,
) -> str:
    """SIGKILL conductor ``prefer``, or else one that holds a slot of a gauge if any does, under
    every gauge's lock: its runs are dropped from the gauges (and a ``gauge_drop`` event
    written for each) before any other process can enter one. The victim's name."""
    with contextlib.ExitStack() as stack:
        states = {key: stack.enter_context(gauge.locked(gauges[key])) for key in sorted(gauges)}
        alive = {cluster.procs[n].pid: n for n in names if cluster.owner(n) is not None}
        holders = sorted({p for s in states.values() for p in s["active"].values()} & set(alive))
        if prefer in alive.values():
            victim = prefer
        elif holders:
            victim = alive[rng.choice(holders)]
        else:
            victim = rng.choice(sorted(alive.values()))
        pid = cluster.procs[victim].pid
        cluster.signal(victim, signal.SIGKILL, "kill")
        for key, state in states.items():
            state["active"] = {job: p for job, p in state["active"].items() if p != pid}
            state["seq"] = state.get("seq", 0) + 1
            cluster.harness.write("gauge_drop", key=key, victim_pid=pid, seq=state["seq"])
    return victim
