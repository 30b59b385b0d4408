"""The flows the aioconductor workloads run (``benchmarks.aioc_flows:flows``).

- ``noop``: one task that returns its input (the drain workload).
- ``durable``: three tasks in a line, each result saved to the store (the durable workload).
- ``record``: one task that records when it started (the latency workload).
- ``hold``: one task that waits until the driver releases it (the in-flight memory workload).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aioconductor import FlowRegistry, Task, linear
from benchmarks.peers._common import record_start

__all__ = ["HOLD", "flows", "set_recorder"]

flows = FlowRegistry()

#: Where the ``record`` task writes its start times (a file, or a hook when in-process).
_recorder: Callable[[Any], None] | None = None
#: The in-flight workload's ``hold`` tasks wait on this; set by the driver to release them.
HOLD: dict[str, Any] = {"event": None, "started": 0}


def set_recorder(record: str | Callable[[Any], None] | None) -> None:
    """Make the ``record`` task append to the file ``record``, or call ``record(key)``."""
    global _recorder
    if record is None or callable(record):
        _recorder = record
    else:
        path = record
        _recorder = lambda key: record_start(path, key)  # noqa: E731


class Echo(Task):
    """Returns its input: the cheapest task that still binds and provides a value."""

    async def execute(self, key: Any) -> Any:
        return key


class Step(Task):
    """One step of the durable flow: returns its input, tagged (its result is saved)."""

    async def execute(self, key: Any) -> Any:
        return [self.name, key]


class Record(Task):
    """Records the moment it starts, for the latency workload."""

    async def execute(self, key: Any) -> Any:
        if _recorder is not None:
            _recorder(key)
        return key


class Hold(Task):
    """Waits until the driver sets ``HOLD["event"]``: a job that stays in flight."""

    async def execute(self, key: Any) -> Any:
        HOLD["started"] += 1
        event = HOLD["event"]
        if event is not None:
            await event.wait()
        return key


# A task holds no per-run state, so one instance serves every running flow. Registered as they
# are (not by factories): a conductor whose store shares the board's server creates each job's
# run with its claim (one server call a job less), as a user's flow registered so gets.
flows.register("noop", linear("noop", Echo("echo", provides="echo")))
flows.register(
    "durable",
    linear(
        "durable",
        Step("one", provides="one"),
        Step("two", provides="two"),
        Step("three", provides="three"),
    ),
)
flows.register("record", linear("record", Record("record", provides="started")))
flows.register("hold", linear("hold", Hold("hold", provides="held")))
