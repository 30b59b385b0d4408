"""The Redis board's operator controls as Lua scripts: cancelling a job, and setting and reading
concurrency limits (see :mod:`aioconductor.boards._cancelling` and
:mod:`aioconductor.boards._limiting`). Each is one script, atomic on the server, starting with
the prelude of :mod:`aioconductor._backends.redis.board_prelude` (which also keeps the limit
keys' ``holders`` and ``parked`` sets that the claim scripts use).

A ``CANCEL`` of a claimed job and every end of a limited claim are pushed on the board's
pub/sub channel (``cancel <priority> <id>``, ``slot_freed <priority> <id>``), as posts are.
"""

from __future__ import annotations

from aioconductor._backends.redis.board_prelude import PRELUDE

__all__ = ["CANCEL", "LIMITS", "SET_LIMIT"]

#: KEYS[JOB] = job; ARGV[3] = reason. An UNCLAIMED or SCHEDULED job ends COMPLETE/CANCELLED
#: (result ``{}``, claim cleared, indexed for purge); a CLAIMED one (live or expired lease) gets
#: ``cancel_reason`` and its owner a ``cancel`` notification; a flagged or final job is answered
#: as it is. Answers ``ok`` with the job, or ``notfound``.
CANCEL = (
    PRELUDE
    + """
local job = KEYS[JOB]
local now = clock()
local f = redis.call('HMGET', job, 'state', 'member', 'priority', 'limit_key', 'cancel_reason')
if not f[1] then return reply('notfound', now, nil) end
local state, member, priority, key = f[1], f[2], f[3], f[4]
if f[5] or state == 'COMPLETE' or state == 'TRASHED' then return reply('ok', now, job) end
redis.call('HSET', job, 'cancel_reason', ARGV[3], 'updated_at', num(now))
if state == 'CLAIMED' then
  announce('cancel', priority, id_of(member))
  return reply('ok', now, job)
end
finish(job, member, priority, state, 'COMPLETE', now)
redis.call('HSET', job, 'outcome', 'CANCELLED', 'result', '{}')
redis.call('HDEL', job, 'owner', 'expires_at')
unready(member, key)
redis.call('ZREM', delayed, member)
redis.call('ZREM', leases, member)
-- It held no slot, but a refill may have handed it one: give that to the key's next job.
refill(key, now)
return reply('ok', now, job)
"""
)

#: ARGV[3..] = limit key, limit ('' to remove it). A raised limit moves as many parked jobs of
#: the key back into ready as it now has free slots; a removed one moves them all. Announces the
#: best of them (``slot_freed``). Answers the server's time. Setting the same limit twice
#: changes nothing more, so a lost reply may be sent again.
SET_LIMIT = (
    PRELUDE
    + """
local now = clock()
local key, limit = ARGV[3], ARGV[4]
local best, best_score
if limit == '' then
  redis.call('HDEL', limits, key)
  best, best_score = unpark(key, nil)
else
  redis.call('HSET', limits, key, limit)
  local n = tonumber(limit) - live(key, now)
  if n > 0 then best, best_score = unpark(key, n) end
end
if best then
  announce('slot_freed', string.format('%d', -tonumber(best_score)), id_of(best))
end
return num(now)
"""
)

#: Read only. Answers the server's time, then per limit its key, its limit and how many jobs of
#: the key hold a live claim (lease expiring after now).
LIMITS = (
    PRELUDE
    + """
local now = clock()
local set = redis.call('HGETALL', limits)
local out = {num(now)}
for i = 1, #set, 2 do
  out[#out + 1] = set[i]
  out[#out + 1] = set[i + 1]
  out[#out + 1] = redis.call('ZCOUNT', holders_of(set[i]), '(' .. num(now), '+inf')
end
return out
"""
)
