"""Stdlib-only helpers shared by every benchmark driver (aioconductor's and the peers').

A driver is a script run with its system's own Python. It takes one command and prints one
result line, ``BENCH-RESULT {json}``, on stdout; anything else it prints is log:

- ``post --n N``: post N no-op jobs one at a time; ``{"seconds", "rate"}``.
- ``drain --n N --concurrency C``: one worker runs the N posted jobs; ``{"seconds", "rate",
  "vmhwm_kib"}``, timed from the worker's start to the last job recorded complete.
- ``serve --concurrency C --record FILE``: a worker for the latency workload; prints
  ``BENCH-READY`` once it runs, then works until SIGTERM. Its task appends ``<key> <time>`` to
  FILE when it starts.
- ``latency --n N --record FILE``: post N jobs one at a time, each after the previous one
  started; ``{"p50_ms", "p95_ms", "p99_ms", "n"}``.

Peer drivers are run as ``python -P benchmarks/peers/<peer>.py`` so that the script's folder does
not shadow the peer's package (``arq.py`` would otherwise import itself); they find this module
through :func:`sys.path` entries appended after site-packages.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

RESULT_MARK = "BENCH-RESULT "
READY_MARK = "BENCH-READY"
#: Jobs posted (and waited for) before latency is measured, so the worker is warm.
LATENCY_WARMUP = 20
#: The longest a latency job may take to start before the run is called stuck.
START_TIMEOUT = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line every driver shares."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["post", "drain", "serve", "latency", "version"])
    parser.add_argument("--n", type=int, default=1000, help="jobs")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--record", default=None, help="the task-start record file")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--prefix", default="bench", help="queue / namespace / key prefix")
    parser.add_argument("--workdir", default=None, help="a scratch folder of this run")
    parser.add_argument("--post", action="store_true", help="drain: post first (in-process)")
    parser.add_argument("--inproc", action="store_true", help="latency: worker in-process")
    parser.add_argument(
        "--deadline", type=float, default=0.0, help="latency: stop probing after this many s"
    )
    return parser.parse_args(argv)


def emit(result: dict[str, Any]) -> None:
    """Print the driver's one result line."""
    print(RESULT_MARK + json.dumps(result, sort_keys=True), flush=True)


def ready() -> None:
    """Tell the harness that the ``serve`` worker runs."""
    print(READY_MARK, flush=True)


def proc_status_kib(field: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field (``VmHWM``, ``VmRSS``) of ``/proc/<pid>/status``, or None if absent."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linearly interpolated."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(delays_s: list[float]) -> dict[str, Any]:
    """p50/p95/p99 (and mean, max) in milliseconds of post -> start delays in seconds."""
    ms = [d * 1000.0 for d in delays_s]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 0.50),
        "p95_ms": percentile(ms, 0.95),
        "p99_ms": percentile(ms, 0.99),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
        "max_ms": max(ms) if ms else float("nan"),
    }


def record_start(path: str | None, key: Any) -> None:
    """Append ``<key> <time.time()>`` to ``path`` in one write (the task-side of latency)."""
    if not path:
        return
    now = time.time()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key} {now!r}\n".encode())
    finally:
        os.close(fd)


class RecordReader:
    """Follows a record file written by :func:`record_start`: key -> start time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.starts: dict[str, float] = {}
        self._offset = 0
        self._partial = b""

    def poll(self) -> None:
        """Read what was appended since the last poll."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            key, _, stamp = line.decode().partition(" ")
            self.starts[key] = float(stamp)


def latency_sync(
    post: Callable[[str], None], n: int, record: str, deadline: float = 0.0
) -> dict[str, Any]:
    """Post ``n`` jobs one at a time with ``post(key)`` (blocking); each waits for the last.

    With ``deadline`` (seconds), probing stops early and the result says how many were made.
    """
    reader = RecordReader(record)
    delays: list[float] = []
    stop_at = time.monotonic() + deadline if deadline else float("inf")
    for i in range(LATENCY_WARMUP + n):
        if time.monotonic() > stop_at and delays:
            break
        key = f"k{i}"
        posted = time.time()
        post(key)
        deadline = time.monotonic() + START_TIMEOUT
        while key not in reader.starts:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {key} did not start within {START_TIMEOUT} s")
            time.sleep(0.0005)
            reader.poll()
        if i >= LATENCY_WARMUP:
            delays.append(reader.starts[key] - posted)
    return latency_summary(delays)


async def latency_async(
    post: Callable[[str], Awaitable[Any]],
    n: int,
    record: str,
    sleep: Callable[[float], Awaitable[Any]],
    deadline: float = 0.0,
) -> dict[str, Any]:
    """Like :func:`latency_sync` for an async ``post``; ``sleep`` is the loop's sleep."""
    reader = RecordReader(record)
    delays: list[float] = []
    stop_at = time.monotonic() + deadline if deadline else float("inf")
    for i in range(LATENCY_WARMUP + n):
        if time.monotonic() > stop_at and delays:
            break
        key = f"k{i}"
        posted = time.time()
        await post(key)
        deadline = time.monotonic() + START_TIMEOUT
        while key not in reader.starts:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {key} did not start within {START_TIMEOUT} s")
            await sleep(0.0005)
            reader.poll()
        if i >= LATENCY_WARMUP:
            delays.append(reader.starts[key] - posted)
    return latency_summary(delays)


class Completions:
    """Counts completed jobs (from any thread) and remembers when the last one completed."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.last = 0.0
        self._lock = threading.Lock()
        self.finished = threading.Event()

    def add(self, count: int = 1) -> None:
        """Count ``count`` completed jobs."""
        with self._lock:
            self.done += count
            self.last = time.perf_counter()
            if self.done >= self.total:
                self.finished.set()


def drain_result(n: int, seconds: float, **extra: Any) -> dict[str, Any]:
    """The ``drain`` result line's fields."""
    return {
        "n": n,
        "seconds": seconds,
        "rate": n / seconds if seconds > 0 else None,
        "vmhwm_kib": proc_status_kib("VmHWM"),
        **extra,
    }


def post_result(n: int, seconds: float, **extra: Any) -> dict[str, Any]:
    """The ``post`` result line's fields."""
    return {"n": n, "seconds": seconds, "rate": n / seconds if seconds > 0 else None, **extra}


def stop_on_sigterm(callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGTERM and SIGINT (for ``serve`` workers)."""

    def handler(signum: int, frame: Any) -> None:
        callback()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def version_of(*distributions: str) -> dict[str, str]:
    """The installed versions of the named distributions."""
    from importlib import metadata

    versions = {}
    for name in distributions:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    versions["python"] = sys.version.split()[0]
    return versions
