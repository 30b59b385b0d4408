"""Why a claimed job cannot run: its flow cannot be built for its args, or its attempts are
spent. The run trashes such a job (:class:`Unrunnable` carries the reason), unless it was
cancelled: then it is consumed ``CANCELLED``."""

from __future__ import annotations

import inspect

from aioconductor._models import evolve
from aioconductor.engine import Flow
from aioconductor.engine import Task
from aioconductor.engine import linear
from aioconductor.errors import FlowNotFound
from aioconductor.errors import PayloadError
from aioconductor.models import Job
from aioconductor.registry import FlowRegistry

__all__ = ["Unrunnable", "build_flow", "checked_args", "exhausted_reason"]


class Unrunnable(Exception):
    """The job can never succeed: trash it with this reason."""


def checked_args(flows: FlowRegistry, job: Job) -> Job:
    """``job`` with its args validated by its flow's args model, if the flow has one.

    Raises:
        Unrunnable: the args do not fit the model.
    """
    if flows.args_model(job.flow) is None:
        return job
    try:
        args = flows.check_args(job.flow, job.args)
    except (FlowNotFound, PayloadError) as exc:
        raise Unrunnable(str(exc)) from None
    return evolve(job, args=args)


def build_flow(flows: FlowRegistry, job: Job) -> Flow:
    """The flow ``job`` runs, made by its registered factory from its args.

    Raises:
        Unrunnable: no such flow, the args do not fit its factory, or the factory failed or
            returned something that is not a flow.
    """
    name = job.flow
    try:
        factory = flows.get(name)
    except FlowNotFound as exc:
        raise Unrunnable(str(exc)) from None
    try:
        flow = factory(**job.args)
    except TypeError as exc:
        raise Unrunnable(f"the args do not fit flow {name!r}: {exc}") from None
    except Exception as exc:
        raise Unrunnable(f"the factory of flow {name!r} raised {exc!r}") from None
    if isinstance(flow, Task):
        return linear(name, flow)
    if isinstance(flow, Flow):
        return flow
    if inspect.iscoroutine(flow):
        flow.close()  # never awaited: close it, or Python warns about it when it is freed
        raise Unrunnable(
            f"the factory of flow {name!r} is an async function; a factory must "
            f"return its flow directly (a plain def)"
        )
    raise Unrunnable(
        f"the factory of flow {name!r} returned {type(flow).__name__} "
        f"{flow!r:.80}, not a Flow or a Task"
    )


def exhausted_reason(job: Job) -> str:
    """Why ``job`` is trashed on a claim past ``max_attempts``: how its earlier runs ended."""
    spent = job.attempts - 1
    abandoned = min(job.abandons, spent)
    silent = spent - abandoned
    ends = []
    if silent:
        ends.append(
            f"{silent} ended without a word (the process died, or its lease expired or was lost)"
        )
    if abandoned:
        ends.append(
            f"{abandoned} abandoned (a storage or internal failure, or a release past "
            f"the cap of {job.max_attempts} give-backs)"
        )
    reason = (
        f"claimed {job.attempts} times, more than max_attempts={job.max_attempts}; "
        f"of the {spent} runs before: {', '.join(ends) or 'none spent an attempt'}"
    )
    if job.releases:
        reason += f"; {job.releases} claims given back on shutdown were not counted"
    if job.retries:
        reason += f"; {job.retries} failed runs were retried"
    return reason
