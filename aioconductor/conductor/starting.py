"""A job's claim and its run's creation in one server call, where the board and the store share a
server.

A job's run starts with a write: its logbook, its flow RUNNING and its first task RUNNING
(``engine.logbooks``), the call after its claim. For a flow registered as it is
(``FlowRegistry.register(name, flow)``) that write is the same for every job, but for the job's
id and name: when the store can claim on the board's server (``store.fused_claim``, see
:mod:`aioconductor.persistence.runs`), the conductor claims through it, and each job claimed for
the first time gets its run created in the claim's own atomic call, fenced by the claim's token.
The job's engine starts from that run (``Engine(created_run=...)``) without writing it.

Durability is as before: the first task is RUNNING in the store before its ``execute`` starts.
A job given back before its run starts (the conductor stops as it claims it) is resumed by its
next owner, which runs that task, as after a crash during it; one that turns out unable to run
(its args miss an input of the flow) is trashed, and its created logbook dropped.
"""

from __future__ import annotations

import logging

from aioconductor.boards.base import JobBoard
from aioconductor.engine.compiler import compile_flow
from aioconductor.errors import CompilationError
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.persistence.base import Store
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.runs import FusedClaim
from aioconductor.persistence.runs import RunTemplate
from aioconductor.registry import FlowRegistry

__all__ = ["Starts", "run_templates"]

logger = logging.getLogger("aioconductor.conductor")


class Starts:
    """How one conductor run claims its jobs: the board's ``claim_batch``, or the store's fused
    claim, which creates the runs of the claimed jobs whose flows are registered as they are."""

    def __init__(self, board: JobBoard, fused: FusedClaim | None = None) -> None:
        self.board = board
        #: None when the store cannot, or no flow can be created with its claim.
        self.fused = fused
        #: The runs created with their claims, by job id and claim token, until their engine
        #: takes them (:meth:`take`) or their run ends (:meth:`forget`).
        self.created: dict[tuple[str, int], FlowDetail] = {}

    @classmethod
    def of(cls, board: JobBoard, store: Store | None, flows: FlowRegistry) -> Starts:
        """The starts of ``board`` and ``store``: fused when the store says it can, for the
        flows of ``flows`` registered as they are."""
        fuse = getattr(store, "fused_claim", None)
        templates = None if fuse is None else run_templates(flows)
        return cls(board, fuse(board, templates) if fuse is not None and templates else None)

    async def claim_batch(self, owner: str, limit: int, lease: float) -> list[tuple[Job, Claim]]:
        """Claim up to ``limit`` jobs (as the board's ``claim_batch``), creating the runs of
        those the fused claim can start."""
        if self.fused is None:
            return await self.board.claim_batch(owner, limit, lease=lease)
        claimed = await self.fused(owner, limit, lease)
        jobs: list[tuple[Job, Claim]] = []
        for job, claim, created in claimed:
            if created is not None:
                self.created[job.id, claim.token] = created
            jobs.append((job, claim))
        return jobs

    def was_created(self, job_id: str, token: int) -> bool:
        """Whether the run of the claim ``(job_id, token)`` was created with it and has not
        been taken by its engine yet."""
        return (job_id, token) in self.created

    def take(self, job_id: str, token: int) -> FlowDetail | None:
        """The run created with the claim ``(job_id, token)``, for its engine (once)."""
        return self.created.pop((job_id, token), None)

    def forget(self, job_id: str, token: int) -> None:
        """Drop what the claim ``(job_id, token)`` left (its run is over)."""
        self.created.pop((job_id, token), None)


def run_templates(flows: FlowRegistry) -> dict[str, RunTemplate]:
    """How a new run of each flow of ``flows`` registered as it is starts: its detail's name,
    and its first task if it starts with one alone. A flow that does not compile is left out
    (its jobs are trashed, with the reason, as ever)."""
    templates = {}
    for name in flows:
        flow = flows.static(name)
        if flow is None:
            continue
        try:
            first = compile_flow(flow).first
        except CompilationError as exc:
            logger.debug("flow %r does not compile (%s): its runs start unfused", name, exc)
            continue
        template = RunTemplate(flow.name, None if first is None else first.name)
        if not all(_storable(text) for text in (name, template.detail, template.first or "")):
            # A store would refuse it, and the refusal would fail every fused claim, not only
            # this flow's jobs: they start unfused, and fail alone, as ever.
            continue
        templates[name] = template
    return templates


def _storable(text: str) -> bool:
    """Whether every store can hold ``text``: no NUL, no lone surrogate."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
