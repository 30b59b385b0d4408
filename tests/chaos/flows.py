"""Flows for the chaos scenarios; every task records its side effect with the job's token.

A job's args carry ``job`` (the job's name, unique per scenario). The conductor's
``Event.JOB_CLAIMED`` listener (see :mod:`tests.chaos.worker`) sets ``CURRENT[name]`` to the
claim's job id and token before the engine starts, so a task can say under which claim it ran.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio

from aioconductor import FlowRegistry, RetryPolicy, Task, linear

from .history import HistoryWriter

flows = FlowRegistry()

#: Set by the process that runs conductors: where effects are recorded.
RECORDER: list[HistoryWriter] = []
#: job name -> (job id, token) of the newest claim this process made.
CURRENT: dict[str, tuple[str, int]] = {}


def record_effect(job: str, task: str) -> None:
    if RECORDER:
        job_id, token = CURRENT.get(job, ("?", -1))
        RECORDER[0].write("effect", job=job_id, task=task, token=token)


class Effect(Task):
    """Records its effect, then works for ``work`` seconds (an await, so it can be cancelled)."""

    async def execute(self, job: str, work: float = 0.0) -> str:
        record_effect(job, self.name)
        if work:
            await anyio.sleep(work)
        return f"{self.name}:{job}"


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
