"""The Redis board's retention primitives: which finished jobs a purge takes next, deleting them,
and indexing the jobs that finished before the board kept an index of them.

A job that ends (``CONSUME``, ``TRASH``) is added to ``ended:<STATE>``, a sorted set scored by
its ``updated_at``, in the script that ends it; ``PURGE`` takes it out with the job. So
``ended:<STATE>`` is always a subset of ``state:<STATE>``, and equal sizes mean it is complete.
When it is not (jobs that finished before this index existed, or under a conductor of an older
version during a rolling upgrade), ``PURGEABLE`` says so and :class:`Retention` indexes the
missing jobs first: a scan of ``state:<STATE>`` in bounded steps, each step one script.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

from aioconductor._backends.redis.board_prelude import member_id
from aioconductor._backends.redis.board_scripts import BoardScripts
from aioconductor._backends.redis.link import RedisLink
from aioconductor._backends.redis.link import fmt_time
from aioconductor.models import JobState

__all__ = ["BACKFILL_PAUSE", "BACKFILL_STEP", "Retention"]

#: How many jobs one indexing step reads from ``state:<STATE>`` (bounds one script's run).
BACKFILL_STEP = 500
#: Seconds a board waits before indexing again: while conductors of an older version keep
#: ending jobs unindexed, every purge would otherwise scan every finished job.
BACKFILL_PAUSE = 300.0


class Retention:
    """``_purgeable`` and ``_purge`` of one board's namespace.

    Args:
        link: the board's link to Redis.
        scripts: the board's scripts.
        keys: the namespace's shared keys (``KEY_NAMES`` under its prefix), in order.
        prefix: the namespace's key prefix (hash tag included).
    """

    def __init__(
        self, link: RedisLink, scripts: BoardScripts, keys: Sequence[str], prefix: str
    ) -> None:
        self._link = link
        self._scripts = scripts
        self._keys = list(keys)
        self._prefix = prefix
        self._job_prefix = f"{prefix}job:"
        #: When this board last indexed unindexed finished jobs (``time.monotonic``), if ever.
        self._indexed_at: float | None = None

    def _argv(self, *args: str | int) -> list[str | int]:
        # The prelude reads the job prefix and the channel; these scripts publish nothing.
        return [self._job_prefix, "", *args]

    async def purgeable(
        self, older_than: float, states: tuple[JobState, ...], limit: int
    ) -> list[str]:
        """The ids of up to ``limit`` jobs in ``states`` that ended at or before the server's
        now less ``older_than``, oldest first."""
        stale, members = await self._ended(older_than, states, limit)
        paused = self._indexed_at is not None and time.monotonic() - self._indexed_at < (
            BACKFILL_PAUSE
        )
        if stale and not paused:
            for state in stale:
                await self.backfill(state)
            self._indexed_at = time.monotonic()
            _, members = await self._ended(older_than, states, limit)
        return [member_id(member) for member in members]

    async def _ended(
        self, older_than: float, states: tuple[JobState, ...], limit: int
    ) -> tuple[list[JobState], list[str]]:
        script = self._scripts.purgeable
        argv = self._argv(fmt_time(older_than), limit, *(state.value for state in states))
        reply: list[str] = await self._link.read(
            "purge", lambda: script(keys=self._keys, args=argv)
        )
        return [JobState(name) for name in reply[0].split()], reply[1:]

    async def backfill(self, state: JobState) -> int:
        """Index in ``ended:<state>`` the jobs of ``state:<state>`` it lacks; how many.

        Each step reads a few hundred members (``ZSCAN``: every member there for the whole scan
        is seen) and indexes them in one script, so Redis is never held for long. Indexing
        twice changes nothing, so steps are retried like reads, and boards may run it at once.
        """
        key = f"{self._prefix}state:{state.value}"
        script = self._scripts.backfill
        cursor = 0
        indexed = 0
        while True:
            scan = functools.partial(self._link.client.zscan, key, cursor, count=BACKFILL_STEP)
            step = await self._link.read("purge", scan)
            cursor = int(step[0])
            members = [str(member) for member, _ in step[1]]
            if members:
                keys = [*self._keys, *(self._job_prefix + member_id(m) for m in members)]
                argv = self._argv(state.value, *members)
                step_fn = functools.partial(script, keys=keys, args=argv)
                indexed += int(await self._link.read("purge", step_fn))
            if cursor == 0:
                return indexed

    async def purge(self, job_ids: list[str]) -> int:
        """Delete those of ``job_ids`` that are finished, with their index entries and keys,
        in one script; how many it deleted."""
        keys = [*self._keys, *(self._job_prefix + job_id for job_id in job_ids)]
        argv = self._argv(*job_ids)
        script = self._scripts.purge
        # Not retried: a purge whose reply was lost may have deleted them, and would count 0.
        deleted: Any = await self._link.call("purge", lambda: self._link.script(script, keys, argv))
        return int(deleted)
