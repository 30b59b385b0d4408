"""Flows for the chaos scenarios; every task records its side effect with the job's token.

A job's args carry ``job`` (the job's name, unique per scenario). The conductor's
``Event.JOB_CLAIMED`` listener (see :mod:`tests.chaos.worker`) sets ``CURRENT[name]`` to the
claim's job id and token before the engine starts, so a task can say under which claim it ran.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from aioconductor import FlowRegistry, RetryPolicy, Task, linear
from tests import gauge as shared_gauge

from .history import HistoryWriter

flows = FlowRegistry()

#: Set by the process that runs conductors: where effects are recorded.
RECORDER: list[HistoryWriter] = []
#: job name -> (job id, token) of the newest claim this process made.
CURRENT: dict[str, tuple[str, int]] = {}


def record_effect(job: str, task: str, ev: str = "effect") -> None:
    if RECORDER:
        job_id, token = CURRENT.get(job, ("?", -1))
        RECORDER[0].write(ev, job=job_id, task=task, token=token)


class Effect(Task):
    """Records its effect, then works for ``work`` seconds (an await, so it can be cancelled)."""

    async def execute(self, job: str, work: float = 0.0) -> str:
        record_effect(job, self.name)
        if work:
            await anyio.sleep(work)
        return f"{self.name}:{job}"


class Undone(Effect):
    """An :class:`Effect` whose revert records a ``revert`` event (what a cancel undoes), then
    works half as long as ``execute`` (so a conductor may die while it reverts)."""

    async def revert(self, job: str, work: float = 0.0) -> None:
        record_effect(job, self.name, "revert")
        if work:
            await anyio.sleep(work / 2)


class Limited(Undone):
    """An :class:`Undone` that, given a ``gauge`` file, holds a slot of it while it works and
    while it reverts (a job being reverted still holds its claim, so its limit's slot): the
    concurrent runs of the jobs of limit key ``limit`` across processes (see
    :func:`gauge_enter`)."""

    async def execute(self, job: str, work: float = 0.0, gauge: str = "", limit: str = "") -> str:
        record_effect(job, self.name)
        with _gauged(gauge, limit, job):
            if work:
                await anyio.sleep(work)
        return f"{self.name}:{job}"

    async def revert(self, job: str, work: float = 0.0, gauge: str = "", limit: str = "") -> None:
        with _gauged(gauge, limit, job):
            await super().revert(job, work)


@contextlib.contextmanager
def _gauged(gauge: str, key: str, job: str) -> Iterator[None]:
    """Hold a slot of ``gauge`` (if one is named) for ``job`` of limit key ``key``."""
    if not gauge:
        yield
        return
    gauge_enter(gauge, key, job)
    try:
        yield
    finally:
        gauge_leave(gauge, key, job)


def gauge_enter(gauge: str, key: str, job: str) -> None:
    """A run of ``job`` (limit key ``key``) starts in this process: count it in the gauge
    (``tests/gauge.py``'s state, plus ``seq``) and record a ``gauge_enter`` event with the
    gauge's ``seq``, both under the gauge's lock, so the checker replays the gauge exactly."""
    with shared_gauge.locked(gauge) as state:
        active: dict[str, int] = state["active"]
        if job in active:
            state["overlaps"].append(job)
        active[job] = os.getpid()
        state["peak"] = max(state["peak"], len(active))
        state["runs"][job] = state["runs"].get(job, 0) + 1
        _record_gauge(state, "gauge_enter", key, job)


def gauge_leave(gauge: str, key: str, job: str) -> None:
    """The run of ``job`` in this process ended (finished, failed or cancelled)."""
    with shared_gauge.locked(gauge) as state:
        if state["active"].get(job) == os.getpid():
            del state["active"][job]
        _record_gauge(state, "gauge_leave", key, job)


def _record_gauge(state: dict[str, Any], ev: str, key: str, job: str) -> None:
    state["seq"] = state.get("seq", 0) + 1
    if RECORDER:
        job_id, token = CURRENT.get(job, ("?", -1))
        RECORDER[0].write(ev, job=job_id, key=key, token=token, seq=state["seq"])


class Hang(Task):
    """Hangs for an hour: its timeout must end it."""

    async def execute(self, job: str) -> None:
        record_effect(job, self.name)
        await anyio.sleep(3600)


class Block(Task):
    """Blocks the event loop for ``block`` seconds the first time it runs for a job."""

    async def execute(self, job: str, marker: str, block: float) -> str:
        record_effect(job, self.name)
        path = Path(marker)
        if not path.exists():
            path.touch()
            # Blocks the whole event loop on purpose: no renewal can happen meanwhile.
            time.sleep(block)  # noqa: ASYNC251
        return job


class FailOnce(Task):
    """Fails the first time it runs for a job (a marker file in ``markers`` says it did)."""

    async def execute(self, job: str, markers: str) -> str:
        record_effect(job, self.name)
        marker = Path(markers) / job
        if not marker.exists():
            marker.touch()
            raise RuntimeError(f"{job}: the first run fails")
        return job


class Die(Task):
    """Kills its process at once, every time."""

    async def execute(self, job: str) -> None:
        record_effect(job, self.name)
        os._exit(17)


@flows.register("chaos3")
def chaos3(**args: Any) -> Any:
    """Three tasks in order, each recording its effect."""
    return linear(
        "chaos3", Effect("a", provides="a"), Effect("b", provides="b"), Effect("c", provides="c")
    )


@flows.register("flaky3", retry=RetryPolicy(retries=2, base=0.05, jitter=0.0))
def flaky3(**args: Any) -> Any:
    """A task, one that fails the job's first run (retried by the job's policy), a last task."""
    return linear(
        "flaky3", Effect("a", provides="a"), FailOnce("b", provides="b"), Effect("c", provides="c")
    )


@flows.register("undo3")
def undo3(**args: Any) -> Any:
    """Three tasks in order, each recording its effect and its revert: the first and last work
    ``step`` seconds, the middle one ``work`` seconds, holding a slot of the gauge ``gauge``
    meanwhile when the job's args name one (``limit``: the job's limit key)."""
    return linear(
        "undo3",
        Undone("a", provides="a", rebind={"work": "step"}),
        Limited("b", provides="b"),
        Undone("c", provides="c", rebind={"work": "step"}),
    )


@flows.register("hung")
def hung(**args: Any) -> Any:
    """A task, then one that hangs past ``timeout``: reverted, consumed ``REVERTED``."""
    return linear("hung", Effect("a", provides="a"), Hang("hang", timeout=args["timeout"]))


@flows.register("blocker")
def blocker(**args: Any) -> Any:
    """A task, one that blocks the event loop (the first time), then a last task."""
    return linear(
        "blocker",
        Effect("a", provides="a"),
        Block("block", provides="b"),
        Effect("c", provides="c"),
    )


@flows.register("poison")
def poison(**args: Any) -> Any:
    """Kills the process that runs it, every time."""
    return linear("poison", Die("die"))
