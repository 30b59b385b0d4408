"""The Lua every Redis board script starts with: its KEYS and ARGV, the server's clock, and
the functions the transitions share (see :mod:`aioconductor._backends.redis.board_scripts`).

Every script gets the same KEYS (see ``KEY_NAMES``), all under the namespace's hash tag, and
``ARGV[1]`` (the job key prefix) and ``ARGV[2]`` (the notification channel). Scripts that pick a
job themselves (``claim_next``, promotions) build its key from the prefix: it carries the same
hash tag, so it is in the same Redis Cluster slot. Times come from the server's ``TIME`` and are
stored as text with microseconds, so every comparison is made on the same numbers.

Concurrency limits (see :mod:`aioconductor.boards._limiting`) keep, besides the ``limits`` hash
(limit key -> limit), two sorted sets per limit key, whose names the scripts build from the
``limits`` key's own (the namespace's prefix, so the same hash tag and Cluster slot, as for job
keys): ``holders:<key>``, the key's claimed jobs scored by lease expiry (kept for every job
posted with a limit key, so a limit set later counts the claims already running; expired ones
are dropped before each count), and ``parked:<key>``, the key's claimable jobs a claim passed
over while the key was full, scored as in ``ready``. A parked job is out of ``ready``, so claims
never scan it again; whatever frees a slot of the key (an end of a claim, a lease found expired,
a raised or removed limit) moves as many parked jobs back into ``ready`` as the key has free
slots. A job with no limit key costs the claim scripts one more hash field read, nothing else.
"""

from __future__ import annotations

__all__ = ["CLAIMED", "GIVE_BACK", "KEY_NAMES", "PRELUDE", "PROMOTE_LIMIT", "member_id"]

#: The names of the board's shared keys, in the order scripts receive them as KEYS[1..14]; a
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
    "limits",
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
local limits = KEYS[14]
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

-- The namespace's prefix (`aioc:{NAME}:`, from the limits key's name) and the two sorted sets
-- of limit key `key`: its claimed jobs by lease expiry, and its parked claimable jobs.
local space = string.sub(limits, 1, -7)
local function holders_of(key) return space .. 'holders:' .. key end
local function parked_of(key) return space .. 'parked:' .. key end

-- How many jobs of limit key `key` hold a live claim at `now` (expired holders dropped first).
local function live(key, now)
  local holders = holders_of(key)
  redis.call('ZREMRANGEBYSCORE', holders, '-inf', num(now))
  return redis.call('ZCARD', holders)
end

-- The free slots of limit key `key` at `now` (false if it has no limit), read once a script
-- into the table `free`, which the script keeps up to date as it takes jobs.
local function slots(free, key, now)
  local n = free[key]
  if n == nil then
    local limit = redis.call('HGET', limits, key)
    n = limit and (tonumber(limit) - live(key, now)) or false
    free[key] = n
  end
  return n
end

-- Move the best `n` parked jobs of `key` (all, if n is nil) back into ready; answers the best
-- one's member and score, or nil.
local function unpark(key, n)
  local parked = parked_of(key)
  local best, best_score = nil, nil
  while n == nil or n > 0 do
    local step = (n == nil or n > 500) and 500 or n
    local got = redis.call('ZPOPMIN', parked, step)
    if #got == 0 then break end
    local args = {}
    for i = 1, #got, 2 do
      args[#args + 1] = got[i + 1]
      args[#args + 1] = got[i]
    end
    redis.call('ZADD', ready, unpack(args))
    if not best then best, best_score = got[1], got[2] end
    if n then n = n - #got / 2 end
    if #got < 2 * step then break end
  end
  return best, best_score
end

-- Give limit key `key` (false for none) its parked jobs back, as many as it has free slots
-- at `now`: after a claim ended, or anything else that may have left a slot without a taker.
local function refill(key, now)
  if not key then return false end
  local limit = redis.call('HGET', limits, key)
  if not limit then return false end
  local n = tonumber(limit) - live(key, now)
  if n > 0 then unpark(key, n) end
  return true
end

-- The claim of job `member` (limit key `key`, or false) ended at `now`: its slot is free. The
-- end is announced (SLOT_FREED) when the key has a limit and `say` is true (a job given back
-- is announced as abandoned instead).
local function let_go(member, priority, key, now, say)
  if not key then return end
  redis.call('ZREM', holders_of(key), member)
  if refill(key, now) and say then announce('slot_freed', priority, id_of(member)) end
end

-- The job is no longer a candidate of claim_next (neither ready nor parked).
local function unready(member, key)
  redis.call('ZREM', ready, member)
  if key then redis.call('ZREM', parked_of(key), member) end
end

local function take(job, member, priority, state, owner, lease, now, key)
  redis.call('HINCRBY', job, 'token', 1)
  redis.call('HINCRBY', job, 'attempts', 1)
  local expires = num(now + lease)
  redis.call('HSET', job, 'owner', owner, 'expires_at', expires, 'updated_at', num(now))
  unready(member, key)
  redis.call('ZREM', delayed, member)
  redis.call('ZADD', leases, expires, member)
  if key then redis.call('ZADD', holders_of(key), expires, member) end
  set_state(job, member, priority, state, 'CLAIMED')
end

-- Move the jobs of `timers` (delayed, or leases) whose time came into the ready set, each
-- announced as `kind`: those still in `state`, whose `field` (not_before, or expires_at) is the
-- time. A job whose time moved later goes back in at its new time. An expired lease frees its
-- limit key's slot (the job itself is announced as expired).
local function promote_from(timers, state, field, kind, now)
  local members = redis.call('ZRANGEBYSCORE', timers, '-inf', num(now), 'LIMIT', 0, PROMOTE_LIMIT)
  for _, member in ipairs(members) do
    redis.call('ZREM', timers, member)
    local job = prefix .. id_of(member)
    local f = redis.call('HMGET', job, 'state', 'priority', field, 'limit_key')
    if f[1] == state then
      -- claimable reads not_before for SCHEDULED and expires_at for CLAIMED: f[3] is that one.
      if claimable(f[1], f[3], f[3], now) then
        if state == 'SCHEDULED' then set_state(job, member, f[2], state, 'UNCLAIMED') end
        redis.call('ZADD', ready, score(f[2]), member)
        if state == 'CLAIMED' then refill(f[4], now) end
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

-- The job's hash fields for a verb with a claim (state, owner, token, member, priority,
-- limit_key, cancel_reason), or nil and why not.
local function current(job, owner, token)
  local f = redis.call('HMGET', job, 'state', 'owner', 'token', 'member', 'priority',
    'limit_key', 'cancel_reason')
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

#: The claimed job back to UNCLAIMED, offered to every conductor (abandon and release); its
#: slot freed (the ABANDONED notification announces it).
GIVE_BACK = """
local function give_back(job, member, priority, key, now)
  set_state(job, member, priority, 'CLAIMED', 'UNCLAIMED')
  redis.call('HDEL', job, 'owner', 'expires_at')
  redis.call('HSET', job, 'updated_at', num(now))
  redis.call('ZREM', leases, member)
  if key then redis.call('ZREM', parked_of(key), member) end
  redis.call('ZADD', ready, score(priority), member)
  let_go(member, priority, key, now, false)
  announce('abandoned', priority, id_of(member))
end
"""
