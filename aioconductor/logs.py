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


@dataclass(frozen=True, slots=True)
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


def job_context(
    job_id: str,
    flow: str,
    owner: str,
    *,
    job_name: str | None = None,
    attempt: int | None = None,
) -> contextlib.AbstractContextManager[JobContext]:
    """Mark the code in the ``with`` block (and the tasks it starts) as running for a job.

    Args:
        job_id: the job's id.
        flow: the job's flow name.
        owner: the owner holding the job's claim.
        job_name: the job's name, for people.
        attempt: which claim of the job this is (1 for the first).

    Returns:
        A context manager whose ``with`` block runs for the job; it gives the context now
        current.
    """
    return _JobScope(JobContext(job_id, flow, owner, job_name, attempt))


class _JobScope(contextlib.AbstractContextManager[JobContext]):
    # A class, not a generator: every job run enters one, and a generator's frame and
    # wrapper were two of the largest objects a job in flight held.
    __slots__ = ("_context", "_token")

    def __init__(self, context: JobContext) -> None:
        self._context = context
        self._token: contextvars.Token[JobContext | None] | None = None

    def __enter__(self) -> JobContext:
        self._token = _current.set(self._context)
        return self._context

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None
        _current.reset(self._token)


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
