"""What every run of one conductor's jobs shares (:class:`RunContext`), named one by one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aioconductor.boards.base import JobBoard
from aioconductor.conductor.ending import Endings
from aioconductor.conductor.solo import SoloGate
from aioconductor.conductor.starting import Starts
from aioconductor.conductor.stats import ConductorStats
from aioconductor.engine import Engine
from aioconductor.engine import Flow
from aioconductor.events import Notifier
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.persistence.base import Store
from aioconductor.registry import FlowRegistry

__all__ = ["EngineFactory", "RunContext"]

#: Makes the engine that runs a job's flow, saving progress under the claim's token.
EngineFactory = Callable[[Job, Claim, Flow], Engine]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    """What every run of one conductor's jobs shares, named one by one.

    Made once per :meth:`Conductor.run`, so starting a job costs no more than making a
    :class:`JobRun` of three fields.
    """

    #: The conductor's name, given in every event's details.
    conductor: str
    board: JobBoard
    #: Seconds each renewal extends a claim by.
    lease: float
    flows: FlowRegistry
    notifier: Notifier
    stats: ConductorStats
    #: Jobs run under a shared hold of it, or alone.
    gate: SoloGate
    make_engine: EngineFactory
    #: The runs under way, by job id, from their claim to their end (the lease keeper renews
    #: what is listed here; cancels find their run here).
    #: (Its :class:`~aioconductor.conductor.jobrun.JobRun` objects: jobrun imports this module.)
    running: dict[str, Any]
    #: Whether a job on its last attempt after an unfinished one runs alone
    #: (:func:`~aioconductor.conductor.solo.last_attempt_after_unfinished`).
    isolate_last_attempts: bool
    #: The store to drop an ended job's logbook from: the conductor's private store (nobody
    #: else can read it, and it would grow for ever); None when the store is the user's.
    private_store: Store | None
    #: How a job's end reaches the board (its flow's end with it, where the two are fused);
    #: by default, the board's verbs as they are.
    endings: Endings = None  # type: ignore[assignment]  # set by __post_init__
    #: How jobs are claimed (their runs created with their claims, where the store can); by
    #: default, the board's ``claim_batch`` as it is.
    starts: Starts = None  # type: ignore[assignment]  # set by __post_init__

    def __post_init__(self) -> None:
        if self.endings is None:
            object.__setattr__(self, "endings", Endings(self.board, None, None))
        if self.starts is None:
            object.__setattr__(self, "starts", Starts(self.board))
