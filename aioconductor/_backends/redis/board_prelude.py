"""The Lua every Redis board script starts with: its KEYS and ARGV, the server's clock, and
the functions the transitions share (see :mod:`aioconductor._backends.redis.board_scripts`).

Every script gets the same KEYS (see ``KEY_NAMES``), all under the namespace's hash tag, and
``ARGV[1]`` (the job key prefix) and ``ARGV[2]`` (the notification channel). Scripts that pick a
job themselves (``claim_next``, promotions) build its key from the prefix: it carries the same
hash tag, so it is in the same Redis Cluster slot. Times come from the server's ``TIME`` and are
stored as text with microseconds, so every comparison is made on the same numbers.
"""

from __future__ import annotations

__all__ = ["CLAIMED", "GIVE_BACK", "KEY_NAMES", "PRELUDE", "PROMOTE_LIMIT", "member_id"]

#: The names of the board's shared keys, in the order scripts receive them as KEYS[1..13]; a
#: script about one job gets its hash as KEYS[JOB], after them.
KEY_NAMES = (
    "ready",
    "delayed",
    "leases",
    "all",
    "state:SCHEDULED",
    "state:UNCLAIMED",
    "state:CLAIMED",
    "state:COMPLETE",
    "state:TRASHED",
    "seq",
    "keys",
    "ended:COMPLETE",
    "ended:TRASHED",
)

#: How many due jobs and how many expired leases one script promotes at most (bounds its run).
PROMOTE_LIMIT = 500

#: Where the job id starts in a sorted-set member, ``<seq as 16 hex digits>:<id>``.
_ID_AT = 17


def member_id(member: str) -> str:
    """The job id of a sorted-set member ``<seq as 16 hex digits>:<id>`` (Lua's ``id_of``)."""
    return member[_ID_AT:]


#: The keys and arguments by name, the clock, and the functions the scripts share.
PRELUDE = """
local ready, delayed, leases, all = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local by_state = {SCHEDULED = KEYS[5], UNCLAIMED = KEYS[6], CLAIMED = KEYS[7],
                  COMPLETE = KEYS[8], TRASHED = KEYS[9]}
local seq_key, keys_of = KEYS[10], KEYS[11]
-- Finished jobs by when they ended (updated_at), a sorted set per final state, for purge.
local ended = {COMPLETE = KEYS[12], TRASHED = KEYS[13]}
local JOB = @JOB@
local prefix, channel = ARGV[1], ARGV[2]
local PROMOTE_LIMIT = @PROMOTE_LIMIT@

local function num(x) return string.format('%.6f', x) end

-- Server time, canonical: the number that reads back from its own text.
local function clock()
  local t = redis.call('TIME')
  return tonumber(num(tonumber(t[1]) + tonumber(t[2]) / 1000000))
end

local function score(priority) return string.format('%d', -tonumber(priority)) end

local function id_of(member) return string.sub(member, 18) end

local function reply(status, now, job)
  local out = {status, num(now)}
  if job then
    local fields = redis.call('HGETALL', job)
    for i = 1, #fields do out[#out + 1] = fields[i] end
  end
  return out
end

local function announce(kind, priority, id)
  redis.call('PUBLISH', channel, kind .. ' ' .. priority .. ' ' .. id)
end

local function set_state(job, member, priority, old, new)
  if old ~= new then
    redis.call('ZREM', by_state[old], member)
    redis.call('ZADD', by_state[new], score(priority), member)
  end
  redis.call('HSET', job, 'state', new)
end

-- End the job in final state `new` at `now` (its updated_at), indexed for purge by that time.
local function finish(job, member, priority, old, new, now)
  set_state(job, member, priority, old, new)
  redis.call('HSET', job, 'updated_at', num(now))
  redis.call('ZADD', ended[new], num(now), member)
end

local function claimable(state, not_before, expires_at, now)
  if state == 'UNCLAIMED' then return true end
  if state == 'SCHEDULED' then return (not not_before) or tonumber(not_before) <= now end
  if state == 'CLAIMED' then return (not expires_at) or tonumber(expires_at) <= now end
  return false
end

local function take(job, member, priority, state, owner, lease, now)
  redis.call('HINCRBY', job, 'token', 1)
  redis.call('HINCRBY', job, 'attempts', 1)
  local expires = num(now + lease)
  redis.call('HSET', job, 'owner', owner, 'expires_at', expires, 'updated_at', num(now))
  redis.call('ZREM', ready, member)
  redis.call('ZREM', delayed, member)
  redis.call('ZADD', leases, expires, member)
  set_state(job, member, priority, state, 'CLAIMED')
end

-- Move the jobs of `timers` (delayed, or leases) whose time came into the ready set, each
-- announced as `kind`: those still in `state`, whose `field` (not_before, or expires_at) is the
-- time. A job whose time moved later goes back in at its new time.
local function promote_from(timers, state, field, kind, now)
  local members = redis.call('ZRANGEBYSCORE', timers, '-inf', num(now), 'LIMIT', 0, PROMOTE_LIMIT)
  for _, member in ipairs(members) do
    redis.call('ZREM', timers, member)
    local job = prefix .. id_of(member)
    local f = redis.call('HMGET', job, 'state', 'priority', field)
    if f[1] == state then
      -- claimable reads not_before for SCHEDULED and expires_at for CLAIMED: f[3] is that one.
      if claimable(f[1], f[3], f[3], now) then
        if state == 'SCHEDULED' then set_state(job, member, f[2], state, 'UNCLAIMED') end
        redis.call('ZADD', ready, score(f[2]), member)
        announce(kind, f[2], id_of(member))
      else
        redis.call('ZADD', timers, f[3], member)
      end
    end
  end
  return #members
end

-- Move due delayed jobs and expired leases into the ready set, announcing each one.
local function promote(now)
  return promote_from(delayed, 'SCHEDULED', 'not_before', 'due', now)
    + promote_from(leases, 'CLAIMED', 'expires_at', 'expired', now)
end

-- The job's hash fields for a verb with a claim, or nil and why not.
local function current(job, owner, token)
  local f = redis.call('HMGET', job, 'state', 'owner', 'token', 'member', 'priority')
  if not f[1] then return nil, 'notfound' end
  if f[1] ~= 'CLAIMED' or f[2] ~= owner or f[3] ~= token then return nil, 'lost' end
  return f
end
""".replace("@PROMOTE_LIMIT@", str(PROMOTE_LIMIT)).replace("@JOB@", str(len(KEY_NAMES) + 1))

#: The start of a verb with a claim (ARGV[3..4] = owner, token): `job`, `now`, and `f` the job's
#: fields (see `current`), or the refusal answered.
CLAIMED = """
local job = KEYS[JOB]
local now = clock()
local f, why = current(job, ARGV[3], ARGV[4])
if not f then return reply(why, now, why == 'lost' and job or nil) end"""

#: The claimed job back to UNCLAIMED, offered to every conductor (abandon and release).
GIVE_BACK = """
local function give_back(job, member, priority, now)
  set_state(job, member, priority, 'CLAIMED', 'UNCLAIMED')
  redis.call('HDEL', job, 'owner', 'expires_at')
  redis.call('HSET', job, 'updated_at', num(now))
  redis.call('ZREM', leases, member)
  redis.call('ZADD', ready, score(priority), member)
  announce('abandoned', priority, id_of(member))
end
"""
