"""Search on the memory board: :class:`~aioconductor.boards._searching.Searching`'s primitives
over the namespace's records, a :class:`~aioconductor.models.Job` built only for the matches."""

from __future__ import annotations

from collections.abc import Callable

from anyio.lowlevel import checkpoint

from aioconductor._backends.memory.jobs import Space
from aioconductor.models import EndedCount
from aioconductor.models import Job
from aioconductor.models import JobFilter

__all__ = ["MemorySearching"]


class MemorySearching:
    """The search primitives of :class:`~aioconductor.boards.memory.MemoryJobBoard` (a base
    class of it, ahead of ``JobBoard``, whose defaults read every job)."""

    _space: Space
    _clock: Callable[[], float]

    async def _search(self, where: JobFilter, before: int | None, limit: int) -> list[Job]:
        await checkpoint()
        now = self._clock()
        return [record.visible_job(now) for record in self._space.newest(where, before, limit, now)]

    async def _search_count(self, where: JobFilter) -> int:
        await checkpoint()
        return self._space.count(where, self._clock())

    async def _ended_counts(self, since: float, bucket: float) -> list[EndedCount]:
        await checkpoint()
        return self._space.ended_counts(since, bucket)

    async def _held_claims(self) -> dict[str, int]:
        await checkpoint()
        return self._space.held_claims(self._clock())
