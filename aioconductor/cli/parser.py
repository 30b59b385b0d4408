"""The ``aioconductor`` command line: its subcommands and their options."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from aioconductor.models import JobState

__all__ = ["BOARD_ENV", "STORE_ENV", "build_parser"]

#: The environment variable a board URL is read from when ``--board`` is not given.
BOARD_ENV = "AIOCONDUCTOR_BOARD_URL"
#: The environment variable a store URL is read from when ``--store`` is not given.
STORE_ENV = "AIOCONDUCTOR_STORE_URL"


def build_parser() -> argparse.ArgumentParser:
    """The ``aioconductor`` command's parser: one subcommand per verb, each with its options."""
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
