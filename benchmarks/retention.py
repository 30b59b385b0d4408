"""The bounded-size run: many jobs through a board under a short retention, its size sampled.

``python -m benchmarks.retention [--jobs 200000] [--retention 1] [--backends sqlite,redis,...]``
(``nox -s retention``). For each board, one conductor (``Retention(complete=R, trashed=R)``)
runs no-op jobs posted in batches, the producer keeping at most ``--backlog`` jobs unfinished.
Twice a second the run samples the board: its finished jobs (``job_count`` of COMPLETE and
TRASHED), the jobs finished within the last retention window (from the conductor's events), and
what the backend holds (SQL rows, Redis keys, the Kafka instance's folded jobs). The claim it
checks: finished jobs on the board never exceed those finished within one retention window
plus one purge batch. It prints one JSON line per board and exits 1 if a board broke the bound.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from aioconductor import Conductor, JobState, Retention, open_board
from aioconductor.boards.base import JobBoard
from aioconductor.events import Event
from benchmarks import aioc_flows, services

BACKENDS = ("sqlite", "redis", "postgres", "kafka")


async def held(board: JobBoard) -> int | None:
    """What the backend holds for the board beyond its job count: Redis keys of its namespace,
    the Kafka instance's folded jobs; None where the rows are the job count."""
    name = type(board).__name__
    if name == "KafkaJobBoard":
        return len(board._view.jobs)  # type: ignore[attr-defined]
    if name == "RedisJobBoard":
        link = board._link  # type: ignore[attr-defined]
        pattern = f"aioc:{{{board.namespace}}}:*"
        count = 0
        async for _ in link.client.scan_iter(match=pattern, count=10_000):
            count += 1
        return count
    return None


class Sampler:
    """The run's samples: finished jobs on the board against those finished within a window."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.ends: collections.deque[float] = collections.deque()
        self.samples: list[dict[str, Any]] = []

    def ended(self, event: str, details: Any) -> None:
        self.ends.append(time.time())

    def recent(self, now: float) -> int:
        while self.ends and self.ends[0] < now - self.window:
            self.ends.popleft()
        return len(self.ends)

    async def sample(self, board: JobBoard) -> dict[str, Any]:
        finished = 0
        for state in (JobState.COMPLETE, JobState.TRASHED):
            finished += await board.job_count(state=state)
        now = time.time()
        sample = {
            "t": now,
            "finished_on_board": finished,
            "finished_in_window": self.recent(now),
            "jobs_on_board": await board.job_count(),
            "held": await held(board),
        }
        self.samples.append(sample)
        return sample


@contextlib.asynccontextmanager
async def running(conductor: Conductor) -> AsyncIterator[None]:
    """``conductor`` running in the block's task group, stopped (with a drain) at its end."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(conductor.run)
        try:
            yield
        finally:
            conductor.stop()


async def run_one(backend: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """One board's run; its figures."""
    retention = Retention(complete=args.retention, trashed=args.retention, batch=args.batch)
    sampler = Sampler(args.retention)
    async with open_board(url, poll_interval=0.2) as board:
        conductor = Conductor(
            "retention",
            board,
            flows=aioc_flows.flows,
            max_concurrency=args.concurrency,
            retention=retention,
        )
        conductor.notifier.register(Event.JOB_CONSUMED, sampler.ended)
        started = time.monotonic()
        posted = 0
        async with running(conductor):
            next_sample = 0.0
            while conductor.stats.consumed < args.jobs:
                unfinished = posted - conductor.stats.consumed
                if posted < args.jobs and unfinished < args.backlog:
                    n = min(args.post_batch, args.jobs - posted)
                    await board.post_many("noop", [{"key": i} for i in range(n)])
                    posted += n
                else:
                    await anyio.sleep(0.02)
                if time.monotonic() >= next_sample:
                    await sampler.sample(board)
                    next_sample = time.monotonic() + 0.5
            seconds = time.monotonic() - started
            # Everything finished: within a few rounds the board holds nothing.
            with anyio.move_on_after(10 * args.retention + 10):
                while await board.job_count() > 0:  # noqa: ASYNC110 - polls the board
                    await anyio.sleep(0.2)
            left = await board.job_count()
    excess = [s["finished_on_board"] - s["finished_in_window"] for s in sampler.samples]
    return {
        "backend": backend,
        "jobs": args.jobs,
        "retention_s": args.retention,
        "batch": args.batch,
        "seconds": round(seconds, 1),
        "jobs_per_s": round(args.jobs / seconds),
        "purged": conductor.stats.purged,
        "samples": len(sampler.samples),
        "max_finished_on_board": max(s["finished_on_board"] for s in sampler.samples),
        "max_finished_in_window": max(s["finished_in_window"] for s in sampler.samples),
        "max_excess_over_window": max(excess),
        "max_jobs_on_board": max(s["jobs_on_board"] for s in sampler.samples),
        "max_held": max((s["held"] or 0) for s in sampler.samples) or None,
        "left_at_end": left,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "within_bound": max(excess) <= args.batch,
    }


def main(argv: list[str] | None = None) -> int:
    """Run each board asked for; one JSON line each; 1 if any broke the bound."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--retention", type=float, default=1.0, help="seconds kept")
    parser.add_argument("--batch", type=int, default=1000, help="the purge batch")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--backlog", type=int, default=5000, help="most jobs unfinished")
    parser.add_argument("--post-batch", type=int, default=500)
    args = parser.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory(prefix="aioc-retention-") as folder:
        for backend in args.backends.split(","):
            # Outside the event loop: the services' set-up and clean-up run loops of their own.
            with services.board_url(backend, Path(folder), "retention") as url:
                figures = anyio.run(run_one, backend, url, args)
            print(json.dumps(figures), flush=True)
            ok = ok and figures["within_bound"] and figures["left_at_end"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
