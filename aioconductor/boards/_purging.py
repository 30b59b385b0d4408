"""Retention, written once for every board: ``purge`` deletes finished jobs (and their
logbooks) in bounded batches.

A backend gives two primitives: ``_purgeable`` (which finished jobs ended long enough ago, oldest
first) and ``_purge`` (delete those of the given jobs that are finished, freeing their keys, in
one atomic step). A finished job never changes again, so the logbooks of a batch are deleted
*before* its jobs: a purge cut short leaves a finished job without its logbook (purged next
time), never a logbook no job points to.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Sequence
from typing import Protocol

from anyio.lowlevel import checkpoint

from aioconductor.boards._part import BoardPart
from aioconductor.errors import ConfigurationError
from aioconductor.models import JobState

__all__ = ["DEFAULT_PURGE_STATES", "PURGE_BATCH", "LogBookDeleter", "Purging"]

#: The most jobs one purge step deletes (bounds one statement, script or batch of tombstones).
PURGE_BATCH = 1000
#: What ``purge`` deletes unless told otherwise: every finished job.
DEFAULT_PURGE_STATES = (JobState.COMPLETE, JobState.TRASHED)


class LogBookDeleter(Protocol):
    """What ``purge`` needs of a flow store: deleting jobs' logbooks (a logbook's uuid is its
    job's id)."""

    async def destroy_logbooks(self, book_uuids: Sequence[str]) -> int:
        """Delete the logbooks that exist among ``book_uuids``; how many were deleted."""


class Purging(BoardPart):
    """The retention verb of :class:`~aioconductor.boards.base.JobBoard`."""

    async def purge(
        self,
        *,
        older_than: float,
        states: Iterable[JobState | str] = DEFAULT_PURGE_STATES,
        store: LogBookDeleter | None = None,
        batch: int = PURGE_BATCH,
    ) -> int:
        """Delete the finished jobs in ``states`` that ended ``older_than`` seconds ago or
        earlier (by the board's clock), with their logbooks in ``store`` when one is given.

        A job that is not finished (``COMPLETE`` or ``TRASHED``) is never deleted. A purged
        job's key is free again: the next post with it creates a new job. The work is done in
        steps of at most ``batch`` jobs, each one short atomic change, so a purge of a million
        jobs never holds a lock (or the event loop) for long; several purges at once delete
        each job once.

        Returns:
            How many jobs this call deleted.

        Raises:
            ConfigurationError: a negative or non-finite ``older_than``, a state that is not
                final, or a ``batch`` that is not a positive integer.
        """
        self._check_open()
        seconds = _age(older_than)
        wanted = _final_states(states)
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 10_000:
            raise ConfigurationError(f"batch must be an integer from 1 to 10,000, got {batch!r}")
        total = 0
        while True:
            job_ids = await self._purgeable(seconds, wanted, batch)
            if not job_ids:
                break
            if store is not None:
                await store.destroy_logbooks(job_ids)
            deleted = await self._purge(job_ids)
            total += deleted
            if len(job_ids) < batch or deleted == 0:
                break
            await checkpoint()
        return total

    # -- what the board gives ------------------------------------------------------------------

    @abc.abstractmethod
    async def _purgeable(
        self, older_than: float, states: tuple[JobState, ...], limit: int
    ) -> list[str]:
        """The ids of up to ``limit`` jobs in ``states`` (final states only) whose last change
        (``updated_at``, when they ended) is at or before the board's now less ``older_than``,
        oldest first."""

    @abc.abstractmethod
    async def _purge(self, job_ids: list[str]) -> int:
        """Delete those of ``job_ids`` that are finished, and free their keys, in one atomic
        step; how many were deleted (ids already gone, or not finished, are skipped)."""


def _age(older_than: object) -> float:
    if isinstance(older_than, bool) or not isinstance(older_than, (int, float)):
        raise ConfigurationError(f"older_than must be seconds, got {older_than!r:.80}")
    seconds = float(older_than)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"older_than must be finite seconds >= 0, got {older_than!r}")
    return seconds


def _final_states(states: Iterable[JobState | str]) -> tuple[JobState, ...]:
    if isinstance(states, (str, JobState)):
        states = (states,)
    wanted: list[JobState] = []
    for state in states:
        try:
            checked = JobState(state)
        except ValueError:
            raise ConfigurationError(f"unknown job state {state!r}") from None
        if not checked.is_final:
            raise ConfigurationError(
                f"purge deletes finished jobs only (COMPLETE, TRASHED), not {checked}"
            )
        if checked not in wanted:
            wanted.append(checked)
    if not wanted:
        raise ConfigurationError("purge needs at least one state")
    return tuple(wanted)
