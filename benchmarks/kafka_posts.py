"""Where a single Kafka post's time goes, as the state topic grows.

``python -m benchmarks.kafka_posts [--posts 1000] [--sizes 0,5000,20000,60000,120000]``.
One Kafka board on the harness's broker (Tansu, ``services.kafka_broker``); the state topic is
filled with ``post_many`` to each size in turn, and at each size ``--posts`` single
``board.post`` calls run one after the other. Per post: the wall time, the produce's
acknowledgement (``StateLog._send``), the catch-up to the acknowledged offset
(``StateReader.catch_up``) with its fetches and the time of one fetch (``_fetch_at``), this
process's CPU, and the broker process's CPU (read from ``/proc``). Medians, except for the CPU
figures and the fetches per catch-up (means). Prints a markdown table.

The figures separate the board's own cost (this process's CPU) from the broker's (its CPU per
request, and the fetch time that follows it): a broker whose fetch cost grows with the
partition shows it here, whatever the board does.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from aioconductor import open_board
from aioconductor._backends.kafka import log as state_log
from aioconductor._backends.kafka import reader as state_reader
from benchmarks import services

#: Time spans per kind, in seconds, and the fetch count, filled by the wrappers below.
SPANS: dict[str, list[float]] = {"send": [], "catch_up": [], "fetch": [], "fetches": []}


def _timed(kind: str, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def timed(*args: Any, **kwargs: Any) -> Any:
        fetches = len(SPANS["fetch"])
        started = time.perf_counter()
        try:
            return await call(*args, **kwargs)
        finally:
            SPANS[kind].append(time.perf_counter() - started)
            if kind == "catch_up":
                SPANS["fetches"].append(len(SPANS["fetch"]) - fetches)

    return timed


def _instrument() -> None:
    state_log.StateLog._send = _timed("send", state_log.StateLog._send)  # type: ignore[method-assign]
    reader = state_reader.StateReader
    reader.catch_up = _timed("catch_up", reader.catch_up)  # type: ignore[method-assign]
    reader._fetch_at = _timed("fetch", reader._fetch_at)  # type: ignore[method-assign]


def broker_cpu(port: str) -> float:
    """The CPU seconds the broker listening on ``port`` has used (NaN if not found)."""
    for folder in glob.glob("/proc/[0-9]*"):
        try:
            with open(folder + "/cmdline", "rb") as file:
                argv = file.read().split(b"\0")
            if b"broker" not in argv or not any(f":{port}".encode() in a for a in argv):
                continue
            with open(folder + "/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return float("nan")


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.2f}" if values else "-"


async def measure(posts: int, sizes: list[int]) -> None:
    """Print one table row per state-topic size."""
    port = services.kafka_broker().rsplit(":", 1)[1]
    url = services.kafka_url(f"posts-{uuid.uuid4().hex[:8]}")
    async with open_board(url) as board:
        print(
            "| state-topic offsets | posts/s | wall per post ms | produce ack ms | catch-up ms "
            "| fetches per catch-up | one fetch ms | board CPU per post ms "
            "| broker CPU per post ms |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        filled = 0
        for size in sizes:
            while filled < size:
                batch = min(1000, size - filled)
                await board.post_many("fill", [{"n": n} for n in range(batch)], name="fill")
                filled += batch
            for values in SPANS.values():
                values.clear()
            offsets = board._view.next_offset  # type: ignore[attr-defined]
            broker = broker_cpu(port)
            cpu, wall = time.process_time(), time.perf_counter()
            for n in range(posts):
                await board.post("p", "f", {"n": n})
            wall = time.perf_counter() - wall
            cpu = time.process_time() - cpu
            broker = broker_cpu(port) - broker
            fetches = statistics.mean(SPANS["fetches"]) if SPANS["fetches"] else 0.0
            print(
                f"| {offsets:,} | {posts / wall:,.0f} | {wall / posts * 1000:.2f} "
                f"| {_ms(SPANS['send'])} | {_ms(SPANS['catch_up'])} | {fetches:.2f} "
                f"| {_ms(SPANS['fetch'])} | {cpu / posts * 1000:.2f} "
                f"| {broker / posts * 1000:.2f} |",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kafka_posts", description=__doc__)
    parser.add_argument("--posts", type=int, default=1000, help="single posts per size")
    parser.add_argument("--sizes", default="0,5000,20000,60000,120000", help="jobs filled")
    options = parser.parse_args(argv)
    problem = services.kafka_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    _instrument()
    anyio.run(measure, options.posts, [int(s) for s in options.sizes.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
