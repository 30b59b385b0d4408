"""Flows used by the conductor, CLI and crash tests (importable as ``tests.apps:flows``).

Tasks that must be counted across processes append a line to the file named by the job's
``record`` arg: ``<task> <job key>``.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import anyio

from aioconductor import FlowRegistry, Task, linear, task

flows = FlowRegistry()

#: (task name, key) -> executions, for in-process tests.
EXECUTIONS: collections.Counter[tuple[str, Any]] = collections.Counter()
REVERTS: collections.Counter[tuple[str, Any]] = collections.Counter()
#: Set by tests to release tasks that wait for it.
GATE: dict[str, anyio.Event] = {}


def _record(record: str | None, line: str) -> None:
    if record:
        with Path(record).open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


class Step(Task):
    """Counts its executions and reverts; waits for ``GATE[gate]`` when the job names one."""

    async def execute(self, key: Any, gate: str | None = None, record: str | None = None) -> Any:
        EXECUTIONS[(self.name, key)] += 1
        _record(record, f"{self.name} {key}")
        if gate is not None and self.name == "second":
            await GATE[gate].wait()
        return f"{self.name}:{key}"

    async def revert(self, key: Any, **kwargs: Any) -> None:
        REVERTS[(self.name, key)] += 1


class Boom(Task):
    """Always fails."""

    async def execute(self, key: Any) -> None:
        raise RuntimeError(f"boom {key}")


@task(provides="echo")
async def echo(key: Any) -> Any:
    """Returns its input."""
    return key


# Registered as it is (not by a factory): where the store can, a job's run is created with its
# claim (``aioconductor.conductor.starting``).
flows.register("noop", linear("noop", echo))


@flows.register("steps")
def steps_flow(**args: Any) -> Any:
    return linear(
        "steps",
        Step("first", provides="first"),
        Step("second", provides="second"),
        Step("third", provides="third"),
    )


@flows.register("fails")
def failing_flow(**args: Any) -> Any:
    return linear("fails", Step("first", provides="first"), Boom("boom"))


@flows.register("needs-x")
def strict_flow(*, x: int) -> Any:
    return linear("needs-x", Step("first", provides="first"))


@flows.register("factory-raises")
def broken_flow(**args: Any) -> Any:
    raise ValueError("this factory is broken")


@flows.register("sleepy")
def sleepy_flow(**args: Any) -> Any:
    @task(provides="slept")
    async def nap(key: Any, seconds: float = 0.0, record: str | None = None) -> Any:
        _record(record, f"nap-start {key}")
        await anyio.sleep(seconds)
        _record(record, f"nap-end {key}")
        return key

    return linear("sleepy", Step("first", provides="first"), nap)


@flows.register("poison")
def poison_flow(**args: Any) -> Any:
    @task
    async def die(key: Any, record: str | None = None) -> None:
        _record(record, f"die {key}")
        os._exit(17)

    return linear("poison", die)


@flows.register("held")
def held_flow(**args: Any) -> Any:
    """first, then ``hold`` (waits until the file named ``release`` exists), then third."""

    @task(provides="held")
    async def hold(key: Any, release: str, record: str | None = None) -> Any:
        _record(record, f"hold-start {key}")
        while not Path(release).exists():
            await anyio.sleep(0.01)
        _record(record, f"hold-end {key}")
        return key

    return linear("held", Step("first", provides="first"), hold, Step("third", provides="third"))


@flows.register("tally")
def tally_flow(**args: Any) -> Any:
    """One task that appends ``<key> <pid>`` to the file ``record`` (one write, O_APPEND)."""
    return linear("tally", _TALLY)


class _Tally(Task):
    async def execute(self, key: Any, record: str) -> int:
        fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{key} {os.getpid()}\n".encode())
        finally:
            os.close(fd)
        return os.getpid()


_TALLY = _Tally("tally", provides="pid")


@flows.register("gauged")
def gauged_flow(**args: Any) -> Any:
    """One task that holds a slot of the gauge file ``gauge`` for ``hold`` seconds (see
    ``tests/gauge.py``): the peak of concurrent runs across processes."""
    return linear("gauged", _GAUGED)


class _Gauged(Task):
    async def execute(self, key: str, gauge: str, hold: float) -> int:
        from tests import gauge as shared

        shared.enter(gauge, key)
        try:
            await anyio.sleep(hold)
        finally:
            shared.leave(gauge, key)
        return os.getpid()


_GAUGED = _Gauged("gauged", provides="pid")
