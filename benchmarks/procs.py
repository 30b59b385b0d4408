"""Running driver processes with a time bound: one result line each, or a clear error.

Every driver runs in a session of its own, so a stuck one is killed with its children (by its
process group id, never by name).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from benchmarks.peers._common import READY_MARK, RESULT_MARK

__all__ = ["DriverError", "run_driver", "run_together", "serving"]

REPO = Path(__file__).resolve().parent.parent


class DriverError(Exception):
    """A driver failed, timed out or printed no result."""


def _tail(text: str) -> str:
    """The last line of a driver's output: the exception, when it raised (the rest is logged)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(5)


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # Drivers of peers run with their own interpreter; nothing of ours may leak into them.
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _spawn(
    argv: Sequence[str], env: dict[str, str] | None, *, stderr: int
) -> subprocess.Popen[str]:
    """A driver in a session of its own (killed with its children by process group)."""
    return subprocess.Popen(
        list(argv),
        cwd=REPO,
        env=_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )


def _log(log: Path | None, argv: Sequence[str], out: str, err: str) -> None:
    if log is None:
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"$ {' '.join(argv)}\n{out}{err}\n")


def run_driver(
    argv: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> dict[str, Any]:
    """Run ``argv`` until it exits (at most ``timeout`` seconds) and return its result line.

    Raises:
        DriverError: it timed out (and was killed), failed, or printed no result line.
    """
    proc = _spawn(argv, env, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        _log(log, argv, out, err)
        raise DriverError(f"timed out after {timeout:.0f} s (killed)") from None
    except BaseException:
        _kill_group(proc)
        raise
    _log(log, argv, out, err)
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            if proc.returncode == 0:
                return result
    raise DriverError(f"exit status {proc.returncode}: {_tail(err or out) or 'no output'}")


def _pump(stream: IO[str], sink: list[str], ready: threading.Event) -> None:
    for line in stream:
        sink.append(line)
        if line.strip() == READY_MARK:
            ready.set()
    ready.set()


@contextlib.contextmanager
def serving(
    argv: Sequence[str],
    *,
    ready_timeout: float = 60.0,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[subprocess.Popen[str]]:
    """A worker started with ``argv``, once it printed ``BENCH-READY``; stopped afterwards
    (SIGTERM, then SIGKILL of its process group after 10 s).

    Raises:
        DriverError: it exited or did not get ready in time.
    """
    proc = _spawn(argv, env, stderr=subprocess.STDOUT)
    lines: list[str] = []
    ready = threading.Event()
    assert proc.stdout is not None
    pump = threading.Thread(target=_pump, args=(proc.stdout, lines, ready), daemon=True)
    pump.start()
    try:
        if not ready.wait(ready_timeout) or proc.poll() is not None:
            raise DriverError(
                f"the worker did not get ready in {ready_timeout:.0f} s: "
                f"{_tail(''.join(lines)) or 'no output'}"
            )
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            _kill_group(proc)
        else:
            # The worker is gone; its children (if any) go with its group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        pump.join(5)
        _log(log, argv, "".join(lines), "")


def run_together(
    argvs: Sequence[Sequence[str]],
    barrier: Path,
    *,
    timeout: float,
    ready_timeout: float = 60.0,
    log: Path | None = None,
    on_start: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Start every ``argv``; once all printed ``BENCH-READY``, create ``barrier`` (they start
    work when it exists), call ``on_start``, and return each one's result line, in order.

    Raises:
        DriverError: one did not get ready, timed out or failed (all are then killed).
    """
    with contextlib.ExitStack() as stack:
        procs = []
        pumps: list[tuple[list[str], threading.Event]] = []
        for argv in argvs:
            proc = _spawn(argv, None, stderr=subprocess.STDOUT)
            stack.callback(_kill_group, proc)
            lines: list[str] = []
            ready = threading.Event()
            assert proc.stdout is not None
            threading.Thread(target=_pump, args=(proc.stdout, lines, ready), daemon=True).start()
            procs.append(proc)
            pumps.append((lines, ready))
        deadline = time.monotonic() + ready_timeout
        for proc, (lines, ready) in zip(procs, pumps, strict=True):
            if not ready.wait(max(0.0, deadline - time.monotonic())) or proc.poll() is not None:
                raise DriverError(f"a worker did not get ready: {_tail(''.join(lines))}")
        barrier.touch()
        if on_start is not None:
            on_start()
        results = []
        deadline = time.monotonic() + timeout
        for argv, proc, (lines, _) in zip(argvs, procs, pumps, strict=True):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise DriverError(f"timed out after {timeout:.0f} s (killed)") from None
            time.sleep(0.05)  # let the pump read the last lines
            _log(log, argv, "".join(lines), "")
            found = [line for line in lines if line.startswith(RESULT_MARK)]
            if proc.returncode != 0 or not found:
                raise DriverError(
                    f"exit status {proc.returncode}: {_tail(''.join(lines)) or 'no output'}"
                )
            results.append(json.loads(found[-1][len(RESULT_MARK) :]))
        return results
