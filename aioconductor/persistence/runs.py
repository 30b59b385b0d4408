"""A new run's saved start: its flow RUNNING, with its only first task RUNNING too.

The engine creates a new run's logbook that way in one write (``engine.logbooks``). Where a
flow's shape is known before its job is claimed (a flow registered as it is, not built from the
job's args: ``FlowRegistry.register(name, flow)``), a store that shares the board's server can
create it with the claim instead, in the claim's own call (a *fused claim*, see
:data:`FusedClaim`): a job then costs one server call less. What is created is the same either
way, built here (:func:`new_run`), so the engine cannot tell the two apart.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aioconductor._models import build_from
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import AtomState
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import FlowState
from aioconductor.persistence.models import Intention

__all__ = ["FusedClaim", "RunTemplate", "is_first_run", "new_flow_uuid", "new_run"]


@dataclass(frozen=True, slots=True)
class RunTemplate:
    """How every new run of one flow starts, known before its job is claimed.

    Attributes:
        detail: the name of the run's flow detail (the flow's name).
        first: the task the run starts with, when it is the flow's only first atom and a
            task (saved RUNNING with the flow); None otherwise.
    """

    detail: str
    first: str | None


#: ``(owner, limit, lease)``, made by ``store.fused_claim(board, templates)``: claims up to
#: ``limit`` jobs as the board's ``claim_batch`` does and, in the same atomic call, creates the
#: logbook of each claimed job that has never run (:func:`is_first_run`) and whose flow
#: ``templates`` names, with the run :func:`new_run` builds (fenced by the claim's token; an
#: existing logbook is left as it is). Returns ``(job, claim, created)`` per claimed job, in
#: claim order: ``created`` is the flow detail saved for it (as :func:`new_run` built it), or
#: None. The templates are the store's to prepare once, when the claim is made.
FusedClaim = Callable[[str, int, float], Awaitable[list[tuple[Job, Claim, FlowDetail | None]]]]


def is_first_run(job: Job, claim: Claim) -> bool:
    """Whether ``claim`` starts ``job``'s first run, the one a fused claim creates: its first
    claim (token 1: no earlier run can have saved progress), not cancelled, within its attempts.
    (The PostgreSQL statement and the Redis script say the same in their own terms.)"""
    return claim.token == 1 and not claim.cancel_requested and job.attempts <= job.max_attempts


def new_run(flow_uuid: str, name: str, first: str | None, now: float) -> FlowDetail:
    """A new run's flow detail: RUNNING, and holding ``first`` RUNNING (started at ``now``)
    when given; every version 0, as a store holds it right after creating it.

    Built without pydantic's validation: every value is of the right type."""
    atoms = {}
    if first is not None:
        atom = _NEW_ATOM.copy()
        atom["name"], atom["meta"] = first, {"started": now}
        atoms[first] = build_from(AtomDetail, atom)
    flow = _NEW_FLOW.copy()
    flow["uuid"], flow["name"], flow["meta"], flow["atoms"] = flow_uuid, name, {}, atoms
    return build_from(FlowDetail, flow)


def new_flow_uuid() -> str:
    """The text of a version 4 UUID, unique in this process and, with near certainty, among
    processes: a random prefix drawn per process and a counter, at a tenth of
    ``str(uuid.uuid4())``'s cost. A flow's uuid need only be unique among its logbook's
    flows, which one process at a time creates."""
    return f"{_uuid_prefix}{next(_uuid_counter) & 0xFFFFFFFFFFFF:012x}"


def _new_uuid_prefix() -> None:
    """Draw this process's UUID prefix (and after a fork, the child's own)."""
    global _uuid_prefix, _uuid_counter
    text = str(uuid.uuid4())
    _uuid_prefix, _uuid_counter = text[:24], itertools.count()


_uuid_prefix = ""
_uuid_counter = itertools.count()
_new_uuid_prefix()
os.register_at_fork(after_in_child=_new_uuid_prefix)


#: The fields of the details ``new_run`` builds that are the same for every new run (no
#: mutable value: each detail gets a ``meta`` of its own).
_NEW_ATOM: dict[str, Any] = {
    "kind": "task",
    "state": AtomState.RUNNING,
    "intention": Intention.EXECUTE,
    "result": None,
    "failure": None,
    "revert_result": None,
    "revert_failure": None,
    "version": 0,
}
_NEW_FLOW: dict[str, Any] = {"state": FlowState.RUNNING, "version": 0}
