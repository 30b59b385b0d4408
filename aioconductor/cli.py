"""The ``aioconductor`` command: run conductors, post and inspect jobs, and the demo.

Errors are one clear line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pydantic

from aioconductor.errors import AioconductorError, ConfigurationError, DependencyMissing
from aioconductor.models import Job, JobState, RetryPolicy

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
    run.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log lines at this level and above (one line per finished job at INFO)",
    )
    run.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="the event loop (uvloop: pip install 'aioconductor[uvloop]')",
    )

    post = with_board(sub.add_parser("post", help="post a job"))
    post.add_argument("name", help="the job's name")
    post.add_argument("flow", help="the registered flow to run")
    post.add_argument("args", nargs="?", default="{}", help="the job's args as a JSON object")
    post.add_argument("--priority", type=int, default=0)
    post.add_argument("--max-attempts", type=int, default=3)
    post.add_argument("--delay", type=float, default=None, help="seconds before it may run")
    post.add_argument(
        "--retries", type=int, default=None, help="run it again up to N times if its flow fails"
    )
    post.add_argument(
        "--retry-base", type=float, default=1.0, help="the first retry's delay in seconds"
    )

    jobs = with_board(sub.add_parser("jobs", help="list jobs"))
    jobs.add_argument("--state", choices=[s.value for s in JobState], type=str.upper)
    jobs.add_argument("--json", action="store_true", help="one JSON object per line")

    show = with_board(sub.add_parser("show", help="show one job"))
    show.add_argument("job_id")

    trash = with_board(sub.add_parser("trash", help="trash a job"))
    trash.add_argument("job_id")
    trash.add_argument("--reason", default="trashed by an operator")

    with_board(sub.add_parser("conductors", help="list the conductors alive"))

    dashboard = with_board(sub.add_parser("dashboard", help="serve the web dashboard"))
    dashboard.add_argument("--store", default=os.environ.get(STORE_ENV), help="the store URL")
    dashboard.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    dashboard.add_argument("--port", type=int, default=8000, help="the port to listen on")
    dashboard.add_argument(
        "--allow-actions", action="store_true", help="allow trashing and re-posting jobs"
    )
    dashboard.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="answer requests for this host name too, NAME or NAME:PORT (repeatable); others "
        "than the address served on (and localhost on a loopback address) get 400",
    )

    migrate = with_board(
        sub.add_parser("migrate", help="create or upgrade the board's and store's tables")
    )
    migrate.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV),
        help=f"the store URL (default: ${STORE_ENV}, else the board URL)",
    )

    demo = sub.add_parser("demo", help="the order-saga demo on a SQLite board (no server)")
    demo.add_argument("--jobs", type=int, default=200, help="orders to post")
    demo.add_argument("--concurrency", type=int, default=32)
    demo.add_argument("--folder", type=Path, default=None, help="keep the SQLite file here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return anyio.run(_dispatch, args, backend_options=_loop_options(args))
    except KeyboardInterrupt:
        return 130
    except (AioconductorError, OSError, ValueError) as exc:
        _echo(f"aioconductor {args.command}: error: {exc}", err=True)
        return 1


def _loop_options(args: argparse.Namespace) -> dict[str, Any]:
    """anyio's options for the event loop ``--loop`` asks for."""
    if getattr(args, "loop", "asyncio") != "uvloop":
        return {}
    try:
        import uvloop  # noqa: F401  # anyio imports it; checked here for a clear error
    except ImportError:
        raise DependencyMissing(
            "--loop uvloop needs uvloop: pip install 'aioconductor[uvloop]'"
        ) from None
    return {"use_uvloop": True}


async def _dispatch(args: argparse.Namespace) -> int:
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
    from aioconductor.boards import open_board

    async with open_board(args.board) as board:
        command: Any = globals()[f"_cmd_{args.command}"]
        status: int = await command(board, args)
        return status


async def _cmd_migrate(args: argparse.Namespace) -> int:
    """Connect the board and the store, which creates or upgrades their tables.

    Migrations are idempotent and take a lock, so running this while conductors start is safe.
    """
    from aioconductor.boards import open_board
    from aioconductor.persistence import open_store

    for what, opener, url in (
        ("board", open_board, args.board),
        ("store", open_store, args.store or args.board),
    ):
        async with opener(url) as resource:
            _echo(f"{what}: {resource!r} is up to date")
    return 0


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
        _echo(f"conductor {args.name} ({conductor.owner}) running on {board!r}")
        with _run_display(conductor, args.log_level) as display:
            tg.start_soon(display)
            await conductor.run(max_dispatches=args.max_dispatches)
        tg.cancel_scope.cancel()
    stats = conductor.stats
    _echo(
        f"conductor {args.name} stopped: {stats.consumed} consumed, {stats.retried} retried, "
        f"{stats.released} released, {stats.abandoned} abandoned, {stats.trashed} trashed"
    )
    return 0


async def _stop_on_signals(conductor: Any, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if conductor.stopping:
                # A second signal: stop at once, abandoning what runs.
                conductor.stop(drain=False)
            else:
                _echo(f"{signal.Signals(signum).name}: draining", err=True)
                conductor.stop()


def _retry_policy(args: argparse.Namespace) -> RetryPolicy | None:
    if args.retries is None:
        return None
    try:
        return RetryPolicy(retries=args.retries, base=args.retry_base)
    except ValueError as exc:
        first = exc.errors()[0] if isinstance(exc, pydantic.ValidationError) else None
        what = f"{first['loc'][0]}: {first['msg']}" if first else str(exc)
        raise ConfigurationError(f"--retries/--retry-base: {what}") from None


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
        retry=_retry_policy(args),
    )
    _echo(job.id)
    return 0


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _row(job: Job) -> list[str]:
    outcome = job.outcome or job.trash_reason or ""
    return [
        job.id,
        job.state.value,
        str(job.priority),
        f"{job.attempts}/{job.max_attempts}",
        job.flow[:30],
        job.name[:40],
        str(outcome)[:60],
    ]


async def _cmd_jobs(board: Any, args: argparse.Namespace) -> int:
    state = JobState(args.state) if args.state else None
    if args.json:
        async for job in board.iterjobs(state=state):
            _echo_json(job.model_dump_json())
        return 0
    rows = [_row(job) async for job in board.iterjobs(state=state)]
    headers = ["id", "state", "prio", "try", "flow", "name", "outcome"]
    _table(headers, rows, right={2, 3})
    return 0


async def _cmd_show(board: Any, args: argparse.Namespace) -> int:
    job = await board.get(args.job_id)
    _echo_json(json.dumps(job.model_dump(mode="json"), indent=2, sort_keys=True))
    return 0


async def _cmd_trash(board: Any, args: argparse.Namespace) -> int:
    job = await board.trash(args.job_id, reason=args.reason)
    _echo(f"{job.id} trashed: {job.trash_reason}")
    return 0


async def _cmd_conductors(board: Any, args: argparse.Namespace) -> int:
    rows = []
    for info in await board.conductors():
        running = info.meta.get("running", "?")
        capacity = info.meta.get("capacity", "?")
        rows.append([info.name, info.owner, f"{running}/{capacity}", _when(info.heartbeat_at)])
    _table(["name", "owner", "running", "heartbeat"], rows, right={2})
    return 0


async def _cmd_dashboard(board: Any, args: argparse.Namespace) -> int:
    """Serve the dashboard until SIGINT/SIGTERM."""
    from aioconductor.dashboard import create_app
    from aioconductor.persistence import open_store

    try:
        import uvicorn
    except ImportError:
        raise DependencyMissing(
            "the dashboard server needs uvicorn: pip install 'aioconductor[dashboard]'"
        ) from None
    store = open_store(args.store) if args.store else None
    # The --host given is a name the dashboard is served on, even when it is not an address.
    hosts = [*filter(None, [args.host]), *args.allow_host]
    app = create_app(board, store, allow_actions=args.allow_actions, allowed_hosts=hosts)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    actions = "on" if args.allow_actions else "off"
    _echo(f"dashboard of {board!r} on http://{args.host}:{args.port}/ (actions {actions})")
    try:
        await uvicorn.Server(config).serve()
    finally:
        await app.state.dashboard.aclose()
    return 0


# -- output: every line the command prints -------------------------------------------------------
# Job names, flows, owners, reasons, results and conductor names are anyone's data. They leave
# through the helpers below only, which print them as text (never rich markup: ``[/]`` would
# crash rich, ``[link=...]`` would draw a link) with their control characters written as
# escapes (``\x1b``): a name cannot clear the screen, set a hyperlink or forge a line.
# rich (the ``cli`` extra) draws tables and the status line on a terminal; piped output, and
# machines without rich, get plain aligned columns that scripts can cut.

#: C0, DEL and C1 controls, and the bidirectional controls that reorder what a terminal shows
#: (a name could otherwise display as something it is not).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    return _NAMED_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def _visible(value: object) -> str:
    """``str(value)`` with every control character written as an escape (``\\x1b``, ``\\n``,
    ``\\u202e``)."""
    return _CONTROL.sub(lambda m: _escape(m[0]), str(value))


def _echo(line: object, *, err: bool = False) -> None:
    """Print ``line`` as text on stdout (stderr with ``err``), control characters escaped."""
    print(_visible(line), file=sys.stderr if err else sys.stdout, flush=True)


def _echo_json(text: str) -> None:
    """Print JSON text, with the control characters JSON leaves raw (DEL, C1) as ``\\u`` escapes.

    JSON escapes C0 inside strings already, so a raw newline here is the layout's own.
    """
    lines = text.split("\n")
    escaped = (_CONTROL.sub(lambda m: f"\\u{ord(m[0]):04x}", line) for line in lines)
    print("\n".join(escaped), flush=True)


def _rich_text(value: object) -> Any:
    """``value`` as a rich ``Text``: shown as it is, never parsed as markup or emoji codes."""
    from rich.text import Text

    return Text(_visible(value))


class _VisibleFormatter(logging.Formatter):
    """A log formatter whose output is text: a record's line escaped whole (a newline in a job
    name cannot forge a line), a traceback line by line."""

    def format(self, record: logging.LogRecord) -> str:
        # A copy: the record is shared with other handlers, and a traceback another handler
        # cached on it raw must not be printed here.
        record = copy.copy(record)
        record.exc_text = None
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return _visible(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        # split, not splitlines: that would also break lines at \x1c-\x1e and \x85, unshown.
        return "\n".join(map(_visible, super().formatException(ei).split("\n")))

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(map(_visible, super().formatStack(stack_info).split("\n")))


def _rich_console(stream: Any) -> Any:
    """A rich console on ``stream`` if it is a terminal and rich is installed, else None."""
    if not stream.isatty():
        return None
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(file=stream)


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: set[int] | None = None
) -> None:
    """Print ``rows`` under ``headers`` in aligned columns (right-aligned: ``right``)."""
    right = right or set()
    headers = [_visible(header) for header in headers]
    rows = [[_visible(cell) for cell in row] for row in rows]
    console = _rich_console(sys.stdout)
    if console is not None:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
        for index, header in enumerate(headers):
            table.add_column(Text(header), justify="right" if index in right else "left")
        for row in rows:
            table.add_row(*map(Text, row))
        console.print(table)
        return
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(line(headers))
    for row in rows:
        print(line(row))


def _status_text(conductor: Any) -> str:
    stats = conductor.stats
    return (
        f"{conductor.name}: running {len(conductor.running)}/{conductor.max_concurrency}"
        f" | claimed {stats.claimed} | consumed {stats.consumed} (ok {stats.succeeded},"
        f" reverted {stats.reverted}, failed {stats.failed}) | retried {stats.retried}"
        f" | released {stats.released} | abandoned {stats.abandoned}"
        f" | trashed {stats.trashed} | lease lost {stats.lease_lost}"
    )


@contextlib.contextmanager
def _run_display(conductor: Any, level: str) -> Iterator[Callable[[], Coroutine[Any, Any, None]]]:
    """Log lines (one per finished job) to stderr and, on a terminal, a live status line.

    Yields the coroutine function that keeps the status line current (start it in a task).
    """
    from aioconductor.events import Event
    from aioconductor.logs import FORMAT, JobContextFilter

    console = _rich_console(sys.stderr)
    handler: logging.Handler
    if console is not None:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False)
        handler.setFormatter(_VisibleFormatter())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_VisibleFormatter(FORMAT))
    handler.addFilter(JobContextFilter(missing="-"))
    package = logging.getLogger("aioconductor")
    old_level = package.level
    package.addHandler(handler)
    package.setLevel(level)
    log = logging.getLogger("aioconductor.cli")

    def on_end(event: str, details: Mapping[str, Any]) -> None:
        how = f"{event.removeprefix('job_')} {details.get('outcome') or ''}".strip()
        log.info(
            "job %s (%s): %s after %.3f s",
            details["job_name"],
            details["flow"],
            how,
            details.get("duration", 0.0),
        )

    ends = (
        Event.JOB_CONSUMED,
        Event.JOB_RETRIED,
        Event.JOB_RELEASED,
        Event.JOB_ABANDONED,
        Event.JOB_TRASHED,
        Event.LEASE_LOST,
    )
    for event in ends:
        conductor.notifier.register(event, on_end)

    async def keep_status() -> None:
        if console is None:
            return
        with console.status(_rich_text(_status_text(conductor))) as status:
            try:
                while True:
                    await anyio.sleep(0.25)
                    status.update(_rich_text(_status_text(conductor)))
            finally:
                # The last figures, drawn once more as the line goes away.
                status.update(_rich_text(_status_text(conductor)))

    try:
        yield keep_status
    finally:
        for event in ends:
            conductor.notifier.deregister(event, on_end)
        package.removeHandler(handler)
        package.setLevel(old_level)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
