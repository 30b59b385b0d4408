"""A failed run's failure, as the conductor logs it and as a retried job keeps it."""

from __future__ import annotations

import logging
from typing import Any

from aioconductor.engine import EngineResult
from aioconductor.failure import Failure
from aioconductor.models import Job
from aioconductor.persistence.models import FlowState

__all__ = ["kept_failure", "log_failure"]

logger = logging.getLogger("aioconductor.conductor")

#: How much of a retried run's failure a job keeps: the message's start, the traceback's end.
_KEPT_MESSAGE, _KEPT_TRACEBACK = 2_000, 8_000


def kept_failure(failure: Failure) -> dict[str, Any]:
    """A run's failure as the job keeps it: JSON, its long texts cut to a bounded size (a
    board refuses a payload over its limit, and a failure must never stop a retry)."""
    data = failure.model_dump(mode="json")
    data["message"] = data["message"][:_KEPT_MESSAGE]
    data["traceback"] = data["traceback"][-_KEPT_TRACEBACK:]
    return data


def log_failure(job: Job, result: EngineResult) -> None:
    """One WARNING line for ``job``'s flow that failed: which task, the exception's type and
    message, and how the flow ended; the traceback as the record's ``traceback`` field, and in
    full at DEBUG."""
    failure = result.failure
    assert failure is not None
    ended = "reverted" if result.state is FlowState.REVERTED else "not reverted cleanly"
    logger.warning(
        "job %s (%s): task %s failed: %s: %s (the flow was %s)",
        job.id,
        job.flow,
        result.failed_task or "?",
        failure.exc_type.removeprefix("builtins."),
        failure.message[:2000],
        ended,
        extra={"failed_task": result.failed_task, "traceback": failure.traceback},
    )
    logger.debug("job %s: the failure's traceback:\n%s", job.id, failure.traceback)
