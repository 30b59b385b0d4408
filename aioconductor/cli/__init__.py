"""The ``aioconductor`` command: run conductors, post and inspect jobs, and the demo.

Errors are one clear line on stderr and a non-zero exit, never a traceback. The command's
parts: :mod:`~aioconductor.cli.parser` (the subcommands and their options),
:mod:`~aioconductor.cli.commands` (what each does), :mod:`~aioconductor.cli.showing` (``jobs``
and ``show``), :mod:`~aioconductor.cli.progress` (a job's progress in ``show``, read from its
store), :mod:`~aioconductor.cli.jobids` (ids and their prefixes),
:mod:`~aioconductor.cli.stores` (which store ``run`` and ``migrate`` use),
:mod:`~aioconductor.cli.supervisor` (``run --processes N``: one conductor per process),
:mod:`~aioconductor.cli.times` (times and durations) and :mod:`~aioconductor.cli.output` (every
line it prints, user data escaped).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import anyio

from aioconductor.cli.commands import run_command
from aioconductor.cli.output import echo
from aioconductor.cli.parser import DISTRIBUTION
from aioconductor.cli.parser import build_parser
from aioconductor.errors import AioconductorError
from aioconductor.errors import DependencyMissing

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return anyio.run(run_command, args, backend_options=_loop_options(args))
    except KeyboardInterrupt:
        return 130
    except (AioconductorError, OSError, ValueError) as exc:
        echo(f"aioconductor {args.command}: error: {exc}", err=True)
        return 1


def _loop_options(args: argparse.Namespace) -> dict[str, Any]:
    """anyio's options for the event loop ``--loop`` asks for."""
    if getattr(args, "loop", "asyncio") != "uvloop":
        return {}
    try:
        import uvloop  # noqa: F401  # anyio imports it; checked here for a clear error
    except ImportError:
        raise DependencyMissing(
            f"--loop uvloop needs uvloop: pip install '{DISTRIBUTION}[uvloop]'"
        ) from None
    return {"use_uvloop": True}
