"""What each subcommand does (the ones on a board get it open, and close it after)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import pydantic

from aioconductor.boards import JobBoard
from aioconductor.boards import open_board
from aioconductor.boards.base import PostOptions
from aioconductor.cli.jobids import resolve_job_id
from aioconductor.cli.output import echo
from aioconductor.cli.output import echo_json
from aioconductor.cli.output import run_display
from aioconductor.cli.output import run_logging
from aioconductor.cli.output import table
from aioconductor.cli.parser import BOARD_ENV
from aioconductor.cli.parser import DISTRIBUTION
from aioconductor.cli.showing import cmd_jobs
from aioconductor.cli.showing import cmd_show
from aioconductor.cli.stores import describe_stores
from aioconductor.cli.stores import store_url_for
from aioconductor.cli.times import human_duration
from aioconductor.cli.times import when
from aioconductor.conductor import Conductor
from aioconductor.conductor import Retention
from aioconductor.errors import ConfigurationError
from aioconductor.errors import DependencyMissing
from aioconductor.models import JobState
from aioconductor.models import Outcome
from aioconductor.models import RetryPolicy
from aioconductor.persistence import open_store
from aioconductor.registry import FlowRegistry
from aioconductor.schedules import load_schedules
from aioconductor.schedules import schedule_status
from aioconductor.tuning import tune_gc

__all__ = ["current_folder_on_path", "run_command"]


async def run_command(args: argparse.Namespace) -> int:
    """Run the command ``args`` names; returns the exit status."""
    if args.command == "demo":
        from aioconductor.demo import run_demo

        if args.jobs < 1:
            raise ConfigurationError("--jobs must be at least 1")
        await run_demo(jobs=args.jobs, concurrency=args.concurrency, folder=args.folder)
        return 0
    if not args.board:
        raise ConfigurationError(f"give the board URL with --board or ${BOARD_ENV}")
    if args.command == "migrate":
        return await _cmd_migrate(args)
    if args.command == "run" and args.processes > 1:
        from aioconductor.cli.supervisor import supervise

        # Fail once, here, rather than in a crash loop of every child: the app and the
        # schedules must import.
        current_folder_on_path()
        FlowRegistry.load(args.app)
        if args.schedules:
            load_schedules(args.schedules)

        return await supervise(args)
    if args.command == "dashboard":
        try:
            from aioconductor.dashboard._hosts import AllowedHosts
        except ImportError:
            pass  # the command says which extra is missing
        else:  # a bad --allow-host is refused before any I/O
            AllowedHosts([*filter(None, [args.host]), *args.allow_host])
    # A command that only reads never creates or migrates a board's tables or topics.
    async with open_board(args.board, migrate=not _reads_only(args)) as board:
        return await _BOARD_COMMANDS[args.command](board, args)


#: The commands that only read the board (the dashboard writes only through its actions,
#: which need the board's schema there already).
_READ_ONLY = frozenset({"jobs", "show", "conductors", "schedules", "dashboard"})


def _reads_only(args: argparse.Namespace) -> bool:
    if args.command == "limits":
        return getattr(args, "limits_action", None) in (None, "list")
    return args.command in _READ_ONLY


async def _cmd_migrate(args: argparse.Namespace) -> int:
    """Connect the board and the store, which creates or upgrades their tables.

    Migrations are idempotent and take a lock, so running this while conductors start is safe.
    """
    async with open_board(args.board) as board:
        echo(f"board: {board!r} is up to date")
    store_url = store_url_for(args.board, args.store)
    if store_url is None:
        scheme = args.board.split("://", 1)[0]
        echo(f"store: none (a {scheme}:// board has no store of its own: give --store URL)")
        return 0
    async with open_store(store_url) as store:
        echo(f"store: {store!r} is up to date")
    return 0


def current_folder_on_path() -> None:
    """Put the current folder first on ``sys.path`` (as uvicorn, celery and arq do), so that
    ``--app myapp.flows:flows`` imports from the project a command is run in."""
    folder = os.getcwd()
    if folder not in sys.path:
        sys.path.insert(0, folder)


async def _cmd_run(board: JobBoard, args: argparse.Namespace) -> int:
    current_folder_on_path()
    if args.gc_young:
        # This process is the conductor's (see aioconductor.tuning).
        tune_gc(args.gc_young)
    flows = FlowRegistry.load(args.app)
    schedules = load_schedules(args.schedules) if args.schedules else []
    store_url = store_url_for(args.board, args.store)
    store = open_store(store_url) if store_url else None
    conductor = Conductor(
        args.name,
        board,
        store=store,
        flows=flows,
        max_concurrency=args.concurrency,
        lease=args.lease,
        drain_timeout=args.drain_timeout,
        retention=_retention(args),
        schedules=schedules,
    )
    supervised = args.supervised
    with (
        run_logging(args.log_level) as console,
        _named_log_lines(args.name if supervised else None),
    ):
        describe_stores(
            logging.getLogger("aioconductor.cli"), args.board, store_url, bool(args.store)
        )
        async with conductor, anyio.create_task_group() as tg:
            label = f"{args.name}: " if supervised else ""
            tg.start_soon(_stop_on_signals, conductor, tg.cancel_scope, label)
            if supervised:
                tg.start_soon(_stop_when_orphaned, conductor, os.getppid())
            echo(f"conductor {args.name} ({conductor.owner}) running on {board!r}")
            # Under a supervisor, N children would draw N status lines on one terminal.
            with run_display(conductor, None if supervised else console) as display:
                tg.start_soon(display)
                await conductor.run(max_dispatches=args.max_dispatches)
            tg.cancel_scope.cancel()
    stats = conductor.stats
    echo(
        f"conductor {args.name} stopped: {stats.consumed} consumed, {stats.retried} retried, "
        f"{stats.released} released, {stats.abandoned} abandoned, {stats.trashed} trashed"
    )
    return 0


def _retention(args: argparse.Namespace) -> Retention | None:
    if args.keep_complete is None and args.keep_trashed is None:
        return None
    return Retention(complete=args.keep_complete, trashed=args.keep_trashed)


async def _stop_on_signals(conductor: Conductor, scope: anyio.CancelScope, label: str = "") -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if conductor.stopping:
                # A second signal: stop at once, abandoning what runs.
                conductor.stop(drain=False)
            else:
                echo(f"{label}{signal.Signals(signum).name}: draining", err=True)
                conductor.stop()


async def _stop_when_orphaned(conductor: Conductor, parent: int) -> None:
    """Drain when the supervisor that started this process is gone (killed with SIGKILL, its
    children are left running: this one then belongs to another parent)."""
    while os.getppid() == parent:  # noqa: ASYNC110  # no event tells a parent's death
        await anyio.sleep(1.0)
    if not conductor.stopping:
        echo(f"{conductor.name}: the supervisor (pid {parent}) is gone: draining", err=True)
        conductor.stop()


@contextlib.contextmanager
def _named_log_lines(name: str | None) -> Iterator[None]:
    """Start every log line made in this process with ``[name]`` (None: leave them as they
    are): a supervisor's children share one stderr."""
    if name is None:
        yield
        return
    make = logging.getLogRecordFactory()
    prefix = f"[{name}] "

    def named(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        # The message is a %-format when the record has args: a % in the name is escaped.
        record.msg = (prefix.replace("%", "%%") if record.args else prefix) + str(record.msg)
        return record

    logging.setLogRecordFactory(named)
    try:
        yield
    finally:
        logging.setLogRecordFactory(make)


def _retry_policy(args: argparse.Namespace) -> RetryPolicy | None:
    if args.retries is None:
        return None
    try:
        return RetryPolicy(retries=args.retries, base=args.retry_base)
    except ValueError as exc:
        first = exc.errors()[0] if isinstance(exc, pydantic.ValidationError) else None
        what = f"{first['loc'][0]}: {first['msg']}" if first else str(exc)
        raise ConfigurationError(f"--retries/--retry-base: {what}") from None


async def _cmd_post(board: JobBoard, args: argparse.Namespace) -> int:
    try:
        job_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"the args are not valid JSON: {exc}") from None
    options: PostOptions = {
        "priority": args.priority,
        "max_attempts": args.max_attempts,
        "delay": args.delay,
        "retry": _retry_policy(args),
        "limit_key": args.limit_key,
    }
    if args.key is None:
        job = await board.post(args.name, args.flow, job_args, **options)
    else:
        job, created = await board.get_or_post(
            args.name, args.flow, job_args, key=args.key, **options
        )
        if not created:
            echo(
                f"key {args.key!r} is held by job {job.id} ({job.state}): nothing posted", err=True
            )
    echo(job.id)
    return 0


async def _cmd_trash(board: JobBoard, args: argparse.Namespace) -> int:
    job = await board.trash(await resolve_job_id(board, args.job_id), reason=args.reason)
    echo(f"{job.id} trashed: {job.trash_reason}")
    return 0


async def _cmd_cancel(board: JobBoard, args: argparse.Namespace) -> int:
    """Cancel a job and say what happened; 1 (like ``trash``) when it had ended already."""
    before = await board.get(await resolve_job_id(board, args.job_id))
    job = await board.cancel(before.id, reason=args.reason)
    if job.state.is_final:
        if not before.state.is_final and job.outcome is Outcome.CANCELLED:
            echo(f"{job.id} cancelled: ended COMPLETE (CANCELLED) at once: {job.cancel_reason}")
            return 0
        how = job.state.value if job.outcome is None else f"{job.state} ({job.outcome})"
        echo(f"aioconductor cancel: job {job.id} already ended {how}: unchanged", err=True)
        return 1
    if job.claim is not None and job.state is JobState.CLAIMED:
        what = f"its owner {job.owner} is stopping it and reverting what it did"
        if job.claim.expires_at <= time.time():
            what = f"the lease of its owner {job.owner} ran out, the next claim reverts it"
    else:  # given back flagged
        what = f"it is {job.state}, the next conductor to claim it reverts it"
    flagged = "was already flagged" if before.cancel_requested else "flagged"
    echo(f"{job.id} {flagged} for cancel: {what} (reason: {job.cancel_reason})")
    return 0


async def _cmd_limits(board: JobBoard, args: argparse.Namespace) -> int:
    """List the limits, or (``set``, ``remove``) change one."""
    if args.limits_action == "set":
        await board.set_limit(args.key, args.limit)
        claimed = next((i.claimed for i in await board.limits() if i.key == args.key), 0)
        most = "0 (its jobs are paused)" if args.limit == 0 else str(args.limit)
        echo(f"limit key {args.key!r}: at most {most} claimed at once, {claimed} claimed now")
        return 0
    if args.limits_action == "remove":
        if not any(info.key == args.key for info in await board.limits()):
            echo(f"limit key {args.key!r}: no limit set, nothing removed")
            return 0
        await board.set_limit(args.key, None)
        echo(f"limit key {args.key!r}: limit removed, its jobs are claimed freely")
        return 0
    found = await board.limits()
    if args.json:
        for info in found:
            echo_json(info.model_dump_json())
        return 0
    rows = [[info.key, str(info.limit), str(info.claimed)] for info in found]
    table(["key", "limit", "claimed"], rows, right={1, 2})
    return 0


async def _cmd_purge(board: JobBoard, args: argparse.Namespace) -> int:
    states = args.state or [JobState.COMPLETE.value, JobState.TRASHED.value]
    if args.store:
        async with open_store(args.store) as store:
            count = await board.purge(older_than=args.older_than, states=states, store=store)
    else:
        count = await board.purge(older_than=args.older_than, states=states)
    age = human_duration(args.older_than)
    echo(f"purged {count} jobs ({', '.join(states)}) that ended {age} ago or more")
    return 0


async def _cmd_conductors(board: JobBoard, args: argparse.Namespace) -> int:
    rows = []
    for info in await board.conductors():
        running = info.meta.get("running", "?")
        capacity = info.meta.get("capacity", "?")
        heartbeat = when(info.heartbeat_at, utc=args.utc)
        rows.append([info.name, info.owner, f"{running}/{capacity}", heartbeat])
    table(["name", "owner", "running", "heartbeat"], rows, right={2})
    return 0


async def _cmd_schedules(board: JobBoard, args: argparse.Namespace) -> int:
    found = await schedule_status(board)
    if args.json:
        for status in found:
            echo_json(json.dumps(dataclasses.asdict(status), sort_keys=True))
        return 0
    rows = []
    for status in found:
        spec = status.published
        timing = f"cron {spec['cron']} {spec.get('timezone', 'UTC')}" if "cron" in spec else ""
        if "every" in spec:
            timing = f"every {spec['every']} s"
        last_job = "-"
        if status.last_tick is not None:
            last_job = status.last_job_id or "(purged)"
        rows.append(
            [
                status.name,
                str(spec.get("flow", "-")),
                timing or "(no conductor runs it)",
                when(status.next_tick, utc=args.utc),
                when(status.last_tick, utc=args.utc),
                last_job,
                status.last_job_state or "-",
                str(len(status.conductors)),
            ]
        )
    headers = ["name", "flow", "when", "next tick", "last tick", "last job", "state", "runners"]
    table(headers, rows, right={7})
    return 0


async def _cmd_dashboard(board: JobBoard, args: argparse.Namespace) -> int:
    """Serve the dashboard until SIGINT/SIGTERM."""
    from aioconductor.dashboard import create_app

    try:
        import uvicorn
    except ImportError:
        raise DependencyMissing(
            f"the dashboard server needs uvicorn: pip install '{DISTRIBUTION}[dashboard]'"
        ) from None
    store = open_store(args.store) if args.store else None
    # The --host given is a name the dashboard is served on, even when it is not an address.
    hosts = [*filter(None, [args.host]), *args.allow_host]
    app = create_app(board, store, allow_actions=args.allow_actions, allowed_hosts=hosts)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    actions = "on" if args.allow_actions else "off"
    echo(f"dashboard of {board!r} on http://{args.host}:{args.port}/ (actions {actions})")
    try:
        await uvicorn.Server(config).serve()
    finally:
        await app.state.dashboard.aclose()
    return 0


#: The subcommands that work on a board, by name.
_BOARD_COMMANDS: dict[str, Callable[[JobBoard, argparse.Namespace], Awaitable[int]]] = {
    "run": _cmd_run,
    "post": _cmd_post,
    "jobs": cmd_jobs,
    "show": cmd_show,
    "trash": _cmd_trash,
    "cancel": _cmd_cancel,
    "limits": _cmd_limits,
    "purge": _cmd_purge,
    "conductors": _cmd_conductors,
    "schedules": _cmd_schedules,
    "dashboard": _cmd_dashboard,
}
