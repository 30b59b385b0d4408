"""The Kafka board's cancel: one ``cancel`` record, computed from the job's version in the view
and accepted by the fold only on that version (first writer wins), so it ends or flags the job
as the fold sees it at that point of the log. A record that lost a race is computed again from
the winner's state: the job may be final or flagged by then, and is left as it is."""

from __future__ import annotations

import functools
from typing import Any

from aioconductor._backends.kafka.log import RETRIES
from aioconductor._backends.kafka.log import StateLog
from aioconductor._backends.kafka.records import FINAL
from aioconductor._backends.kafka.records import cancelled
from aioconductor._backends.kafka.records import clock_ms
from aioconductor._backends.kafka.records import transition
from aioconductor.errors import BoardError

__all__ = ["cancel", "cancellable"]


def cancellable(data: dict[str, Any] | None) -> bool:
    """Whether a cancel changes the job state ``data``: neither final nor flagged."""
    return data is not None and data["state"] not in FINAL and data.get("cancel_reason") is None


async def cancel(log: StateLog, job_id: str, reason: str) -> dict[str, Any]:
    """End or flag the job ``job_id`` for ``reason`` (see :func:`records.cancelled`); its
    state after the call (as it was if final or flagged already).

    Raises:
        JobNotFound: no such job.
        BoardError: the record lost ``RETRIES`` races in a row.
    """
    view = log.view
    # A job final or flagged in the view stays so, but a read must see every write before it:
    # sync unless the view shows it cancellable (the fold checks the record's base anyway).
    await log.fresh(job_id, cancellable)
    data = view.job(job_id)
    make = functools.partial(cancelled, reason=reason)
    for _ in range(RETRIES):
        if not cancellable(data):
            return data
        ts = clock_ms()
        applied = await log.write(transition("cancel", data, make(data, ts / 1000), ts))
        if applied.accepted and applied.data is not None:
            return applied.data
        data = view.job(job_id)  # another record came first: cancel what it left
    raise BoardError(f"cancel of job {job_id} lost {RETRIES} races in a row")
