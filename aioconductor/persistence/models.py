"""What a store keeps: a logbook per job, a flow detail per flow run, an atom detail per task.

The engine saves every state change of every atom here as it goes, so a flow that stopped
(shutdown, crash, lost claim) resumes from where it was.
"""

from __future__ import annotations

import enum
import time
import uuid
from typing import Any

from pydantic import BaseModel
from pydantic import Field

from aioconductor.failure import Failure

__all__ = ["AtomDetail", "AtomState", "FlowDetail", "FlowState", "Intention", "LogBook"]


class FlowState(enum.StrEnum):
    """The state of one flow run."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVERTED = "REVERTED"
    SUSPENDED = "SUSPENDED"
    RESUMING = "RESUMING"


class AtomState(enum.StrEnum):
    """The state of one atom (task or retry controller) in a flow run."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVERTING = "REVERTING"
    REVERTED = "REVERTED"
    IGNORE = "IGNORE"


class Intention(enum.StrEnum):
    """What the engine means to do with an atom next."""

    EXECUTE = "EXECUTE"
    REVERT = "REVERT"
    RETRY = "RETRY"
    IGNORE = "IGNORE"


class AtomDetail(BaseModel):
    """The saved state of one atom: where it stands and what it produced."""

    name: str
    #: ``"task"`` or ``"retry"``.
    kind: str = "task"
    state: AtomState = AtomState.PENDING
    intention: Intention = Intention.EXECUTE
    #: The value ``execute`` returned (JSON).
    result: Any = None
    failure: Failure | None = None
    revert_result: Any = None
    revert_failure: Failure | None = None
    #: Bumped by the store on every write; a write must carry the version it read.
    version: int = 0
    meta: dict[str, Any] = Field(default_factory=dict)


class FlowDetail(BaseModel):
    """The saved state of one flow run, with its atoms by name."""

    uuid: str = Field(default_factory=lambda: str(uuid.uuid4()))
    name: str
    state: FlowState = FlowState.PENDING
    #: Bumped by the store on every write of the flow's own fields.
    version: int = 0
    meta: dict[str, Any] = Field(default_factory=dict)
    atoms: dict[str, AtomDetail] = Field(default_factory=dict)


class LogBook(BaseModel):
    """All saved progress of one job (the logbook's ``uuid`` is the job's id)."""

    uuid: str = Field(default_factory=lambda: str(uuid.uuid4()))
    name: str
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    meta: dict[str, Any] = Field(default_factory=dict)
    flows: dict[str, FlowDetail] = Field(default_factory=dict)
    #: The highest fencing token a write to this logbook carried; older tokens are refused.
    token: int | None = None
