"""The engine: tasks, flow patterns, retry controllers, and the async engine that runs them."""

from __future__ import annotations

from aioconductor.engine.engine import Engine, EngineResult, run_flow
from aioconductor.engine.patterns import (
    Flow,
    GraphFlow,
    LinearFlow,
    UnorderedFlow,
    graph,
    linear,
    unordered,
)
from aioconductor.engine.retry import (
    AlwaysRevert,
    AlwaysRevertAll,
    Attempt,
    Decision,
    ForEach,
    ParameterizedForEach,
    Retry,
    Times,
)
from aioconductor.engine.task import Task, task
from aioconductor.errors import FlowFailed
from aioconductor.failure import Failure

__all__ = [
    "AlwaysRevert",
    "AlwaysRevertAll",
    "Attempt",
    "Decision",
    "Engine",
    "EngineResult",
    "Failure",
    "Flow",
    "FlowFailed",
    "ForEach",
    "GraphFlow",
    "LinearFlow",
    "ParameterizedForEach",
    "Retry",
    "Task",
    "Times",
    "UnorderedFlow",
    "graph",
    "linear",
    "run_flow",
    "task",
    "unordered",
]
