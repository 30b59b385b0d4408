"""Finding jobs for people, written once for every board: ``search`` (filters, newest first,
keyset paging), ``search_count``, ``ended_counts`` (jobs ended per time bucket, by ending) and
``held_claims`` (live claims per owner).

The defaults here read every job through ``_iterjobs``: right on every backend, and what the
memory, Redis and Kafka boards use (their docs say what it costs). The SQL boards override the
primitives with indexed queries, so a page stays fast over 100,000 jobs.

Paging is by ``seq`` (post order, unique per board and never reused): a page holds the jobs
matching the filter with ``seq`` below ``before``, highest first, so pages neither repeat nor
skip a job while others are posted, whatever the filter.
"""

from __future__ import annotations

import abc
import collections
import math
import time
from collections.abc import AsyncIterator

from aioconductor.boards._part import BoardPart
from aioconductor.errors import PayloadError
from aioconductor.models import EndedCount
from aioconductor.models import Job
from aioconductor.models import JobFilter
from aioconductor.models import JobPage
from aioconductor.models import JobState

__all__ = ["MAX_PAGE", "Searching"]

#: The most jobs one ``search`` page holds.
MAX_PAGE = 1000


def _check_page(before: int | None, limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise PayloadError(f"limit must be an int from 1 to {MAX_PAGE}, got {limit!r:.40}")
    if before is not None and (isinstance(before, bool) or not isinstance(before, int)):
        raise PayloadError(f"before must be a job's seq (an int), got {before!r:.40}")


def ending_of(job: Job) -> str | None:
    """A finished job's ending as :class:`EndedCount` names it; None if it has not ended."""
    if job.state is JobState.TRASHED:
        return "TRASHED"
    if job.state is JobState.COMPLETE and job.outcome is not None:
        return str(job.outcome)
    return None


class Searching(BoardPart):
    """The search verbs of :class:`~aioconductor.boards.base.JobBoard`."""

    async def search(
        self, where: JobFilter | None = None, *, before: int | None = None, limit: int = 100
    ) -> JobPage:
        """The jobs matching ``where``, newest first (highest ``seq`` first), a page at a time.

        Args:
            where: the filter; every job when None.
            before: only jobs with a ``seq`` below this: the previous page's ``next_before``.
            limit: the most jobs on the page (1 to :data:`MAX_PAGE`).

        Raises:
            PayloadError: a bad ``before`` or ``limit``.
        """
        self._check_open()
        _check_page(before, limit)
        jobs = await self._search(where or JobFilter(), before, limit + 1)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return JobPage(jobs=jobs, next_before=jobs[-1].seq if more else None)

    async def search_count(self, where: JobFilter | None = None) -> int:
        """How many jobs match ``where`` (every job when None)."""
        self._check_open()
        return await self._search_count(where or JobFilter())

    async def ended_counts(self, since: float, *, bucket: float = 60.0) -> list[EndedCount]:
        """How many jobs ended at or after ``since`` (epoch seconds, by the board's clock), per
        ``bucket`` seconds and per ending (an outcome, or ``TRASHED``), oldest bucket first.
        Purged jobs are not counted.

        Raises:
            PayloadError: ``since`` or ``bucket`` is not a finite number (``bucket`` > 0).
        """
        self._check_open()
        for name, value in (("since", since), ("bucket", bucket)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PayloadError(f"{name} must be a number of seconds, got {value!r:.40}")
            if not math.isfinite(value):
                raise PayloadError(f"{name} must be finite, got {value!r}")
        if bucket <= 0:
            raise PayloadError(f"bucket must be positive, got {bucket!r}")
        found = await self._ended_counts(float(since), float(bucket))
        return sorted(found, key=lambda c: (c.start, c.ending))

    async def held_claims(self) -> dict[str, int]:
        """How many live claims each owner holds: its ``CLAIMED`` jobs whose lease has not run
        out, by owner (an owner holding none is absent). What the dashboard shows as each
        conductor's running jobs, from the board rather than from its last heartbeat."""
        self._check_open()
        return await self._held_claims()

    # -- what the board gives ------------------------------------------------------------------

    @abc.abstractmethod
    def _iterjobs(self, state: JobState | None) -> AsyncIterator[Job]: ...

    async def _matching(self, where: JobFilter) -> list[Job]:
        return [job async for job in self._iterjobs(where.state) if where.matches(job)]

    async def _search(self, where: JobFilter, before: int | None, limit: int) -> list[Job]:
        """Up to ``limit`` jobs matching ``where`` with ``seq`` below ``before``, highest
        ``seq`` first. The default reads every job."""
        found = [j for j in await self._matching(where) if before is None or j.seq < before]
        found.sort(key=lambda job: job.seq, reverse=True)
        return found[:limit]

    async def _search_count(self, where: JobFilter) -> int:
        """How many jobs match ``where``. The default reads every job."""
        return len(await self._matching(where))

    async def _ended_counts(self, since: float, bucket: float) -> list[EndedCount]:
        """Ended jobs per (bucket start, ending) since ``since``. The default reads every
        finished job."""
        counts: dict[tuple[float, str], int] = {}
        for state in (JobState.COMPLETE, JobState.TRASHED):
            async for job in self._iterjobs(state):
                ending = ending_of(job)
                if ending is not None and job.updated_at >= since:
                    start = math.floor(job.updated_at / bucket) * bucket
                    counts[start, ending] = counts.get((start, ending), 0) + 1
        return [EndedCount(start=s, ending=e, count=n) for (s, e), n in counts.items()]

    async def _held_claims(self) -> dict[str, int]:
        """Live claims by owner. The default reads every claimed job, the lease judged by this
        process's clock."""
        now = time.time()
        held: collections.Counter[str] = collections.Counter()
        async for job in self._iterjobs(JobState.CLAIMED):
            if job.claim is not None and job.claim.expires_at > now:
                held[job.claim.owner] += 1
        return dict(held)
