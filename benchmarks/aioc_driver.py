"""The aioconductor driver: the workloads of ``benchmarks/peers/_common.py`` for aioconductor.

Run by the harness as ``python -m benchmarks.aioc_driver COMMAND --board URL --store URL ...``.
Besides the shared commands it has ``drain --post`` (post and drain in one process: the memory
board cannot be shared across processes), ``latency --inproc`` (the conductor in this process),
``inflight`` (memory per in-flight job, memory board only) and ``processes`` (the
``aioconductor run --processes N`` command, timed from outside).
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio

from aioconductor import Conductor, JobState, open_board, open_store
from aioconductor.boards.base import JobBoard
from aioconductor.tuning import GC_YOUNG, tune_gc
from benchmarks import aioc_flows
from benchmarks.peers import _common

_COMMANDS = ["post", "drain", "serve", "latency", "inflight", "share", "hold", "processes"]
_COMMANDS.append("version")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "command",
        choices=_COMMANDS,
    )
    parser.add_argument("--board", default="memory://")
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--flow", default="noop", help="noop or durable")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--record", default=None)
    parser.add_argument("--post", action="store_true", help="drain: post the jobs first, here")
    parser.add_argument("--inproc", action="store_true", help="latency: conductor in-process")
    parser.add_argument(
        "--deadline",
        type=float,
        default=0.0,
        help="latency, post (one at a time), drain: stop after (s)",
    )
    parser.add_argument("--barrier", default=None, help="share: start once this file exists")
    parser.add_argument("--batch", type=int, default=0, help="post: jobs per post_many call")
    parser.add_argument("--lease", type=float, default=30.0, help="the conductor's lease (s)")
    parser.add_argument("--processes", type=int, default=1, help="processes: run --processes N")
    parser.add_argument(
        "--gc-young",
        type=int,
        default=int(os.environ.get("AIOC_BENCH_GC_YOUNG", GC_YOUNG)),
        help="the garbage collector's youngest threshold, as `aioconductor run --gc-young` sets "
        "it (default: its default, or $AIOC_BENCH_GC_YOUNG); 0: the interpreter's own",
    )
    return parser


async def post_jobs(
    board: JobBoard, n: int, flow: str, batch: int = 0, deadline: float = 0.0
) -> dict[str, Any]:
    """Post ``n`` jobs of ``flow`` one at a time, or ``batch`` a call with ``post_many``; the
    post result line's fields. One at a time, ``deadline`` (s, 0: none) stops the posts early:
    the rate is then that of the posts made (a slow board is measured, not timed out)."""
    started = time.perf_counter()
    done = n
    if batch:
        for first in range(0, n, batch):
            keys = range(first, min(n, first + batch))
            await board.post_many(flow, [{"key": i} for i in keys])
    else:
        for i in range(n):
            if deadline and i and time.perf_counter() - started > deadline:
                done = i
                break
            await board.post(f"j{i}", flow, {"key": i})
    return _common.post_result(done, time.perf_counter() - started, asked=n)


def _conductor(board: JobBoard, store: Any, concurrency: int, lease: float = 30.0) -> Conductor:
    return Conductor(
        "bench",
        board,
        store=store,
        flows=aioc_flows.flows,
        max_concurrency=concurrency,
        lease=lease,
    )


async def cmd_post(args: argparse.Namespace) -> dict[str, Any]:
    """Post the jobs (server and file boards)."""
    async with open_board(args.board) as board:
        return await post_jobs(board, args.n, args.flow, args.batch, args.deadline)


async def cmd_drain(args: argparse.Namespace) -> dict[str, Any]:
    """Run one conductor until the ``n`` posted jobs are done; time it."""
    async with open_board(args.board) as board, open_store(args.store) as store:
        posted = await post_jobs(board, args.n, args.flow, args.batch) if args.post else None
        conductor = _conductor(board, store, args.concurrency)
        async with conductor:
            started = time.perf_counter()
            # A deadline stops a slow drain (its rate is that of the jobs done by then).
            with anyio.move_on_after(args.deadline or float("inf")) as scope:
                await conductor.run(max_dispatches=args.n)
            if scope.cancelled_caught:
                conductor.stop()
            seconds = time.perf_counter() - started
        complete = await board.job_count(state=JobState.COMPLETE)
        stats = conductor.stats
    done = args.n
    if scope.cancelled_caught:
        done = stats.succeeded
    elif complete != args.n or stats.succeeded != args.n:
        raise RuntimeError(f"{complete} of {args.n} jobs complete ({stats})")
    extra: dict[str, Any] = {"peak_running": stats.peak_running}
    if scope.cancelled_caught:
        extra["partial"] = f"{done} of {args.n} in the {args.deadline:.0f} s deadline"
    if posted is not None:
        extra["post_rate"] = posted["rate"]
    return _common.drain_result(done, seconds, **extra)


async def cmd_serve(args: argparse.Namespace) -> dict[str, Any]:
    """A warm conductor for the latency workload, until SIGTERM or SIGINT."""
    aioc_flows.set_recorder(args.record)
    async with open_board(args.board) as board, open_store(args.store) as store:
        conductor = _conductor(board, store, args.concurrency)
        async with conductor, anyio.create_task_group() as tg:
            await tg.start(conductor.run)
            _common.ready()
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            conductor.stop()
    return {"served": conductor.stats.consumed}


async def cmd_latency(args: argparse.Namespace) -> dict[str, Any]:
    """Post jobs one at a time and measure post -> task start."""
    async with open_board(args.board) as board:
        if not args.inproc:
            if not args.record:
                raise SystemExit("latency needs --record (or --inproc)")

            async def post(key: str) -> None:
                await board.post(key, "record", {"key": key})

            return await _common.latency_async(
                post, args.n, args.record, anyio.sleep, args.deadline
            )
        async with open_store(args.store) as store:
            return await _latency_inproc(board, store, args)


async def _latency_inproc(board: JobBoard, store: Any, args: argparse.Namespace) -> dict[str, Any]:
    starts: dict[str, float] = {}
    events: dict[str, anyio.Event] = {}

    def hook(key: Any) -> None:
        starts[key] = time.time()
        events[key].set()

    aioc_flows.set_recorder(hook)
    delays: list[float] = []
    conductor = _conductor(board, store, args.concurrency)
    async with conductor, anyio.create_task_group() as tg:
        await tg.start(conductor.run)
        stop_at = time.monotonic() + args.deadline if args.deadline else float("inf")
        for i in range(_common.LATENCY_WARMUP + args.n):
            if time.monotonic() > stop_at and delays:
                break
            key = f"k{i}"
            events[key] = anyio.Event()
            posted = time.time()
            await board.post(key, "record", {"key": key})
            with anyio.fail_after(_common.START_TIMEOUT):
                await events[key].wait()
            if i >= _common.LATENCY_WARMUP:
                delays.append(starts[key] - posted)
        conductor.stop()
    return _common.latency_summary(delays)


async def _until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (cheap, in-process state) until it holds, for two minutes at most."""
    with anyio.fail_after(120):
        while True:
            if condition():
                return
            await anyio.sleep(0.01)


async def cmd_inflight(args: argparse.Namespace) -> dict[str, Any]:
    """RSS with ``n`` jobs in flight at once, less the RSS of the warm idle conductor."""
    warmup = 100
    async with open_board(args.board) as board, open_store(args.store) as store:
        conductor = _conductor(board, store, args.n)
        async with conductor, anyio.create_task_group() as tg:
            await tg.start(conductor.run)
            # Warm up (imports, first compilations, the pools' first growth), then settle.
            aioc_flows.HOLD["event"] = None
            for i in range(warmup):
                await board.post(f"w{i}", "hold", {"key": i})
            await _until(lambda: conductor.stats.consumed >= warmup)
            gc.collect()
            await anyio.sleep(0.2)
            idle = _common.proc_status_kib("VmRSS") or 0
            release = anyio.Event()
            aioc_flows.HOLD.update(event=release, started=0)
            started = time.perf_counter()
            for i in range(args.n):
                await board.post(f"h{i}", "hold", {"key": i})
            await _until(lambda: aioc_flows.HOLD["started"] >= args.n)
            ramp = time.perf_counter() - started
            gc.collect()
            busy = _common.proc_status_kib("VmRSS") or 0
            running = len(conductor.running)
            release.set()
            await _until(lambda: conductor.stats.consumed >= warmup + args.n)
            conductor.stop()
    return {
        "n": args.n,
        "in_flight": running,
        "idle_rss_kib": idle,
        "busy_rss_kib": busy,
        "kib_per_job": (busy - idle) / args.n,
        "ramp_seconds": ramp,
    }


async def cmd_share(args: argparse.Namespace) -> dict[str, Any]:
    """One of several conductor processes draining one board (scale-out): from the barrier
    until the board holds ``n`` complete jobs."""
    barrier = anyio.Path(args.barrier)
    async with open_board(args.board) as board, open_store(args.store) as store:
        conductor = _conductor(board, store, args.concurrency, args.lease)
        async with conductor, anyio.create_task_group() as tg:
            _common.ready()
            # Polling: the other processes and the board are outside this one's events.
            while not await barrier.exists():  # noqa: ASYNC110
                await anyio.sleep(0.005)
            started = time.time()
            await tg.start(conductor.run)
            while await board.job_count(state=JobState.COMPLETE) < args.n:  # noqa: ASYNC110
                await anyio.sleep(0.02)
            finished = time.time()
            conductor.stop()
    return {"started": started, "finished": finished, "consumed": conductor.stats.consumed}


async def cmd_hold(args: argparse.Namespace) -> dict[str, Any]:
    """Claim ``n`` hold jobs and keep them running, until killed (recovery's victim)."""
    async with open_board(args.board) as board, open_store(args.store) as store:
        aioc_flows.HOLD.update(event=anyio.Event(), started=0)  # never set: they never end
        conductor = _conductor(board, store, args.concurrency, args.lease)
        async with conductor, anyio.create_task_group() as tg:
            await tg.start(conductor.run)
            await _until(lambda: aioc_flows.HOLD["started"] >= args.n)
            _common.ready()
            await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def cmd_processes(args: argparse.Namespace) -> dict[str, Any]:
    """``aioconductor run --processes N`` (the command, as an operator starts it): once its N
    conductors are listed on the board, ``n`` jobs are posted (``post_many``, 500 a call) and
    timed from the first post to the board holding ``n`` complete; then SIGTERM, exit 0."""
    command = [
        sys.executable, "-m", "aioconductor.cli", "run", "--app", "benchmarks.aioc_flows:flows",
        "--board", args.board, "--store", args.store, "--processes", str(args.processes),
        "--concurrency", str(args.concurrency), "--name", "bench", "--log-level", "WARNING",
    ]  # fmt: skip
    async with open_board(args.board) as board:
        # Its lines go to stderr (logged by the harness), not among the result lines.
        process = await anyio.open_process(
            command, stdout=sys.stderr, stderr=sys.stderr, cwd=os.getcwd()
        )
        try:
            with anyio.fail_after(120):
                while len(await board.conductors()) < args.processes:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            started = time.perf_counter()
            await post_jobs(board, args.n, "noop", batch=500)
            with anyio.fail_after(max(60.0, args.n / 25)):
                while await board.job_count(state=JobState.COMPLETE) < args.n:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            seconds = time.perf_counter() - started
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(60):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"aioconductor run --processes exited {process.returncode}")
    return {"n": args.n, "seconds": seconds, "rate": args.n / seconds, "processes": args.processes}


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "version":
        return _common.version_of("aioconductor-taskflow", "anyio", "pydantic", "redis", "asyncpg")
    command = {
        "post": cmd_post,
        "drain": cmd_drain,
        "serve": cmd_serve,
        "latency": cmd_latency,
        "inflight": cmd_inflight,
        "share": cmd_share,
        "hold": cmd_hold,
        "processes": cmd_processes,
    }[args.command]
    return await command(args)


def main(argv: list[str] | None = None) -> int:
    """Run one driver command and print its result line."""
    args = _parser().parse_args(argv)
    if args.gc_young:
        # The conductor's process, set as the command sets its own (aioconductor.tuning).
        tune_gc(args.gc_young)
    result = anyio.run(_main, args)
    _common.emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
