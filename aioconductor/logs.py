"""Structured logs: every record emitted while a job runs carries the job's id, flow and owner.

The conductor sets :func:`job_context` around each job's run. The context lives in a
:class:`~contextvars.ContextVar`, so it follows the job into the tasks its flow starts (anyio
copies the context into child tasks) and never leaks into another job's records.

Add :class:`JobContextFilter` to a handler (not a logger: a logger's filters do not see records
propagated from its children) and use the attributes in a format or a JSON formatter::

    import logging
    from aioconductor.logs import FORMAT, JobContextFilter

    handler = logging.StreamHandler()
    handler.addFilter(JobContextFilter())
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])

Records logged outside a job get ``None`` in each attribute (``JobContextFilter(missing="-")``
for another value).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "FORMAT",
    "JobContext",
    "JobContextFilter",
    "current_job",
    "job_context",
]

#: A ``logging.Formatter`` format showing the job context (needs :class:`JobContextFilter`).
FORMAT = (
    "%(asctime)s %(levelname)-7s %(name)s [job=%(job_id)s flow=%(flow)s owner=%(owner)s] "
    "%(message)s"
)

#: The record attributes :class:`JobContextFilter` sets.
ATTRIBUTES = ("job_id", "job_name", "flow", "owner", "attempt")


@dataclass(frozen=True)
class JobContext:
    """The job a piece of code runs for."""

    job_id: str
    flow: str
    owner: str
    job_name: str | None = None
    attempt: int | None = None


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "aioconductor_job", default=None
)


def current_job() -> JobContext | None:
    """The job the calling code runs for, or None outside a job."""
    return _current.get()


@contextlib.contextmanager
def job_context(
    job_id: str,
    flow: str,
    owner: str,
    *,
    job_name: str | None = None,
    attempt: int | None = None,
) -> Iterator[JobContext]:
    """Mark the code in the ``with`` block (and the tasks it starts) as running for a job.

    Args:
        job_id: the job's id.
        flow: the job's flow name.
        owner: the owner holding the job's claim.
        job_name: the job's name, for people.
        attempt: which claim of the job this is (1 for the first).

    Yields:
        The context now current.
    """
    context = JobContext(job_id, flow, owner, job_name, attempt)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


class JobContextFilter(logging.Filter):
    """Adds ``job_id``, ``job_name``, ``flow``, ``owner`` and ``attempt`` to every record.

    The values come from the current :func:`job_context` (``None`` outside one). An attribute
    the record already has (from ``extra=``) is left as it is. The filter never drops a record.

    Args:
        missing: the value given outside a job; ``None`` by default, ``"-"`` reads better in
            a plain text format.
    """

    def __init__(self, name: str = "", *, missing: object = None) -> None:
        super().__init__(name)
        self.missing = missing

    def filter(self, record: logging.LogRecord) -> bool:
        """Set the job attributes on ``record``; always True."""
        context = _current.get()
        for attribute in ATTRIBUTES:
            if attribute not in record.__dict__:
                value = self.missing if context is None else getattr(context, attribute)
                setattr(record, attribute, value)
        return True
