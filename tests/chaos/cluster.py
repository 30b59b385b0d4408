"""Conductor processes for the chaos scenarios: start, SIGKILL, SIGSTOP/SIGCONT, always reaped.

The harness writes its own faults to ``harness.jsonl`` in the history folder, naming the victim's
owner (read from the ``start`` event the victim wrote), so the checker can measure how long its
jobs took to be claimed again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from aioconductor import Conductor, JobState, open_board, open_store
from aioconductor.boards import JobBoard

from .backends import FULL, Target
from .history import HistoryWriter, Report, check, load

REPO = Path(__file__).resolve().parents[2]


class Cluster:
    """Conductor processes on one target, each writing ``<name>.jsonl`` in ``folder``."""

    def __init__(
        self,
        target: Target,
        folder: Path,
        *,
        concurrency: int = 4,
        lease: float = 1.0,
        sweep: float = 0.5,
    ) -> None:
        self.target = target
        self.folder = folder
        self.concurrency = concurrency
        self.lease = lease
        self.sweep = sweep
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.harness = HistoryWriter(folder / "harness.jsonl", "harness")
        self.starts = 0
        self.exit_seconds: dict[str, float] = {}

    def start(self, name: str, *, concurrency: int | None = None) -> subprocess.Popen[bytes]:
        """Start (or restart) conductor ``name``."""
        command = [
            sys.executable, "-m", "tests.chaos.worker",
            "--board", self.target.board_url, "--store", self.target.store_url,
            "--history", str(self.folder / f"{name}.jsonl"), "--name", name,
            "--concurrency", str(concurrency or self.concurrency),
            "--lease", str(self.lease), "--sweep", str(self.sweep),
        ]  # fmt: skip
        with (self.folder / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
            )
        self.procs[name] = proc
        self.starts += 1
        return proc

    def owner(self, name: str) -> str | None:
        """The owner id of the newest incarnation of ``name`` (once it has started)."""
        path = self.folder / f"{name}.jsonl"
        pid = self.procs[name].pid
        owner = None
        if path.exists():
            for line in path.read_text().splitlines():
                if '"start"' in line:
                    with_start = json.loads(line)
                    if with_start["ev"] == "start" and with_start["pid"] == pid:
                        owner = with_start["owner"]
        return owner

    async def started(self, name: str, within: float = 30) -> str:
        """Wait until ``name`` runs; its owner id."""
        with anyio.fail_after(within):
            while (owner := self.owner(name)) is None:
                if self.procs[name].poll() is not None:
                    log = (self.folder / f"{name}.log").read_text()[-2000:]
                    raise AssertionError(f"conductor {name} exited early:\n{log}")
                await anyio.sleep(0.05)
        return owner

    def signal(self, name: str, sig: signal.Signals, ev: str) -> None:
        """Send ``sig`` to ``name`` and record it as fault ``ev``."""
        victim = self.owner(name)
        proc = self.procs[name]
        self.harness.write(ev, target=name, victim=victim, victim_pid=proc.pid)
        proc.send_signal(sig)
        if sig is signal.SIGKILL:
            proc.wait()

    def exited(self) -> dict[str, int]:
        """The conductors that exited on their own, with their exit codes."""
        return {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}

    def stop_all(self, within: float = 20) -> list[int | None]:
        """SIGTERM every conductor (they drain and exit 0); SIGKILL those still running after
        ``within`` seconds. ``self.exit_seconds`` says how long each took."""
        started = time.monotonic()
        for name, proc in self.procs.items():
            if proc.poll() is None:
                self.harness.write("term", target=name)
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        codes = []
        for name, proc in self.procs.items():
            try:
                proc.wait(max(0.1, started + within - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.exit_seconds[name] = round(time.monotonic() - started, 2)
            codes.append(proc.returncode)
        return codes

    def kill_all(self) -> None:
        """SIGKILL whatever still runs (the ``finally`` of every scenario)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.harness.close()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.folder.glob("*.log"))
        )


def history_folder(tmp_path: Path) -> Path:
    """A new folder for one scenario's history files."""
    folder = tmp_path / "history"
    folder.mkdir()
    return folder


async def post_jobs(
    board: JobBoard, count: int, *, prefix: str, flow: str = "chaos3", **kwargs: Any
) -> list[str]:
    """Post ``count`` jobs named ``<prefix><n>`` (their args carry the name as ``job``)."""
    extra = kwargs.pop("args", {})
    ids = []
    for n in range(count):
        name = f"{prefix}{n}"
        job = await board.post(name, flow, {"job": name, **extra}, **kwargs)
        ids.append(job.id)
    return ids


async def finished(board: JobBoard) -> int:
    """How many jobs are complete or trashed (0 when the board cannot be reached now)."""
    try:
        done = await board.job_count(state=JobState.COMPLETE)
        return done + await board.job_count(state=JobState.TRASHED)
    except Exception:
        return 0


async def wait_finished(
    board: JobBoard, total: int, within: float, cluster: Cluster | None = None
) -> None:
    """Wait until ``total`` jobs are finished; on a timeout, or once every conductor of
    ``cluster`` has exited, fail with the conductors' logs."""
    with anyio.move_on_after(within):
        while await finished(board) < total:
            if cluster is not None and len(cluster.exited()) == len(cluster.procs):
                break
            await anyio.sleep(0.2)
        else:
            return
    logs = cluster.logs() if cluster is not None else ""
    raise AssertionError(f"only {await finished(board)} of {total} jobs finished\n{logs}")


async def board_final(board: JobBoard) -> dict[str, Any]:
    """Every job on ``board`` at the end, by id."""
    return {job.id: job async for job in board.iterjobs()}


def report(
    scenario: str,
    backend: str,
    folder: Path,
    final: dict[str, Any],
    extra: dict[str, Any] | None = None,
    **kw: Any,
) -> Report:
    """Check the history of one scenario, print its figures (and ``extra`` ones) and append them
    to the report file (``AIOCONDUCTOR_CHAOS_REPORT``) when one is named."""
    result = check(load(folder), final, **kw)
    result.figures.update(extra or {})
    line = {"scenario": scenario, "backend": backend, "scale": "full" if FULL else "bounded"}
    line.update(result.figures)
    print(f"\nchaos {scenario}[{backend}]: {result.summary()}")
    out = os.environ.get("AIOCONDUCTOR_CHAOS_REPORT")
    if out:
        with Path(out).open("a") as f:
            f.write(json.dumps(line) + "\n")
    return result


@contextlib.asynccontextmanager
async def conductors_in_process(
    target: Target,
    folder: Path,
    count: int,
    *,
    concurrency: int = 4,
    lease: float = 1.0,
    sweep: float = 0.5,
) -> AsyncIterator[list[Conductor]]:
    """``count`` conductors in this process (each with its own board and store objects),
    recording their history like :mod:`tests.chaos.worker` does; stopped on exit."""
    from . import flows as chaos_flows
    from .worker import instrument

    effects = HistoryWriter(folder / "effects.jsonl", "in-process")
    chaos_flows.RECORDER[:] = [effects]
    conductors: list[Conductor] = []
    writers = [effects]
    try:
        for n in range(count):
            conductor = Conductor(
                f"c{n}",
                open_board(target.board_url, poll_interval=sweep),
                store=open_store(target.store_url),
                flows=chaos_flows.flows,
                max_concurrency=concurrency,
                lease=lease,
                sweep_interval=sweep,
                drain_timeout=5,
            )
            writers.append(HistoryWriter(folder / f"c{n}.jsonl", f"c{n}", conductor.owner))
            instrument(conductor, writers[-1])
            conductors.append(conductor)
        async with anyio.create_task_group() as tg:
            for conductor in conductors:
                await tg.start(conductor.run)
            try:
                yield conductors
            finally:
                for conductor in conductors:
                    conductor.stop(drain=False)
    finally:
        with anyio.CancelScope(shield=True):
            for conductor in conductors:
                await conductor.aclose()
        chaos_flows.RECORDER.clear()
        chaos_flows.CURRENT.clear()
        for writer in writers:
            writer.close()
