"""The Redis board's listings: ``iterjobs`` and ``job_count`` read from the ``all`` and
``state:<STATE>`` sorted sets, and chunks of any of the board's sorted sets (the sweep reads
``ready`` with them). Reads only: every call may be sent again when its reply is lost."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from redis.commands.core import AsyncScript

from aioconductor._backends.redis import board_records as records
from aioconductor._backends.redis.board_prelude import member_id
from aioconductor._backends.redis.link import RedisLink
from aioconductor.boards._support import visible
from aioconductor.models import Job
from aioconductor.models import JobState

__all__ = ["CHUNK", "Listing"]

#: How many members (and jobs) one read takes.
CHUNK = 500


class Listing:
    """``_iterjobs`` and ``_job_count`` of one board's namespace.

    Args:
        link: the board's link to Redis.
        keys: the namespace's shared keys (``KEY_NAMES`` under its prefix), in order.
        prefix: the namespace's key prefix (hash tag included).
        count: the loaded ``COUNT`` script.
    """

    def __init__(
        self, link: RedisLink, keys: Sequence[str], prefix: str, count: AsyncScript
    ) -> None:
        self._link = link
        self._keys = list(keys)
        self._prefix = prefix
        self._job_prefix = f"{prefix}job:"
        self._count = count

    async def scored(self, key: str, start: int) -> list[tuple[str, float]]:
        """One chunk of (member, score) of sorted set ``key`` from rank ``start``."""
        chunk = await self._link.client.zrange(key, start, start + CHUNK - 1, withscores=True)
        return cast(list[tuple[str, float]], chunk)

    async def _members(self, key: str) -> AsyncIterator[tuple[float, str]]:
        """(score, member) of sorted set ``key`` in order, read in chunks."""
        start = 0
        while True:
            chunk = await self._link.read("iterjobs", functools.partial(self.scored, key, start))
            for member, score in chunk:
                yield score, member
            if len(chunk) < CHUNK:
                return
            start += CHUNK

    async def _jobs(self, members: list[str]) -> list[Job]:
        async def fetch() -> list[Any]:
            async with self._link.client.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.hgetall(self._job_prefix + member_id(member))
                return await pipe.execute()

        found = await self._link.read("iterjobs", fetch)
        return [records.job_from_hash(fields) for fields in found if fields]

    async def iterjobs(self, state: JobState | None, now: float) -> AsyncIterator[Job]:
        """The jobs in ``state`` (all, with None) as readers see them at ``now``, in claim
        order."""
        if state is None:
            members = self._members(self._prefix + "all")
        elif state is JobState.UNCLAIMED:
            # Unclaimed as readers see it: the unclaimed set plus scheduled jobs whose time
            # came (filtered below), merged in claim order.
            members = records.merge(
                self._members(self._prefix + "state:UNCLAIMED"),
                self._members(self._prefix + "state:SCHEDULED"),
            )
        else:
            members = self._members(f"{self._prefix}state:{state.value}")
        batch: list[str] = []
        async for _, member in members:
            batch.append(member)
            if len(batch) < CHUNK:
                continue
            for job in await self._jobs(batch):
                if state is None or visible(job, now).state is state:
                    yield visible(job, now)
            batch = []
        for job in await self._jobs(batch) if batch else []:
            if state is None or visible(job, now).state is state:
                yield visible(job, now)

    async def job_count(self, state: JobState | None) -> int:
        """How many jobs ``iterjobs(state)`` would list now."""
        if state is None:
            count: int = await self._link.read(
                "job_count", lambda: self._link.client.zcard(self._prefix + "all")
            )
            return count
        script = self._count
        # The prelude reads the job prefix and the channel; counting publishes nothing.
        argv = [self._job_prefix, "", state.value]
        reply = await self._link.read("job_count", lambda: script(keys=self._keys, args=argv))
        return int(reply[1])
