"""The Lua scripts of the Redis board: each one transition, atomic on the server.

Each starts with the prelude of :mod:`aioconductor._backends.redis.board_prelude` (its KEYS and
ARGV, the server's clock, the functions the transitions share).

Every transition answers ``{status, now, field, value, field, value, ...}`` (the job's hash) or
``{status, now}``. Statuses: ``ok``, ``none``, ``notfound``, ``lost``, ``unclaimable``, ``final``;
``held`` (``{'held', now, id}``: a post whose key a job holds), ``passed`` (a schedule's tick
at or before its last one) and ``full`` (a claim or renew refused: the job's limit key has no
free slot). The retention scripts are in :mod:`aioconductor._backends.redis.board_retention`;
cancel and the limit scripts in :mod:`aioconductor._backends.redis.board_controls`.

Fields written only once they are set (absent reads as 0, none or empty): ``key``,
``limit_key``, ``cancel_reason``, ``releases``, ``abandons``, ``retries``, ``retry`` (the policy
as JSON), ``failures`` (a JSON array, see ``RETRY``), ``not_before``, ``headers``,
``owner``/``expires_at`` (while claimed) and the outcome's fields.

:class:`BoardScripts` holds them loaded on a client, one attribute a script.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field

from redis.commands.core import AsyncScript

from aioconductor._backends.redis.board_controls import CANCEL
from aioconductor._backends.redis.board_controls import LIMITS
from aioconductor._backends.redis.board_controls import SET_LIMIT
from aioconductor._backends.redis.board_prelude import CLAIMED
from aioconductor._backends.redis.board_prelude import GIVE_BACK
from aioconductor._backends.redis.board_prelude import PRELUDE
from aioconductor._backends.redis.scripts import lua
from aioconductor.models import MAX_KEPT_FAILURES

__all__ = [
    "ABANDON",
    "CLAIM",
    "CLAIM_BATCH",
    "CLAIM_NEXT",
    "CONSUME",
    "CONSUME_UNREAD",
    "COUNT",
    "POST",
    "PROMOTE",
    "REGISTER",
    "RELEASE",
    "RENEW",
    "RETRY",
    "TRASH",
    "BoardScripts",
]

#: KEYS[JOB] = job; ARGV[3..] = id, name, flow, args, priority, max_attempts, delay, not_before,
#: headers, retry policy ('' for none), key ('' for none), limit key ('' for none). A key held
#: by a job (whatever its
#: state) writes nothing and answers ``{'held', now, holder's id}``; a key whose holder's hash is
#: gone is taken over by this job.
#:
#: A schedule's tick also gives KEYS[JOB + 1] = the ``ticks`` hash, ARGV[15..16] = schedule,
#: tick: at or before the schedule's last tick it writes nothing and answers ``{'passed',
#: now}``; otherwise the tick becomes the last one, whether the job is posted or its key held.
POST = (
    PRELUDE
    + """
local job = KEYS[JOB]
if redis.call('EXISTS', job) == 1 then return reply('ok', clock(), job) end
local now = clock()
local id, priority, key = ARGV[3], ARGV[7], ARGV[13]
if ARGV[15] then
  local ticks, schedule, tick = KEYS[JOB + 1], ARGV[15], ARGV[16]
  local last = redis.call('HGET', ticks, schedule)
  if last and tonumber(last) >= tonumber(tick) then return {'passed', num(now)} end
  redis.call('HSET', ticks, schedule, tick)
end
if key ~= '' then
  local holder = redis.call('HGET', keys_of, key)
  -- A holder whose hash is gone (evicted, deleted by hand) holds nothing: answering 'held'
  -- would send the caller to read a job that is not there, again and again.
  if holder and redis.call('EXISTS', prefix .. holder) == 1 then
    return {'held', num(now), holder}
  end
end
local seq = string.format('%d', redis.call('INCR', seq_key))
local member = string.format('%016x', tonumber(seq)) .. ':' .. id
local not_before = nil
if tonumber(ARGV[9]) > 0 then
  not_before = num(now + tonumber(ARGV[9]))
elseif ARGV[10] ~= '' then
  not_before = ARGV[10]
end
local state = 'UNCLAIMED'
if not_before and tonumber(not_before) > now then state = 'SCHEDULED' end
redis.call('HSET', job, 'id', id, 'name', ARGV[4], 'flow', ARGV[5], 'args', ARGV[6],
  'priority', priority, 'seq', seq, 'member', member, 'created_at', num(now),
  'updated_at', num(now), 'max_attempts', ARGV[8], 'attempts', '0', 'token', '0', 'state', state)
if not_before then redis.call('HSET', job, 'not_before', not_before) end
if ARGV[11] ~= '{}' then redis.call('HSET', job, 'headers', ARGV[11]) end
if ARGV[12] ~= '' then redis.call('HSET', job, 'retry', ARGV[12]) end
if key ~= '' then
  redis.call('HSET', job, 'key', key)
  redis.call('HSET', keys_of, key, id)
end
if ARGV[14] ~= '' then redis.call('HSET', job, 'limit_key', ARGV[14]) end
redis.call('ZADD', all, score(priority), member)
redis.call('ZADD', by_state[state], score(priority), member)
if state == 'SCHEDULED' then
  redis.call('ZADD', delayed, not_before, member)
else
  redis.call('ZADD', ready, score(priority), member)
  announce('posted', priority, id)
end
return reply('ok', now, job)
"""
)

#: KEYS[JOB] = job; ARGV[3..] = owner, lease. A job whose limit key is full answers ``full``.
CLAIM = (
    PRELUDE
    + """
local job = KEYS[JOB]
local now = clock()
local f = redis.call('HMGET', job, 'state', 'not_before', 'expires_at', 'member', 'priority',
  'limit_key')
if not f[1] then return reply('notfound', now, nil) end
if not claimable(f[1], f[2], f[3], now) then return reply('unclaimable', now, job) end
local key = f[6]
if key then
  local free = slots({}, key, now)
  if free and free <= 0 then return reply('full', now, job) end
end
take(job, f[4], f[5], f[1], ARGV[3], tonumber(ARGV[4]), now, key)
return reply('ok', now, job)
"""
)

#: The claim of the best claimable job, for the claim_next and claim_batch scripts.
_TAKE_NEXT = """
-- Pop the ready set until a claimable job is taken for ARGV[3] (owner) and ARGV[4] (lease):
-- answers its key, or nil once the set is empty. A job whose limit key has no slot left in
-- `free` (see slots) is parked; a taken one uses up its slot.
local function take_next(free, now)
  while true do
    local popped = redis.call('ZPOPMIN', ready)
    if #popped == 0 then return nil end
    local member = popped[1]
    local job = prefix .. id_of(member)
    local f = redis.call('HMGET', job, 'state', 'not_before', 'expires_at', 'priority', 'limit_key')
    if f[1] and claimable(f[1], f[2], f[3], now) then
      local key = f[5]
      local left = key and slots(free, key, now)
      if left and left <= 0 then
        redis.call('ZADD', parked_of(key), popped[2], member)
      else
        if left then free[key] = left - 1 end
        take(job, member, f[4], f[1], ARGV[3], tonumber(ARGV[4]), now, key)
        return job
      end
    end
  end
end
"""

#: ARGV[3..] = owner, lease. A job whose limit key is full is parked (see the prelude) and the
#: next one taken.
CLAIM_NEXT = (
    PRELUDE
    + _TAKE_NEXT
    + """
local now = clock()
promote(now)
local job = take_next({}, now)
if not job then return reply('none', now, nil) end
return reply('ok', now, job)
"""
)

#: ARGV[3..] = owner, lease, limit. Replies status, time, then per job its field count and
#: fields. Takes no more jobs of a limit key than its free slots; parks the rest it meets.
CLAIM_BATCH = (
    PRELUDE
    + _TAKE_NEXT
    + """
local now = clock()
promote(now)
local out = {'ok', num(now)}
local free = {}
for _ = 1, tonumber(ARGV[5]) do
  local job = take_next(free, now)
  if not job then break end
  local fields = redis.call('HGETALL', job)
  out[#out + 1] = #fields
  for i = 1, #fields do out[#out + 1] = fields[i] end
end
return out
"""
)

#: KEYS[JOB] = job; ARGV[3..] = owner, token, lease. A claim whose lease ran out takes its
#: slot again: if its limit key is full without it, nothing changes and it answers ``full``.
RENEW = (
    PRELUDE
    + CLAIMED
    + """
local member, key = f[4], f[6]
local expires = num(now + tonumber(ARGV[5]))
if key then
  if tonumber(redis.call('HGET', job, 'expires_at')) <= now then
    local left = slots({}, key, now)
    if left and left <= 0 then return reply('full', now, job) end
  end
  redis.call('ZADD', holders_of(key), expires, member)
end
redis.call('HSET', job, 'expires_at', expires, 'updated_at', num(now))
redis.call('ZADD', leases, expires, member)
unready(member, key)
return reply('ok', now, job)
"""
)

# The checks and writes of CONSUME, before its reply.
_CONSUME_WRITE = (
    PRELUDE
    + CLAIMED
    + """
finish(job, f[4], f[5], 'CLAIMED', 'COMPLETE', now)
redis.call('HSET', job, 'outcome', ARGV[5], 'result', ARGV[6])
redis.call('ZREM', leases, f[4])
unready(f[4], f[6])
let_go(f[4], f[5], f[6], now, true)"""
)

#: KEYS[JOB] = job; ARGV[3..] = owner, token, outcome, result.
CONSUME = _CONSUME_WRITE + "\nreturn reply('ok', now, job)\n"

#: ``CONSUME`` for a caller that has no use for the consumed job (the fused ending): the same
#: checks, refusals and writes, but ``{'ok'}`` without the job's hash, which would be read,
#: sent and parsed for nothing.
CONSUME_UNREAD = _CONSUME_WRITE + "\nreturn {'ok'}\n"

#: KEYS[JOB] = job; ARGV[3..] = owner, token. The run spent its attempt.
ABANDON = (
    PRELUDE
    + GIVE_BACK
    + CLAIMED
    + """
redis.call('HINCRBY', job, 'abandons', 1)
give_back(job, f[4], f[5], f[6], now)
return reply('ok', now, job)
"""
)

#: KEYS[JOB] = job; ARGV[3..] = owner, token. The attempt is given back, at most max_attempts
#: times a job; later releases spend it as abandon does.
RELEASE = (
    PRELUDE
    + GIVE_BACK
    + CLAIMED
    + """
local counts = redis.call('HMGET', job, 'releases', 'max_attempts')
if tonumber(counts[1] or '0') < tonumber(counts[2]) then
  redis.call('HINCRBY', job, 'releases', 1)
  redis.call('HINCRBY', job, 'attempts', -1)
else
  redis.call('HINCRBY', job, 'abandons', 1)
end
give_back(job, f[4], f[5], f[6], now)
return reply('ok', now, job)
"""
)

#: KEYS[JOB] = job; ARGV[3..] = owner, token, delay, the run's failure as JSON ('' for none).
#:
#: ``failures`` is a JSON array whose items are the failures exactly as the board encoded
#: them, one a line: compact JSON never holds a raw newline (inside strings it is escaped), so
#: the script keeps the latest ones by splitting lines, with no JSON decoding (cjson would
#: round floats and turn empty arrays into objects).
#:
#: A job cancelled meanwhile (``cancel_reason`` set) is not scheduled: it ends ``COMPLETE``
#: with outcome ``CANCELLED`` and result ``{}``, the failure kept, retries not counted.
RETRY = (
    PRELUDE
    + CLAIMED
    + """
local member, priority, key = f[4], f[5], f[6]
local not_before = num(now + tonumber(ARGV[5]))
if ARGV[6] ~= '' then
  local kept = {}
  local old = redis.call('HGET', job, 'failures')
  if old then
    for line in string.gmatch(string.sub(old, 2, -2), '[^\\n]+') do
      if string.sub(line, -1) == ',' then line = string.sub(line, 1, -2) end
      kept[#kept + 1] = line
    end
  end
  kept[#kept + 1] = ARGV[6]
  local first = math.max(1, #kept - @MAX_KEPT_FAILURES@ + 1)
  redis.call('HSET', job, 'failures', '[' .. table.concat(kept, ',\\n', first, #kept) .. ']')
end
redis.call('ZREM', leases, member)
unready(member, key)
if f[7] then
  finish(job, member, priority, 'CLAIMED', 'COMPLETE', now)
  redis.call('HSET', job, 'outcome', 'CANCELLED', 'result', '{}')
else
  redis.call('HINCRBY', job, 'attempts', -1)
  redis.call('HINCRBY', job, 'retries', 1)
  set_state(job, member, priority, 'CLAIMED', 'SCHEDULED')
  redis.call('HDEL', job, 'owner', 'expires_at')
  redis.call('HSET', job, 'not_before', not_before, 'updated_at', num(now))
  redis.call('ZADD', delayed, not_before, member)
end
let_go(member, priority, key, now, true)
return reply('ok', now, job)
"""
).replace("@MAX_KEPT_FAILURES@", str(MAX_KEPT_FAILURES))

#: KEYS[JOB] = job; ARGV[3..] = with_claim ('1' or '0'), owner, token, reason.
TRASH = (
    PRELUDE
    + """
local job = KEYS[JOB]
local now = clock()
local state, member, priority, key
if ARGV[3] == '1' then
  local f, why = current(job, ARGV[4], ARGV[5])
  if not f then return reply(why, now, why == 'lost' and job or nil) end
  state, member, priority, key = f[1], f[4], f[5], f[6]
else
  local f = redis.call('HMGET', job, 'state', 'member', 'priority', 'limit_key')
  if not f[1] then return reply('notfound', now, nil) end
  if f[1] == 'COMPLETE' or f[1] == 'TRASHED' then return reply('final', now, job) end
  state, member, priority, key = f[1], f[2], f[3], f[4]
end
finish(job, member, priority, state, 'TRASHED', now)
redis.call('HSET', job, 'trash_reason', ARGV[6])
unready(member, key)
redis.call('ZREM', delayed, member)
redis.call('ZREM', leases, member)
-- A job trashed unclaimed held no slot, but may have been handed one by a refill.
let_go(member, priority, key, now, state == 'CLAIMED')
return reply('ok', now, job)
"""
)

#: Promote what is due; answer {now, promoted, next due time or ''}.
PROMOTE = (
    PRELUDE
    + """
local now = clock()
local promoted = promote(now)
local next_due = nil
for _, key in ipairs({delayed, leases}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #first > 0 and (next_due == nil or tonumber(first[2]) < next_due) then
    next_due = tonumber(first[2])
  end
end
return {num(now), promoted, next_due and num(next_due) or ''}
"""
)

#: Read only. ARGV[3] = state; answers {now, count} as iterjobs would list them.
COUNT = (
    PRELUDE
    + """
local now = clock()
local due = redis.call('ZCOUNT', delayed, '-inf', num(now))
local state = ARGV[3]
local n = redis.call('ZCARD', by_state[state])
if state == 'UNCLAIMED' then n = n + due elseif state == 'SCHEDULED' then n = n - due end
return {num(now), n}
"""
)

#: KEYS = conductors zset, conductor hash; ARGV = owner, name, ttl, meta.
REGISTER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function num(x) return string.format('%.6f', x) end
local ttl = tonumber(ARGV[3])
local started = redis.call('HGET', KEYS[2], 'started_at') or num(now)
local expires = num(now + ttl)
redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'name', ARGV[2], 'started_at', started,
  'heartbeat_at', num(now), 'expires_at', expires, 'meta', ARGV[4])
-- Forgotten an hour after it expired: it keeps its started_at across short outages only.
redis.call('PEXPIRE', KEYS[2], math.floor((ttl + 3600) * 1000))
redis.call('ZADD', KEYS[1], expires, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', num(now - 3600))
return num(now)
"""


@dataclass(frozen=True, slots=True)
class BoardScripts:
    """The board's scripts, loaded on a client by :func:`~aioconductor._backends.redis.scripts.load`
    (an attribute a script: a misspelt name fails the type check, not a call)."""

    post: AsyncScript = field(metadata=lua(POST))
    claim: AsyncScript = field(metadata=lua(CLAIM))
    claim_batch: AsyncScript = field(metadata=lua(CLAIM_BATCH))
    claim_next: AsyncScript = field(metadata=lua(CLAIM_NEXT))
    renew: AsyncScript = field(metadata=lua(RENEW))
    consume: AsyncScript = field(metadata=lua(CONSUME))
    abandon: AsyncScript = field(metadata=lua(ABANDON))
    release: AsyncScript = field(metadata=lua(RELEASE))
    retry: AsyncScript = field(metadata=lua(RETRY))
    trash: AsyncScript = field(metadata=lua(TRASH))
    cancel: AsyncScript = field(metadata=lua(CANCEL))
    set_limit: AsyncScript = field(metadata=lua(SET_LIMIT))
    limits: AsyncScript = field(metadata=lua(LIMITS))
    promote: AsyncScript = field(metadata=lua(PROMOTE))
    count: AsyncScript = field(metadata=lua(COUNT))
    register: AsyncScript = field(metadata=lua(REGISTER))
