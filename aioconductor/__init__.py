"""aioconductor: an asyncio-native conductor framework.

Producers post jobs to a board; conductors claim them and run each as a flow of tasks, with
leases and fencing tokens on the claims and every step saved in a store.
"""

from __future__ import annotations

from aioconductor.boards import JobBoard
from aioconductor.boards import open_board
from aioconductor.conductor import Conductor
from aioconductor.conductor import ConductorStats
from aioconductor.conductor import Retention
from aioconductor.engine import AlwaysRevert
from aioconductor.engine import AlwaysRevertAll
from aioconductor.engine import Attempt
from aioconductor.engine import Decision
from aioconductor.engine import Engine
from aioconductor.engine import EngineResult
from aioconductor.engine import ForEach
from aioconductor.engine import ParameterizedForEach
from aioconductor.engine import Retry
from aioconductor.engine import Task
from aioconductor.engine import Times
from aioconductor.engine import graph
from aioconductor.engine import linear
from aioconductor.engine import run_flow
from aioconductor.engine import task
from aioconductor.engine import unordered
from aioconductor.errors import AioconductorError
from aioconductor.errors import BackendUnavailable
from aioconductor.errors import BoardClosed
from aioconductor.errors import BoardError
from aioconductor.errors import ClaimLost
from aioconductor.errors import CompilationError
from aioconductor.errors import ConfigurationError
from aioconductor.errors import DependencyMissing
from aioconductor.errors import FlowError
from aioconductor.errors import FlowFailed
from aioconductor.errors import FlowNotFound
from aioconductor.errors import JobNotFound
from aioconductor.errors import LogBookNotFound
from aioconductor.errors import PayloadError
from aioconductor.errors import SchemaMissing
from aioconductor.errors import StoreClosed
from aioconductor.errors import StoreError
from aioconductor.errors import TaskTimeout
from aioconductor.errors import UnclaimableJob
from aioconductor.errors import VersionConflict
from aioconductor.events import Event
from aioconductor.events import Notifier
from aioconductor.failure import Failure
from aioconductor.models import Claim
from aioconductor.models import ConductorInfo
from aioconductor.models import EndedCount
from aioconductor.models import Job
from aioconductor.models import JobFilter
from aioconductor.models import JobNotification
from aioconductor.models import JobPage
from aioconductor.models import JobState
from aioconductor.models import LimitInfo
from aioconductor.models import Outcome
from aioconductor.models import RetryPolicy
from aioconductor.persistence import AtomDetail
from aioconductor.persistence import AtomState
from aioconductor.persistence import FlowDetail
from aioconductor.persistence import FlowState
from aioconductor.persistence import LogBook
from aioconductor.persistence import Store
from aioconductor.persistence import open_store
from aioconductor.registry import FlowRegistry
from aioconductor.schedules import Schedule
from aioconductor.tuning import tune_gc

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
    "EndedCount",
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
    "JobFilter",
    "JobNotFound",
    "JobNotification",
    "JobPage",
    "JobState",
    "LimitInfo",
    "LogBook",
    "LogBookNotFound",
    "Notifier",
    "Outcome",
    "ParameterizedForEach",
    "PayloadError",
    "Retention",
    "Retry",
    "RetryPolicy",
    "Schedule",
    "SchemaMissing",
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
    "tune_gc",
    "unordered",
]
