"""The engine: tasks, flow patterns, retry controllers, and the async engine that runs them."""

from __future__ import annotations

from aioconductor.engine.engine import Engine
from aioconductor.engine.engine import EngineResult
from aioconductor.engine.engine import run_flow
from aioconductor.engine.patterns import Flow
from aioconductor.engine.patterns import GraphFlow
from aioconductor.engine.patterns import LinearFlow
from aioconductor.engine.patterns import UnorderedFlow
from aioconductor.engine.patterns import graph
from aioconductor.engine.patterns import linear
from aioconductor.engine.patterns import unordered
from aioconductor.engine.retry import AlwaysRevert
from aioconductor.engine.retry import AlwaysRevertAll
from aioconductor.engine.retry import Attempt
from aioconductor.engine.retry import Decision
from aioconductor.engine.retry import ForEach
from aioconductor.engine.retry import ParameterizedForEach
from aioconductor.engine.retry import Retry
from aioconductor.engine.retry import Times
from aioconductor.engine.task import Task
from aioconductor.engine.task import task
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
