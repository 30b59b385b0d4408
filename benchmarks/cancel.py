"""Cancel latency: from ``board.cancel()`` to the flow stopped, on each board.

``python -m benchmarks.cancel [--jobs 50] [--backends memory,sqlite,redis,postgres,kafka]``
(``nox -s cancel``). For each board, one conductor (lease 30 s, so no renewal tells it) runs a
two-task flow whose second task waits; once it waits, a second board object (an operator's)
cancels the job, at a random moment up to 1 s later. Measured per job: ``stop`` (``cancel()``
called until the run emits ``job_cancelling``, its flow stopped) and ``ended`` (until the job
is consumed ``CANCELLED``, its tasks reverted). Boards keep their default ``poll_interval``
(1 s): SQLite hears of a cancel made by another board object at its next sweep. Prints one
JSON line per board.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from aioconductor import Conductor, FlowRegistry, Outcome, linear, open_board, task
from aioconductor.events import Event
from benchmarks import services
from benchmarks.retention import running

BACKENDS = ("memory", "sqlite", "redis", "postgres", "kafka")

#: job id -> set once its waiting task started.
_WAITING: dict[str, anyio.Event] = {}


def _flows() -> FlowRegistry:
    flows = FlowRegistry()

    async def undo(**_: Any) -> None:
        return None

    @task(provides="first", revert=undo)
    async def first(job: str) -> str:
        return job

    @task(revert=undo)
    async def wait(job: str) -> None:
        _WAITING.setdefault(job, anyio.Event()).set()
        await anyio.sleep(3600)

    @flows.register("waits")
    def waits(**_: Any) -> Any:
        return linear("waits", first, wait)

    return flows


def _percentiles(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50_ms": round(q[49], 1), "p99_ms": round(q[98], 1), "max_ms": round(ms[-1], 1)}


async def run_one(backend: str, url: str, jobs: int) -> dict[str, Any]:
    """One board's run; its figures."""
    # A memory board is private to its object unless named: name it, so two objects share it.
    if url == "memory://":
        url = "memory://cancel-bench"
    stopped: dict[str, float] = {}
    stops: list[float] = []
    ends: list[float] = []
    async with open_board(url) as board, open_board(url) as operator:
        conductor = Conductor("cancel-bench", board, flows=_flows(), lease=30.0)
        conductor.notifier.register(
            Event.JOB_CANCELLING, lambda e, d: stopped.setdefault(d["job_id"], time.perf_counter())
        )
        async with running(conductor):
            for n in range(jobs):
                job = await board.post(f"cancel {n}", "waits", {"job": str(n)})
                waiting = _WAITING.setdefault(str(n), anyio.Event())
                with anyio.fail_after(60):
                    await waiting.wait()
                # At a random moment: a cancel right after a sweep would always wait a whole
                # poll_interval on a board that hears of it by sweeping (SQLite).
                await anyio.sleep(random.uniform(0, 1))
                started = time.perf_counter()
                await operator.cancel(job.id, reason="benchmark")
                with anyio.fail_after(60):
                    done = await board.wait_for(job.id)
                ended = time.perf_counter()
                # The run emits job_cancelling before it consumes the job.
                if done.outcome is not Outcome.CANCELLED or job.id not in stopped:
                    raise SystemExit(f"{backend}: job {n} ended {done.outcome}, not CANCELLED")
                stops.append(stopped[job.id] - started)
                ends.append(ended - started)
    return {
        "backend": backend,
        "jobs": jobs,
        "stop": _percentiles(stops),
        "ended": _percentiles(ends),
        "cancelled": conductor.stats.cancelled,
    }


def main(argv: list[str] | None = None) -> int:
    """Run each board asked for; one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aioc-cancel-") as folder:
        for backend in args.backends.split(","):
            _WAITING.clear()
            # Outside the event loop: the services' set-up and clean-up run loops of their own.
            with services.board_url(backend, Path(folder), "cancel") as url:
                figures = anyio.run(run_one, backend, url, args.jobs)
            print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
