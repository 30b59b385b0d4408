"""``aioconductor run --processes N``: one supervisor process keeping N conductor processes.

Each child is ``aioconductor run`` with the parent's options but ``--processes``, its own
``--name`` (the name given plus ``-1``, ``-2``, ...) and the hidden ``--supervised`` (its log
lines say its name; it drains if the supervisor disappears). The board and store URLs reach the
children through their environment (``$AIOCONDUCTOR_BOARD_URL``, ``$AIOCONDUCTOR_STORE_URL``),
never their command line, so no password shows in ``ps``.

The :class:`Supervisor`'s lifecycle: :meth:`Supervisor.run` starts every child and keeps it
running (a child that exits without being asked to is started again after a backoff: 0.5 s
doubling to 30 s, back to 0.5 s once a child ran 30 s); :meth:`Supervisor.stop` forwards a
signal to every child (SIGTERM or SIGINT: drain; the same again: stop now); a crash loop (5
deaths of one child within 60 s) stops every child gracefully and ends the run with an error.
``run`` returns the exit status: 0 after a requested stop when every child exited 0, else 1.

Children run in sessions of their own, so a terminal's Ctrl-C reaches the supervisor only,
which forwards it once (it would otherwise reach every child twice: "stop now").
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field

import anyio
from anyio.abc import Process

from aioconductor.cli.output import echo
from aioconductor.cli.parser import BOARD_ENV
from aioconductor.cli.parser import STORE_ENV
from aioconductor.cli.parser import build_parser
from aioconductor.cli.parser import retention_age

__all__ = ["Child", "Supervisor", "child_argv", "describe_exit", "supervise"]

#: The run options a child does not get from the parent as they are: the supervisor's own,
#: the name (each child has its own) and the URLs (passed in the environment).
_NOT_INHERITED = frozenset({"help", "processes", "supervised", "name", "board", "store"})


def describe_exit(returncode: int | None) -> str:
    """``exit code 1``, ``signal SIGKILL`` (a negative ``returncode``), or ``still running``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def _run_parser() -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            run: argparse.ArgumentParser = action.choices["run"]
            return run
    raise AssertionError("the parser has no run command")


def child_argv(args: argparse.Namespace, name: str) -> list[str]:
    """The ``run`` command line of the child ``name``: every run option of ``args`` that is
    not its default (but ``--processes``, ``--name``, ``--board`` and ``--store``), then
    ``--name NAME --supervised``."""
    argv = ["run"]
    for action in _run_parser()._actions:
        if not action.option_strings or action.dest in _NOT_INHERITED:
            continue
        value = getattr(args, action.dest, action.default)
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse._StoreTrueAction):
            argv += [flag] if value else []
        elif value != action.default:
            if value is None and action.type is not retention_age:
                raise ValueError(f"{flag} has no value to give a child")
            argv.append(f"{flag}={'forever' if value is None else value}")
    return [*argv, f"--name={name}", "--supervised"]


def child_env(args: argparse.Namespace) -> dict[str, str]:
    """This process's environment with the board URL (and the store URL, when given)."""
    env = dict(os.environ)
    env[BOARD_ENV] = args.board
    if args.store:
        env[STORE_ENV] = args.store
    else:
        env.pop(STORE_ENV, None)
    return env


@dataclass
class Child:
    """One slot of the supervisor: a named conductor process, started again when it dies."""

    name: str
    argv: list[str]
    process: Process | None = None
    #: The exit status of its last run (None before one ended).
    returncode: int | None = None
    #: When it died unasked, within the crash-loop window (monotonic seconds).
    deaths: collections.deque[float] = field(default_factory=collections.deque)
    #: The backoff before the next start.
    delay: float = 0.0

    @property
    def alive(self) -> bool:
        """Whether its process runs now."""
        return self.process is not None and self.process.returncode is None


class Supervisor:
    """Keeps one process per :class:`Child` running until :meth:`stop` or a crash loop.

    Args:
        children: (name, command line) of each child process.
        env: the children's environment (None: this process's).
        first_delay, max_delay: the restart backoff, doubling from ``first_delay``.
        stable_after: a child that ran this long starts its backoff from ``first_delay``.
        crash_limit, crash_window: this many deaths of one child within ``crash_window``
            seconds is a crash loop: every child is stopped and :meth:`run` returns 1.
        kill_after: seconds after the first stop signal when children still running are
            killed (SIGKILL); None waits for them however long they drain.
        say: where the supervisor's lines go (stderr by default).
    """

    def __init__(
        self,
        children: Sequence[tuple[str, Sequence[str]]],
        *,
        env: Mapping[str, str] | None = None,
        first_delay: float = 0.5,
        max_delay: float = 30.0,
        stable_after: float = 30.0,
        crash_limit: int = 5,
        crash_window: float = 60.0,
        kill_after: float | None = None,
        say: Callable[[str], None] = lambda line: echo(line, err=True),
    ) -> None:
        if not children:
            raise ValueError("a supervisor needs at least one child")
        self.children = [Child(name, list(argv), delay=first_delay) for name, argv in children]
        self.env = dict(env) if env is not None else None
        self.first_delay, self.max_delay = first_delay, max_delay
        self.stable_after = stable_after
        self.crash_limit, self.crash_window = crash_limit, crash_window
        self.kill_after = kill_after
        self.say = say
        #: Why the run failed (a crash loop), or None.
        self.failure: str | None = None
        self._stop_signals = 0
        self._stopped: anyio.Event | None = None  # made by run (an event needs the loop)

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested (by :meth:`stop` or a crash loop)."""
        return self._stop_signals > 0

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Forward ``signum`` to every child running: SIGTERM or SIGINT drains them, the same
        again stops them at once. No child is started again after the first stop."""
        self._stop_signals += 1
        if self._stopped is not None:
            self._stopped.set()
        for child in self.children:
            self._signal(child, signum)

    def _signal(self, child: Child, signum: int) -> None:
        signum = signal.Signals(signum)
        if child.alive and child.process is not None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signum)

    async def run(self, *, handle_signals: bool = False) -> int:
        """Start every child and keep them running until every one has exited after a stop;
        the exit status. ``handle_signals``: forward this process's SIGTERM and SIGINT."""
        self._stopped = anyio.Event()
        if self.stopping:
            self._stopped.set()
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(self._forward_signals)
            if self.kill_after is not None:
                tg.start_soon(self._kill_late, self.kill_after)
            async with anyio.create_task_group() as slots:
                for child in self.children:
                    slots.start_soon(self._keep, child)
            tg.cancel_scope.cancel()
        if self.failure is not None:
            echo(f"aioconductor run: error: {self.failure}", err=True)
            return 1
        failed = [c for c in self.children if c.returncode != 0]
        for child in failed:
            self.say(f"supervisor: {child.name} ended with {describe_exit(child.returncode)}")
        return 1 if failed else 0

    async def _keep(self, child: Child) -> None:
        while not self.stopping:
            started = time.monotonic()
            child.process = await anyio.open_process(
                child.argv,
                stdin=subprocess.DEVNULL,
                stdout=None,
                stderr=None,
                env=self.env,
                start_new_session=True,
            )
            if self.stopping:  # stopped while it started: it missed the signal
                self._signal(child, signal.SIGTERM)
            child.returncode = await child.process.wait()
            if self.stopping:
                return
            now = time.monotonic()
            if now - started >= self.stable_after:
                child.delay = self.first_delay
            child.deaths.append(now)
            while child.deaths[0] < now - self.crash_window:
                child.deaths.popleft()
            how = describe_exit(child.returncode)
            if len(child.deaths) >= self.crash_limit:
                self.failure = (
                    f"conductor {child.name} died {len(child.deaths)} times within "
                    f"{self.crash_window:g} s (last: {how}): crash loop, giving up "
                    "(every conductor stopped)"
                )
                self.stop(signal.SIGTERM)
                return
            self.say(
                f"supervisor: {child.name} (pid {child.process.pid}) "
                f"{'died' if (child.returncode or 0) < 0 else 'exited'} with {how} after "
                f"{now - started:.1f} s; starting it again in {child.delay:g} s"
            )
            with anyio.move_on_after(child.delay):
                await self._wait_stopped()
            child.delay = min(child.delay * 2, self.max_delay)

    async def _forward_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                running = sum(child.alive for child in self.children)
                if self.stopping:
                    self.say(f"supervisor: {name} again: {running} conductors stop now")
                else:
                    self.say(f"supervisor: {name}: draining {running} conductors")
                self.stop(signum)

    async def _wait_stopped(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    async def _kill_late(self, seconds: float) -> None:
        await self._wait_stopped()
        await anyio.sleep(seconds)
        for child in self.children:
            if child.alive:
                self.say(f"supervisor: {child.name} still runs {seconds:g} s after the stop: "
                         "killing it")  # fmt: skip
                self._signal(child, signal.SIGKILL)


async def supervise(args: argparse.Namespace) -> int:
    """``aioconductor run --processes N`` (N > 1): N children under a :class:`Supervisor`,
    until SIGTERM/SIGINT; the exit status."""
    names = [f"{args.name}-{n}" for n in range(1, args.processes + 1)]
    supervisor = Supervisor(
        [
            (name, [sys.executable, "-m", "aioconductor.cli", *child_argv(args, name)])
            for name in names
        ],
        env=child_env(args),
        # A child drains for up to drain_timeout; past that and some slack, it is stuck.
        kill_after=args.drain_timeout + 30.0,
    )
    echo(
        f"supervisor (pid {os.getpid()}): {len(names)} conductors {names[0]} ... {names[-1]}; "
        "SIGTERM/SIGINT drains them all",
        err=True,
    )
    return await supervisor.run(handle_signals=True)
