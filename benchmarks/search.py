"""Search over a big board: how long a page, a filter, a count and ``ended_counts`` take.

``python -m benchmarks.search [--jobs 100000] [--backends sqlite,postgres,memory] [--runs 20]``.
Each board is filled with ``--jobs`` jobs of four flows (``orders`` 50 %, ``mails`` 30 %,
``reports`` 15 %, ``audits`` 5 %), a third of them with a key (``KEY-<n>``), posted with
``post_many`` in rounds of 1,170: the round's 1,000 jobs of the four flows are claimed in bulk
(``claim_batch``) and ended at once, 120 more wait (priority -1) and 50 are delayed an hour, so the
states are mixed along ``seq`` as on a busy board: 68 % SUCCESS, 2.6 % FAILURE, 1.7 % REVERTED, 5.1
% TRASHED, 7.7 % CLAIMED, 10 % UNCLAIMED, 4.3 % SCHEDULED. Then every query is timed ``--runs``
times (p50 and p99 in ms): the first page (100 jobs), a deep page (``before=`` the middle ``seq``),
each filter alone (a state, an outcome, a flow, a piece of the name or key: common, rare, and
matching nothing), ``search_count`` (all jobs, and a filter) and ``ended_counts`` of the last hour
(1-minute buckets). The memory board runs the default implementation (every job read), for
comparison. On PostgreSQL the jobs table is ANALYZEd after the fill, as autovacuum would (the
test server runs without it). Prints one JSON line per board.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from aioconductor import Outcome, open_board
from aioconductor.boards import JobBoard
from aioconductor.models import JobFilter, JobState
from benchmarks import services

BACKENDS = ("sqlite", "postgres", "memory")
#: Jobs posted per round.
ROUND = 1170
#: (flow, share of a round).
FLOWS = (("orders", 500), ("mails", 300), ("reports", 150), ("audits", 50))


async def _gather(calls: list[Callable[[], Awaitable[Any]]], width: int = 32) -> None:
    """Run ``calls``, ``width`` at a time."""
    for start in range(0, len(calls), width):
        async with anyio.create_task_group() as tg:
            for call in calls[start : start + width]:
                tg.start_soon(call)


async def fill(board: JobBoard, jobs: int) -> None:
    """Post about ``jobs`` jobs in rounds, ending most of each round's jobs (see the module)."""
    n = 0
    for _ in range(max(1, round(jobs / ROUND))):
        for flow, count in FLOWS:
            numbers = range(n, n + count)
            await board.post_many(
                flow,
                ({"n": i} for i in numbers),
                name=f"{flow} job",
                keys=[f"KEY-{i}" if i % 3 == 0 else None for i in numbers],
            )
            n += count
        # Left waiting: behind every job of priority 0 in claim order, so never claimed here.
        await board.post_many("orders", ({"n": i} for i in range(120)), name="wait", priority=-1)
        await board.post_many("orders", ({"n": i} for i in range(50)), name="later", delay=3600)
        n += 170
        # Exactly this round's 1,000 jobs of priority 0.
        claimed: list[Any] = []
        while len(claimed) < 1000:
            got = await board.claim_batch("bench", min(256, 1000 - len(claimed)), lease=3600)
            claimed.extend(claim for _, claim in got)
        calls: list[Callable[[], Awaitable[Any]]] = []
        for i, claim in enumerate(claimed):
            slot = i % 100
            if slot < 80:
                calls.append(lambda c=claim: board.consume(c))
            elif slot < 83:
                calls.append(lambda c=claim: board.consume(c, outcome=Outcome.FAILURE))
            elif slot < 85:
                calls.append(lambda c=claim: board.consume(c, outcome=Outcome.REVERTED))
            elif slot < 91:
                calls.append(lambda c=claim: board.trash(c, reason="bench"))
            # The rest stay CLAIMED.
        await _gather(calls)


async def analyze(board: JobBoard) -> None:
    """ANALYZE a PostgreSQL board's jobs table: what autovacuum does soon after such a fill (the
    test server runs without it); without statistics the planner takes a text filter's scan for
    a sort."""
    await board._link.read(  # type: ignore[attr-defined]
        "analyze",
        lambda conn: conn.execute(f"ANALYZE {board._link.q}.jobs"),  # type: ignore[attr-defined]
    )


def _ms(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50": round(q[49], 2), "p99": round(q[98], 2)}


async def _timed(runs: int, call: Callable[[], Awaitable[Any]]) -> tuple[dict[str, float], Any]:
    times: list[float] = []
    result: Any = None
    for _ in range(runs):
        started = time.perf_counter()
        result = await call()
        times.append(time.perf_counter() - started)
    return _ms(times), result


def cases(middle: int) -> dict[str, tuple[str, Any]]:
    """The timed queries: name -> (verb, arguments)."""
    f = JobFilter
    return {
        "first page": ("search", {}),
        "deep page": ("search", {"before": middle}),
        "state UNCLAIMED": ("search", {"where": f(state=JobState.UNCLAIMED)}),
        "state SCHEDULED": ("search", {"where": f(state=JobState.SCHEDULED)}),
        "state CLAIMED": ("search", {"where": f(state=JobState.CLAIMED)}),
        "state COMPLETE": ("search", {"where": f(state=JobState.COMPLETE)}),
        "state TRASHED": ("search", {"where": f(state=JobState.TRASHED)}),
        "outcome SUCCESS": ("search", {"where": f(outcome=Outcome.SUCCESS)}),
        "outcome FAILURE": ("search", {"where": f(outcome=Outcome.FAILURE)}),
        "outcome CANCELLED (none)": ("search", {"where": f(outcome=Outcome.CANCELLED)}),
        "flow orders": ("search", {"where": f(flow="orders")}),
        "flow audits": ("search", {"where": f(flow="audits")}),
        "flow nope (none)": ("search", {"where": f(flow="nope")}),
        "flow + state": ("search", {"where": f(flow="audits", state=JobState.TRASHED)}),
        "text common": ("search", {"where": f(text="ORDERS")}),
        "text rare (one key)": ("search", {"where": f(text="key-4242")}),
        "text none": ("search", {"where": f(text="zzz")}),
        "count all": ("search_count", {}),
        "count state": ("search_count", {"where": f(state=JobState.UNCLAIMED)}),
        "count flow": ("search_count", {"where": f(flow="audits")}),
        "count outcome": ("search_count", {"where": f(outcome=Outcome.FAILURE)}),
        "count text": ("search_count", {"where": f(text="key-4")}),
        "ended_counts 1 h": ("ended_counts", {}),
    }


async def run_one(backend: str, url: str, jobs: int, runs: int) -> dict[str, Any]:
    """Fill one board, time every case; its figures."""
    async with open_board(url) as board:
        started = time.perf_counter()
        await fill(board, jobs)
        filled = time.perf_counter() - started
        if backend == "postgres":
            await analyze(board)
        total = await board.search_count()
        newest = (await board.search(limit=1)).jobs[0].seq
        figures: dict[str, Any] = {}
        for name, (verb, kwargs) in cases(newest // 2).items():
            if verb == "search":
                timing, page = await _timed(runs, lambda k=kwargs: board.search(**k))
                timing["rows"] = len(page.jobs)
            elif verb == "search_count":
                timing, count = await _timed(runs, lambda k=kwargs: board.search_count(**k))
                timing["rows"] = count
            else:
                since = time.time() - 3600
                timing, counts = await _timed(runs, lambda s=since: board.ended_counts(s))
                timing["rows"] = sum(c.count for c in counts)
            figures[name] = timing
    return {"backend": backend, "jobs": total, "fill_s": round(filled, 1), "times_ms": figures}


def main(argv: list[str] | None = None) -> int:
    """Run each board asked for; one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aioc-search-") as folder:
        for backend in args.backends.split(","):
            if backend not in BACKENDS:
                raise SystemExit(
                    f"unknown backend {backend!r} (this benchmark: {', '.join(BACKENDS)})"
                )
            # Outside the event loop: the services' set-up and clean-up run loops of their own.
            with services.board_url(backend, Path(folder), "search") as url:
                figures = anyio.run(run_one, backend, url, args.jobs, args.runs)
            print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
