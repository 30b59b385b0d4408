"""The conductor's own CPU per job: what #25's hot-path work is judged by, apart from the noise
of a shared machine (jobs/s move with the load; this process's CPU per job much less).

``python -m benchmarks.cpu_per_job [--backends memory,sqlite,redis,postgres,kafka]
[--jobs 3000] [--concurrency 64] [--rounds 3] [--flow noop]``. Per backend and round: a fresh
board (its store on the same URL where the backend has one, as ``aioconductor run`` does;
memory and Kafka: a memory store), ``--jobs`` jobs posted with ``post_many`` before the clock
starts, then one conductor in this process drains them; measured from its start to the last
``job_consumed``: jobs/s and this process's CPU per job (µs; the server's CPU is not counted).
Prints one JSON line per backend with every round and the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from aioconductor import Conductor, open_board, open_store
from benchmarks import aioc_flows, services

BACKENDS = ("memory", "sqlite", "redis", "postgres")


async def one_round(url: str, jobs: int, concurrency: int, flow: str) -> tuple[float, float]:
    """Drain ``jobs`` jobs of ``flow`` from a fresh board at ``url``: (jobs/s, µs CPU a job)."""
    # Kafka has no store: a memory store there, as on the memory board.
    store_url = "memory://" if url.startswith(("memory:", "kafka:")) else url
    async with open_board(url) as board, open_store(store_url) as store:
        for first in range(0, jobs, 500):
            await board.post_many(flow, [{"key": k} for k in range(first, min(jobs, first + 500))])
        done = anyio.Event()
        consumed = 0

        def count(event: Any, details: Any) -> None:
            nonlocal consumed
            consumed += 1
            if consumed == jobs:
                done.set()

        conductor = Conductor(
            "cpu",
            board,
            store=store,
            flows=aioc_flows.flows,
            max_concurrency=concurrency,
            retention=None,
        )
        conductor.notifier.register("job_consumed", count)
        async with anyio.create_task_group() as tg:
            cpu, wall = time.process_time(), time.perf_counter()
            tg.start_soon(conductor.run)
            await done.wait()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            conductor.stop()
    return jobs / wall, cpu / jobs * 1e6


def measure(backend: str, options: argparse.Namespace) -> dict[str, Any]:
    """Every round on ``backend``, and the medians (each round a loop of its own: the board's
    clean-up runs outside it)."""
    rounds = []
    for _ in range(options.rounds):
        with (
            tempfile.TemporaryDirectory() as work,
            services.board_url(backend, Path(work), "cpu") as url,
        ):
            args = (url, options.jobs, options.concurrency, options.flow)
            rate, cpu = anyio.run(one_round, *args)
        rounds.append({"rate": round(rate), "cpu_us": round(cpu)})
    return {
        "backend": backend,
        "flow": options.flow,
        "jobs": options.jobs,
        "concurrency": options.concurrency,
        "rounds": rounds,
        "rate": round(statistics.median(r["rate"] for r in rounds)),
        "cpu_us": round(statistics.median(r["cpu_us"] for r in rounds)),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_per_job", description=__doc__)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flow", default="noop", help="noop (one task) or durable (three)")
    options = parser.parse_args(argv)
    for backend in options.backends.split(","):
        print(json.dumps(measure(backend, options)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
