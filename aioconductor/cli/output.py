"""Every line the command prints.

Job names, flows, owners, reasons, results and conductor names are anyone's data. They leave
through the helpers below only, which print them as text (never rich markup: ``[/]`` would
crash rich, ``[link=...]`` would draw a link) with their control characters written as
escapes (``\\x1b``): a name cannot clear the screen, set a hyperlink or forge a line.
rich (the ``cli`` extra) draws tables and the status line on a terminal; piped output, and
machines without rich, get plain aligned columns that scripts can cut.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any

import anyio

from aioconductor.conductor import Conductor

__all__ = [
    "VisibleFormatter",
    "echo",
    "echo_json",
    "rich_console",
    "rich_text",
    "run_display",
    "run_logging",
    "status_text",
    "table",
    "visible",
]


#: C0, DEL and C1 controls, and the bidirectional controls that reorder what a terminal shows
#: (a name could otherwise display as something it is not).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    return _NAMED_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(value: object) -> str:
    """``str(value)`` with every control character written as an escape (``\\x1b``, ``\\n``,
    ``\\u202e``)."""
    return _CONTROL.sub(lambda m: _escape(m[0]), str(value))


def echo(line: object, *, err: bool = False) -> None:
    """Print ``line`` as text on stdout (stderr with ``err``), control characters escaped."""
    print(visible(line), file=sys.stderr if err else sys.stdout, flush=True)


def echo_json(text: str) -> None:
    """Print JSON text, with the control characters JSON leaves raw (DEL, C1) as ``\\u`` escapes.

    JSON escapes C0 inside strings already, so a raw newline here is the layout's own.
    """
    lines = text.split("\n")
    escaped = (_CONTROL.sub(lambda m: f"\\u{ord(m[0]):04x}", line) for line in lines)
    print("\n".join(escaped), flush=True)


def rich_text(value: object) -> Any:
    """``value`` as a rich ``Text``: shown as it is, never parsed as markup or emoji codes."""
    from rich.text import Text

    return Text(visible(value))


class VisibleFormatter(logging.Formatter):
    """A log formatter whose output is text: a record's line escaped whole (a newline in a job
    name cannot forge a line), a traceback line by line."""

    def format(self, record: logging.LogRecord) -> str:
        # A copy: the record is shared with other handlers, and a traceback another handler
        # cached on it raw must not be printed here.
        record = copy.copy(record)
        record.exc_text = None
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return visible(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        # split, not splitlines: that would also break lines at \x1c-\x1e and \x85, unshown.
        return "\n".join(map(visible, super().formatException(ei).split("\n")))

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(map(visible, super().formatStack(stack_info).split("\n")))


def rich_console(stream: Any) -> Any:
    """A rich console on ``stream`` if it is a terminal and rich is installed, else None."""
    if not stream.isatty():
        return None
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(file=stream)


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: set[int] | None = None
) -> None:
    """Print ``rows`` under ``headers`` in aligned columns (right-aligned: ``right``)."""
    right = right or set()
    headers = [visible(header) for header in headers]
    rows = [[visible(cell) for cell in row] for row in rows]
    console = rich_console(sys.stdout)
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


def status_text(conductor: Conductor) -> str:
    """The live status line: the conductor's load and counters."""
    stats = conductor.stats
    return (
        f"{conductor.name}: running {len(conductor.running)}/{conductor.max_concurrency}"
        f" | claimed {stats.claimed} | consumed {stats.consumed} (ok {stats.succeeded},"
        f" reverted {stats.reverted}, failed {stats.failed}) | retried {stats.retried}"
        f" | released {stats.released} | abandoned {stats.abandoned}"
        f" | trashed {stats.trashed} | lease lost {stats.lease_lost}"
    )


@contextlib.contextmanager
def run_logging(level: str) -> Iterator[Any]:
    """Log lines to stderr from every logger (the root's handler) at ``level`` and above, each
    with its job's context (:data:`aioconductor.logs.FORMAT`): the library's lines and the
    tasks' own ``logging`` calls alike. On a terminal with rich, through rich.

    Yields the rich console on stderr (None when not a terminal or without rich), for
    :func:`run_display`'s status line to share with the log lines.
    """
    from aioconductor.logs import FORMAT
    from aioconductor.logs import JobContextFilter

    console = rich_console(sys.stderr)
    handler: logging.Handler
    if console is not None:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False)
        handler.setFormatter(VisibleFormatter())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(VisibleFormatter(FORMAT))
    handler.addFilter(JobContextFilter(missing="-"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield console
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@contextlib.contextmanager
def run_display(
    conductor: Conductor, console: Any
) -> Iterator[Callable[[], Coroutine[Any, Any, None]]]:
    """Log a line per finished job (at INFO, through :func:`run_logging`'s handler) and, on a
    terminal (``console`` not None), keep a live status line.

    Yields the coroutine function that keeps the status line current (start it in a task).
    """
    from aioconductor.cli.times import human_duration
    from aioconductor.events import Event

    log = logging.getLogger("aioconductor.cli")

    def on_end(event: str, details: Mapping[str, Any]) -> None:
        how = f"{event.removeprefix('job_')} {details.get('outcome') or ''}".strip()
        log.info(
            "job %s (%s): %s after %s",
            details["job_name"],
            details["flow"],
            how,
            human_duration(details.get("duration", 0.0)),
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
        with console.status(rich_text(status_text(conductor))) as status:
            try:
                while True:
                    await anyio.sleep(0.25)
                    status.update(rich_text(status_text(conductor)))
            finally:
                # The last figures, drawn once more as the line goes away.
                status.update(rich_text(status_text(conductor)))

    try:
        yield keep_status
    finally:
        for event in ends:
            conductor.notifier.deregister(event, on_end)
