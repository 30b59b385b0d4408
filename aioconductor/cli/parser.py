"""The ``aioconductor`` command line: its subcommands and their options."""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aioconductor.models import JobState
from aioconductor.tuning import GC_YOUNG

__all__ = [
    "BOARD_ENV",
    "DISTRIBUTION",
    "STORE_ENV",
    "build_parser",
    "duration",
    "process_count",
    "retention_age",
    "version_text",
]

#: The distribution's name on the package index (``pip install aioconductor-taskflow``); the
#: import name is ``aioconductor``. (``aioconductor`` on PyPI is an unrelated project.)
DISTRIBUTION = "aioconductor-taskflow"

#: The environment variable a board URL is read from when ``--board`` is not given.
BOARD_ENV = "AIOCONDUCTOR_BOARD_URL"
#: The environment variable a store URL is read from when ``--store`` is not given.
STORE_ENV = "AIOCONDUCTOR_STORE_URL"


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}


def duration(text: str) -> float:
    """Seconds from ``90``, ``1.5``, ``45s``, ``30m``, ``12h``, ``7d`` or ``2w`` (argparse type)."""
    value = text.strip().lower()
    scale = _UNITS.get(value[-1:], None)
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (seconds, or a number with s, m, h, d or w)"
        ) from None
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration >= 0")
    return seconds


def retention_age(text: str) -> float | None:
    """A :func:`duration`, or None for ``forever`` (argparse type)."""
    return None if text.strip().lower() == "forever" else duration(text)


def gc_young(text: str) -> int:
    """A garbage collector threshold >= 0 (0: the interpreter's own, untouched; argparse
    type)."""
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return count


def process_count(text: str) -> int:
    """A number of processes >= 1, or ``auto`` for this machine's CPU count (argparse type)."""
    if text.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes >= 1 or 'auto'")
    return count


def version_text() -> str:
    """What ``aioconductor --version`` prints: the distribution's name and version (from its
    installed metadata), the import name and where it is imported from, and Python's version."""
    from importlib import metadata

    import aioconductor

    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "(not installed: imported from a source tree)"
    where = Path(aioconductor.__file__).parent
    return (
        f"{DISTRIBUTION} {version} (import name aioconductor, from {where}; "
        f"Python {platform.python_version()})"
    )


class _VersionAction(argparse.Action):
    """``--version``: print :func:`version_text` and exit (read only when asked for)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``aioconductor`` command's parser: one subcommand per verb, each with its options."""
    parser = argparse.ArgumentParser(
        prog="aioconductor", description="Run conductors and manage jobs on a job board."
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print the distribution, its version and the import name, and exit",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_board(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--board",
            default=os.environ.get(BOARD_ENV),
            help=f"the board URL (default: ${BOARD_ENV})",
        )
        return p

    def with_utc(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--utc", action="store_true", help="times in UTC (default: local time, ISO 8601)"
        )
        return p

    job_id_help = "the job's id, or a unique prefix of it (8 characters are usually enough)"

    run = with_board(sub.add_parser("run", help="run a conductor until SIGINT/SIGTERM"))
    run.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV),
        help=f"the store URL (default: ${STORE_ENV}, else the board URL where its backend has "
        "a store: SQLite, Redis, PostgreSQL; else in memory, with a warning)",
    )
    run.add_argument(
        "--app",
        required=True,
        help="the flow registry, as module:attribute (imported with the current folder on "
        "the path)",
    )
    run.add_argument(
        "--schedules",
        default=None,
        metavar="MODULE:ATTR",
        help="periodic jobs to post: a Schedule or a list of them, as module:attribute",
    )
    run.add_argument("--concurrency", type=int, default=64, help="jobs run at once")
    run.add_argument("--name", default=f"conductor-{os.getpid()}", help="a label")
    run.add_argument("--lease", type=float, default=30.0, help="lease in seconds")
    run.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to drain")
    run.add_argument("--max-dispatches", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument(
        "--processes",
        type=process_count,
        default=1,
        metavar="N",
        help="run N conductor processes under one supervisor (auto: one per CPU), named "
        "NAME-1 ... NAME-N; it restarts one that dies and forwards SIGINT/SIGTERM to all "
        "(default 1: this process is the conductor)",
    )
    # A child of the supervisor: its log lines say its name; it drains if the supervisor dies.
    run.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    run.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log lines of every logger (the root logger: the library's and your tasks') "
        "at this level and above, on stderr with each job's context (one line per finished "
        "job at INFO)",
    )
    _add_keep(run, "COMPLETE", 7, "ended (7d, 12h, 'forever'; default 7d)")
    _add_keep(run, "TRASHED", 30, "were trashed (default 30d)")
    run.add_argument(
        "--gc-young",
        type=gc_young,
        default=GC_YOUNG,
        metavar="N",
        help="collect Python's youngest garbage generation every N allocations (default "
        f"{GC_YOUNG:,}; at CPython's own 700 a conductor spends about a tenth of its CPU "
        "collecting); 0 leaves the interpreter's setting",
    )
    run.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help=f"the event loop (uvloop: pip install '{DISTRIBUTION}[uvloop]')",
    )

    post = with_board(sub.add_parser("post", help="post a job"))
    post.add_argument("name", help="the job's name")
    post.add_argument("flow", help="the registered flow to run")
    post.add_argument("args", nargs="?", default="{}", help="the job's args as a JSON object")
    post.add_argument("--priority", type=int, default=0)
    post.add_argument("--max-attempts", type=int, default=3)
    post.add_argument("--delay", type=float, default=None, help="seconds before it may run")
    post.add_argument(
        "--key",
        default=None,
        help="an idempotency key: if a job holds it, nothing is posted and that job's id printed",
    )
    post.add_argument(
        "--retries", type=int, default=None, help="run it again up to N times if its flow fails"
    )
    post.add_argument(
        "--retry-base", type=float, default=1.0, help="the first retry's delay in seconds"
    )
    post.add_argument(
        "--limit-key",
        default=None,
        metavar="KEY",
        help="the fleet-wide concurrency limit the job counts against (see 'limits set')",
    )

    jobs = with_utc(with_board(sub.add_parser("jobs", help="list jobs")))
    jobs.add_argument("--state", choices=[s.value for s in JobState], type=str.upper)
    jobs.add_argument(
        "--json", action="store_true", help="one JSON object per line (times as epoch seconds)"
    )

    show = with_utc(with_board(sub.add_parser("show", help="show one job, by id or by key")))
    which = show.add_mutually_exclusive_group(required=True)
    which.add_argument("job_id", nargs="?", help=job_id_help)
    which.add_argument("--key", help="the job's idempotency key")
    show.add_argument(
        "--json",
        action="store_true",
        help='the job as JSON (times as epoch seconds), its progress under "progress"',
    )
    show.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV),
        help=f"the store to read the job's progress from, read-only (default: ${STORE_ENV}, "
        "else the board URL where its backend has a store: SQLite, Redis, PostgreSQL)",
    )

    trash = with_board(
        sub.add_parser("trash", help="drop a job now, without reverting what it did")
    )
    trash.add_argument("job_id", help=job_id_help)
    trash.add_argument("--reason", default="trashed by an operator")

    cancel = with_board(
        sub.add_parser(
            "cancel",
            help="stop a job and revert what it did (ends it at once if nobody runs it)",
        )
    )
    cancel.add_argument("job_id", help=job_id_help)
    cancel.add_argument("--reason", default="cancelled by an operator")

    _add_limits(sub, with_board)

    purge = with_board(sub.add_parser("purge", help="delete finished jobs past an age"))
    purge.add_argument(
        "--older-than",
        type=duration,
        required=True,
        metavar="AGE",
        help="delete jobs that ended at least this long ago (90, 30m, 12h, 7d)",
    )
    purge.add_argument(
        "--state",
        action="append",
        choices=[JobState.COMPLETE.value, JobState.TRASHED.value],
        type=str.upper,
        help="only jobs in this state (repeatable; default both)",
    )
    purge.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV),
        help=f"also delete the jobs' logbooks from this store (default: ${STORE_ENV})",
    )

    with_utc(with_board(sub.add_parser("conductors", help="list the conductors alive")))

    schedules = with_utc(
        with_board(
            sub.add_parser("schedules", help="list schedules: next tick, last tick, last job")
        )
    )
    schedules.add_argument("--json", action="store_true", help="one JSON object per line")

    dashboard = with_board(sub.add_parser("dashboard", help="serve the web dashboard"))
    dashboard.add_argument("--store", default=os.environ.get(STORE_ENV), help="the store URL")
    dashboard.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    dashboard.add_argument("--port", type=int, default=8000, help="the port to listen on")
    dashboard.add_argument(
        "--allow-actions",
        action="store_true",
        help="allow cancelling, trashing and re-posting jobs",
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
        help=f"the store URL (default: ${STORE_ENV}, else the board URL where its backend has "
        "a store: SQLite, Redis, PostgreSQL)",
    )

    demo = sub.add_parser("demo", help="the order-saga demo on a SQLite board (no server)")
    demo.add_argument("--jobs", type=int, default=200, help="orders to post")
    demo.add_argument("--concurrency", type=int, default=32)
    demo.add_argument("--folder", type=Path, default=None, help="keep the SQLite file here")
    return parser


def _add_keep(run: argparse.ArgumentParser, state: str, days: int, after: str) -> None:
    """``--keep-<state> AGE``: how long ``state`` jobs are kept (``days`` by default)."""
    run.add_argument(
        f"--keep-{state.lower()}",
        type=retention_age,
        default=days * 86_400.0,
        metavar="AGE",
        help=f"purge {state} jobs this long after they {after}",
    )


def _add_limits(sub: Any, with_board: Callable[[argparse.ArgumentParser], Any]) -> None:
    """``limits [--json]``, ``limits set KEY N`` and ``limits remove KEY``."""
    limits = with_board(
        sub.add_parser("limits", help="list the fleet-wide concurrency limits, or set one")
    )
    limits.add_argument("--json", action="store_true", help="one JSON object per line")
    verbs = limits.add_subparsers(dest="limits_action", metavar="ACTION")
    set_limit = verbs.add_parser("set", help="allow at most N jobs of KEY to be claimed at once")
    set_limit.add_argument("key", metavar="KEY", help="the limit key jobs are posted with")
    set_limit.add_argument("limit", metavar="N", type=int, help="0 pauses the key's jobs")
    remove = verbs.add_parser("remove", help="remove the limit of KEY (its jobs run freely)")
    remove.add_argument("key", metavar="KEY")
    for verb in (set_limit, remove):
        # SUPPRESS: a --board given before the action is kept, not reset to the default.
        verb.add_argument("--board", default=argparse.SUPPRESS, help="the board URL")
