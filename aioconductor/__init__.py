"""aioconductor: an asyncio-native conductor framework.

Producers post jobs to a board; conductors claim them and run each as a flow of tasks, with
leases and fencing tokens on the claims and every step saved in a store.
"""

from __future__ import annotations

from aioconductor.boards import JobBoard, open_board
from aioconductor.conductor import Conductor, ConductorStats
from aioconductor.engine import (
    AlwaysRevert,
    AlwaysRevertAll,
    Attempt,
    Decision,
    Engine,
    EngineResult,
    ForEach,
    ParameterizedForEach,
    Retry,
    Task,
    Times,
    graph,
    linear,
    run_flow,
    task,
    unordered,
)
from aioconductor.errors import (
    AioconductorError,
    BackendUnavailable,
    BoardClosed,
    BoardError,
    ClaimLost,
    CompilationError,
    ConfigurationError,
    DependencyMissing,
    FlowError,
    FlowFailed,
    FlowNotFound,
    JobNotFound,
    LogBookNotFound,
    PayloadError,
    StoreClosed,
    StoreError,
    TaskTimeout,
    UnclaimableJob,
    VersionConflict,
)
from aioconductor.events import Event, Notifier
from aioconductor.failure import Failure
from aioconductor.models import (
    Claim,
    ConductorInfo,
    Job,
    JobNotification,
    JobState,
    Outcome,
    RetryPolicy,
)
from aioconductor.persistence import (
    AtomDetail,
    AtomState,
    FlowDetail,
    FlowState,
    LogBook,
    Store,
    open_store,
)
from aioconductor.registry import FlowRegistry

__version__ = "0.1.0"

__all__ = [
    "AioconductorError",
    "AlwaysRevert",
    "AlwaysRevertAll",
    "AtomDetail",
    "AtomState",
    "Attempt",
    "BackendUnavailable",
    "BoardClosed",
    "BoardError",
    "Claim",
    "ClaimLost",
    "CompilationError",
    "Conductor",
    "ConductorInfo",
    "ConductorStats",
    "ConfigurationError",
    "Decision",
    "DependencyMissing",
    "Engine",
    "EngineResult",
    "Event",
    "Failure",
    "FlowDetail",
    "FlowError",
    "FlowFailed",
    "FlowNotFound",
    "FlowRegistry",
    "FlowState",
    "ForEach",
    "Job",
    "JobBoard",
    "JobNotFound",
    "JobNotification",
    "JobState",
    "LogBook",
    "LogBookNotFound",
    "Notifier",
    "Outcome",
    "ParameterizedForEach",
    "PayloadError",
    "Retry",
    "RetryPolicy",
    "Store",
    "StoreClosed",
    "StoreError",
    "Task",
    "TaskTimeout",
    "Times",
    "UnclaimableJob",
    "VersionConflict",
    "graph",
    "linear",
    "open_board",
    "open_store",
    "run_flow",
    "task",
    "unordered",
]
