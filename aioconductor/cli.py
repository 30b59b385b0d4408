"""The ``aioconductor`` command: run conductors, post and inspect jobs, and the demo.

Errors are one clear line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from aioconductor.errors import AioconductorError, ConfigurationError
from aioconductor.models import Job, JobState

__all__ = ["main"]

BOARD_ENV = "AIOCONDUCTOR_BOARD_URL"
STORE_ENV = "AIOCONDUCTOR_STORE_URL"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aioconductor", description="Run conductors and manage jobs on a job board."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_board(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--board",
            default=os.environ.get(BOARD_ENV),
            help=f"the board URL (default: ${BOARD_ENV})",
        )
        return p

    run = with_board(sub.add_parser("run", help="run a conductor until SIGINT/SIGTERM"))
    run.add_argument("--store", default=os.environ.get(STORE_ENV), help="the store URL")
    run.add_argument("--app", required=True, help="the flow registry, as module:attribute")
    run.add_argument("--concurrency", type=int, default=64, help="jobs run at once")
    run.add_argument("--name", default=f"conductor-{os.getpid()}", help="a label")
    run.add_argument("--lease", type=float, default=30.0, help="lease in seconds")
    run.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to drain")
    run.add_argument("--max-dispatches", type=int, default=None, help=argparse.SUPPRESS)

    post = with_board(sub.add_parser("post", help="post a job"))
    post.add_argument("name", help="the job's name")
    post.add_argument("flow", help="the registered flow to run")
    post.add_argument("args", nargs="?", default="{}", help="the job's args as a JSON object")
    post.add_argument("--priority", type=int, default=0)
    post.add_argument("--max-attempts", type=int, default=3)
    post.add_argument("--delay", type=float, default=None, help="seconds before it may run")

    jobs = with_board(sub.add_parser("jobs", help="list jobs"))
    jobs.add_argument("--state", choices=[s.value for s in JobState], type=str.upper)
    jobs.add_argument("--json", action="store_true", help="one JSON object per line")

    show = with_board(sub.add_parser("show", help="show one job"))
    show.add_argument("job_id")

    trash = with_board(sub.add_parser("trash", help="trash a job"))
    trash.add_argument("job_id")
    trash.add_argument("--reason", default="trashed by an operator")

    with_board(sub.add_parser("conductors", help="list the conductors alive"))

    demo = sub.add_parser("demo", help="the order-saga demo on a SQLite board (no server)")
    demo.add_argument("--jobs", type=int, default=200, help="orders to post")
    demo.add_argument("--concurrency", type=int, default=32)
    demo.add_argument("--folder", type=Path, default=None, help="keep the SQLite file here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return anyio.run(_dispatch, args)
    except KeyboardInterrupt:
        return 130
    except (AioconductorError, OSError, ValueError) as exc:
        print(f"aioconductor {args.command}: error: {exc}", file=sys.stderr)
        return 1


async def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from aioconductor.demo import run_demo

        if args.jobs < 1:
            raise ConfigurationError("--jobs must be at least 1")
        await run_demo(jobs=args.jobs, concurrency=args.concurrency, folder=args.folder)
        return 0
    if not args.board:
        raise ConfigurationError(f"give the board URL with --board or ${BOARD_ENV}")
    from aioconductor.boards import open_board

    async with open_board(args.board) as board:
        command: Any = globals()[f"_cmd_{args.command}"]
        status: int = await command(board, args)
        return status


async def _cmd_run(board: Any, args: argparse.Namespace) -> int:
    from aioconductor.conductor import Conductor
    from aioconductor.persistence import open_store
    from aioconductor.registry import FlowRegistry

    flows = FlowRegistry.load(args.app)
    store = open_store(args.store) if args.store else None
    conductor = Conductor(
        args.name,
        board,
        store=store,
        flows=flows,
        max_concurrency=args.concurrency,
        lease=args.lease,
        drain_timeout=args.drain_timeout,
    )
    async with conductor, anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signals, conductor, tg.cancel_scope)
        print(f"conductor {args.name} ({conductor.owner}) running on {board!r}", flush=True)
        await conductor.run(max_dispatches=args.max_dispatches)
        tg.cancel_scope.cancel()
    stats = conductor.stats
    print(
        f"conductor {args.name} stopped: {stats.consumed} consumed, {stats.abandoned} "
        f"abandoned, {stats.trashed} trashed",
        flush=True,
    )
    return 0


async def _stop_on_signals(conductor: Any, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if conductor.stopping:
                # A second signal: stop at once, abandoning what runs.
                conductor.stop(drain=False)
            else:
                print(f"{signal.Signals(signum).name}: draining", file=sys.stderr, flush=True)
                conductor.stop()


async def _cmd_post(board: Any, args: argparse.Namespace) -> int:
    try:
        job_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"the args are not valid JSON: {exc}") from None
    job = await board.post(
        args.name,
        args.flow,
        job_args,
        priority=args.priority,
        max_attempts=args.max_attempts,
        delay=args.delay,
    )
    print(job.id)
    return 0


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _row(job: Job) -> str:
    outcome = job.outcome or job.trash_reason or ""
    return (
        f"{job.id}  {job.state.value:<9}  {job.priority:>4}  {job.attempts}/{job.max_attempts}"
        f"  {job.flow[:20]:<20}  {job.name[:30]:<30}  {str(outcome)[:40]}"
    )


async def _cmd_jobs(board: Any, args: argparse.Namespace) -> int:
    state = JobState(args.state) if args.state else None
    if not args.json:
        print(f"{'id':<36}  {'state':<9}  {'prio':>4}  try  {'flow':<20}  {'name':<30}  outcome")
    async for job in board.iterjobs(state=state):
        print(job.model_dump_json() if args.json else _row(job))
    return 0


async def _cmd_show(board: Any, args: argparse.Namespace) -> int:
    job = await board.get(args.job_id)
    print(json.dumps(job.model_dump(mode="json"), indent=2, sort_keys=True))
    return 0


async def _cmd_trash(board: Any, args: argparse.Namespace) -> int:
    job = await board.trash(args.job_id, reason=args.reason)
    print(f"{job.id} trashed: {job.trash_reason}")
    return 0


async def _cmd_conductors(board: Any, args: argparse.Namespace) -> int:
    infos = await board.conductors()
    print(f"{'name':<24}  {'owner':<58}  running  heartbeat")
    for info in infos:
        running = info.meta.get("running", "?")
        capacity = info.meta.get("capacity", "?")
        print(
            f"{info.name:<24}  {info.owner:<58}  {running}/{capacity}  {_when(info.heartbeat_at)}"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
