"""The Redis board's retention primitives: which finished jobs a purge takes next, deleting them,
and indexing the jobs that finished before the board kept an index of them.

A job that ends (``CONSUME``, ``TRASH``) is added to ``ended:<STATE>``, a sorted set scored by
its ``updated_at``, in the script that ends it; ``PURGE`` takes it out with the job. So
``ended:<STATE>`` is a subset of ``state:<STATE>``, and equal sizes mean it is complete.
When it is not (jobs that finished before this index existed, or under a conductor of an older
version during a rolling upgrade), ``PURGEABLE`` says so and :class:`Retention` indexes the
missing jobs first: a scan of ``state:<STATE>`` in bounded steps, each step one script.

A job hash gone behind the board's back (an evicting Redis, a ``DEL`` by hand) leaves entries
that lead nowhere: ``PURGEABLE`` drops those it meets and ``BACKFILL`` those it scans, from every
index, so they neither stall a purge nor keep the sizes unequal.

The scripts (``PURGEABLE``, ``BACKFILL``, ``PURGE``) start with the board's prelude, as the
transitions of :mod:`aioconductor._backends.redis.board_scripts` do.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from redis.commands.core import AsyncScript

from aioconductor._backends.redis import scripts
from aioconductor._backends.redis.board_prelude import PRELUDE
from aioconductor._backends.redis.board_prelude import member_id
from aioconductor._backends.redis.link import RedisLink
from aioconductor._backends.redis.link import fmt_time
from aioconductor.models import JobState

__all__ = [
    "BACKFILL",
    "BACKFILL_PAUSE",
    "BACKFILL_STEP",
    "GHOSTS_PER_STEP",
    "PURGE",
    "PURGEABLE",
    "Retention",
    "RetentionScripts",
]

#: How many jobs one indexing step reads from ``state:<STATE>`` (bounds one script's run).
BACKFILL_STEP = 500
#: How many lost entries (whose job hash is gone) one ``PURGEABLE`` drops at most (bounds its
#: run); the board runs it again until it stops short of that.
GHOSTS_PER_STEP = 1000
#: Seconds a board waits before indexing again: while conductors of an older version keep
#: ending jobs unindexed, every purge would otherwise scan every finished job.
BACKFILL_PAUSE = 300.0

#: ARGV[3..] = older_than, limit, budget (how many lost entries to drop at most), then the final
#: states. Answers the states whose ``ended`` set lacks jobs of ``state:<STATE>``
#: (space-separated: jobs that ended before the set existed, or by a script that did not index
#: them), ``'1'`` if it stopped at ``budget`` dropped (``'0'`` otherwise), then the members of up
#: to ``limit`` jobs that ended at or before now less older_than, oldest first (post order breaks
#: ties). Entries it meets whose job hash is gone are dropped from ``ended``, ``state`` and
#: ``all``, never answered; so it writes only what leads nowhere, and running it twice is
#: harmless.
PURGEABLE = (
    PRELUDE
    + """
local cutoff = num(clock() - tonumber(ARGV[3]))
local limit, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local stale, found, dropped = {}, {}, 0
for i = 6, #ARGV do
  local state = ARGV[i]
  local live = 0
  -- Lost entries (an evicting Redis, a DEL by hand) are the oldest: answered, they would fill
  -- every batch, delete nothing and end every purge there. Dropped, the next page is read.
  while live < limit and dropped < budget do
    local got = redis.call('ZRANGEBYSCORE', ended[state], '-inf', cutoff, 'WITHSCORES',
      'LIMIT', live, limit - live)
    local before = dropped
    for j = 1, #got, 2 do
      local member = got[j]
      if redis.call('HGET', prefix .. id_of(member), 'member') == member then
        found[#found + 1] = {tonumber(got[j + 1]), member}
        live = live + 1
      else
        redis.call('ZREM', ended[state], member)
        redis.call('ZREM', by_state[state], member)
        redis.call('ZREM', all, member)
        dropped = dropped + 1
      end
    end
    if dropped == before then break end
  end
  if redis.call('ZCARD', by_state[state]) ~= redis.call('ZCARD', ended[state]) then
    stale[#stale + 1] = state
  end
end
table.sort(found, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
local out = {table.concat(stale, ' '), dropped >= budget and '1' or '0'}
for i = 1, math.min(limit, #found) do out[#out + 1] = found[i][2] end
return out
"""
)

#: KEYS[JOB..] = the jobs; ARGV[3] = a final state, ARGV[4..] = the jobs' members (read from
#: ``state:<STATE>``). Indexes in ``ended:<STATE>`` those still in that state, by their
#: ``updated_at``; drops every index entry (``state``, ``ended``, ``all``) of a job whose hash is
#: gone. Answers how many it indexed.
BACKFILL = (
    PRELUDE
    + """
local state = ARGV[3]
local indexed = 0
for i = 4, #ARGV do
  local member, job = ARGV[i], KEYS[JOB + i - 4]
  if redis.call('ZSCORE', by_state[state], member) then
    local f = redis.call('HMGET', job, 'state', 'updated_at')
    if not f[1] then
      -- Evicted or deleted by hand: its entries lead nowhere, and would keep the sets unequal.
      redis.call('ZREM', by_state[state], member)
      redis.call('ZREM', ended[state], member)
      redis.call('ZREM', all, member)
    elseif f[1] == state then
      indexed = indexed + redis.call('ZADD', ended[state], 'NX', f[2], member)
    end
  end
end
return indexed
"""
)

#: KEYS[JOB..] = the jobs; ARGV[3..] = their ids. Deletes those that are finished (with every
#: index entry and their key); answers how many. An id whose hash is gone is skipped: its member
#: and key are in that hash, so its entries are dropped by the next ``PURGEABLE`` (which reads the
#: member) and its key is taken over by the next post with it (see ``POST``).
PURGE = (
    PRELUDE
    + """
local deleted = 0
for i = 3, #ARGV do
  local job = KEYS[JOB + i - 3]
  local f = redis.call('HMGET', job, 'state', 'member', 'key', 'id')
  if (f[1] == 'COMPLETE' or f[1] == 'TRASHED') and f[4] == ARGV[i] then
    redis.call('DEL', job)
    redis.call('ZREM', all, f[2])
    redis.call('ZREM', by_state[f[1]], f[2])
    redis.call('ZREM', ended[f[1]], f[2])
    if f[3] and redis.call('HGET', keys_of, f[3]) == ARGV[i] then
      redis.call('HDEL', keys_of, f[3])
    end
    deleted = deleted + 1
  end
end
return deleted
"""
)


@dataclass(frozen=True, slots=True)
class RetentionScripts:
    """The retention scripts, loaded on a client by
    :func:`~aioconductor._backends.redis.scripts.load`."""

    purgeable: AsyncScript = field(metadata=scripts.lua(PURGEABLE))
    backfill: AsyncScript = field(metadata=scripts.lua(BACKFILL))
    purge: AsyncScript = field(metadata=scripts.lua(PURGE))


class Retention:
    """``_purgeable`` and ``_purge`` of one board's namespace.

    Args:
        link: the board's link to Redis.
        keys: the namespace's shared keys (``KEY_NAMES`` under its prefix), in order.
        prefix: the namespace's key prefix (hash tag included).
    """

    def __init__(self, link: RedisLink, keys: Sequence[str], prefix: str) -> None:
        self._link = link
        self._scripts = scripts.load(RetentionScripts, link.client)
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
        names = (state.value for state in states)
        argv = self._argv(fmt_time(older_than), limit, GHOSTS_PER_STEP, *names)
        # Dropping lost entries twice changes nothing, so the script is retried like a read.
        # Each run stopped short dropped GHOSTS_PER_STEP of them: this loop ends.
        while True:
            reply: list[str] = await self._link.read(
                "purge", lambda: script(keys=self._keys, args=argv)
            )
            if reply[1] == "0":
                return [JobState(name) for name in reply[0].split()], reply[2:]

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
