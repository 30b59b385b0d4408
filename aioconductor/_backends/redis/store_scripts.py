"""The Lua scripts of the Redis store: each write one atomic, fenced change.

Keys (under the namespace's hash tag ``aioc:{NAME}:``):

- ``books``: sorted set of logbook uuids by ``created_at``.
- ``book:<uuid>``: hash with ``name``, ``detail`` (the rest, JSON), ``created_at``, ``token``
  (the highest fencing token that wrote), ``nflows`` and ``f:<flow uuid>`` (add order).
- ``flow:<book uuid>:<flow uuid>``: hash with ``detail`` (JSON, atoms excepted), ``version``,
  and per atom ``a:<name>`` (JSON), ``v:<name>`` (version) and ``i:<name>`` (add order).

A script that reaches a flow hash builds its key from ``ARGV[1]``, the flow key prefix of the
logbook: it carries the namespace's hash tag, so it is in the same Redis Cluster slot.

Replies: ``{'ok', ...}``, ``{'notfound'}``, ``{'noflow'}``, ``{'lost', stored token}`` or
``{'conflict', stored version}``.

:class:`StoreScripts` holds them loaded on a client, one attribute a script.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field

from redis.commands.core import AsyncScript

from aioconductor._backends.redis.scripts import lua

__all__ = [
    "DESTROY",
    "GET",
    "SAVE_LOGBOOK",
    "UPDATE_ATOMS",
    "UPDATE_FLOW",
    "UPDATE_FLOW_UNREAD",
    "StoreScripts",
]

_PRELUDE = """
local flow_prefix = ARGV[1]

-- The token to store after a write carrying `token` ('' for none), or nil if it is stale.
local function fenced(book, token)
  local stored = redis.call('HGET', book, 'token')
  if token == '' then return stored or '' end
  if stored and tonumber(token) < tonumber(stored) then return nil, stored end
  return token
end

local function store_token(book, token)
  if token ~= '' then redis.call('HSET', book, 'token', token) end
end

local function put_atom(flow, name, json, version)
  if redis.call('HEXISTS', flow, 'i:' .. name) == 0 then
    redis.call('HSET', flow, 'i:' .. name, redis.call('HINCRBY', flow, 'natoms', 1))
  end
  redis.call('HSET', flow, 'a:' .. name, json, 'v:' .. name, version)
end

-- Write `count` atoms from ARGV starting at `at` (name, json, version) into flow hash `flow`.
local function put_atoms(flow, at, count)
  for i = 0, count - 1 do
    put_atom(flow, ARGV[at + 3 * i], ARGV[at + 3 * i + 1], ARGV[at + 3 * i + 2])
  end
end

-- The first of `count` atoms in ARGV from `at` (name, json, version read) whose version read
-- is not the one stored in flow hash `flow`: its name and stored version; nil if none is.
local function stale_atom(flow, at, count)
  for i = 0, count - 1 do
    local name = ARGV[at + 3 * i]
    local current = tonumber(redis.call('HGET', flow, 'v:' .. name) or '0')
    if current ~= tonumber(ARGV[at + 2 + 3 * i]) then return name, tostring(current) end
  end
  return nil
end

-- Write `count` atoms from ARGV at `at` (name, json, version read), each one version up.
local function put_read_atoms(flow, at, count)
  for i = 0, count - 1 do
    local read = tonumber(ARGV[at + 2 + 3 * i])
    put_atom(flow, ARGV[at + 3 * i], ARGV[at + 1 + 3 * i], tostring(read + 1))
  end
end

local function add_flow(book, uuid)
  local index = redis.call('HINCRBY', book, 'nflows', 1)
  redis.call('HSET', book, 'f:' .. uuid, index)
end

-- The logbook's hash, then each flow's hash.
local function dump(book)
  local fields = redis.call('HGETALL', book)
  local out = {fields}
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 2) == 'f:' then
      out[#out + 1] = redis.call('HGETALL', flow_prefix .. string.sub(fields[i], 3))
    end
  end
  return out
end
"""

# The start of a write to a flow (KEYS = book, flow; ARGV[2] = token): `book`, `flow`, and
# `token` to store, or the refusal answered.
_FENCED_FLOW = """
local book, flow = KEYS[1], KEYS[2]
if redis.call('EXISTS', book) == 0 then return {'notfound'} end
local token, stored = fenced(book, ARGV[2])
if not token then return {'lost', stored} end"""

#: KEYS = books, book. ARGV = flow prefix, token, uuid, name, detail, created_at, flow count,
#: then per flow: uuid, detail, version, atom count, then per atom: name, json, version.
SAVE_LOGBOOK = (
    _PRELUDE
    + """
local book = KEYS[2]
local token, stored = fenced(book, ARGV[2])
if not token then return {'lost', stored} end
local created = redis.call('EXISTS', book) == 0
if created then
  redis.call('HSET', book, 'uuid', ARGV[3], 'created_at', ARGV[6], 'nflows', 0)
  redis.call('ZADD', KEYS[1], ARGV[6], ARGV[3])
end
redis.call('HSET', book, 'name', ARGV[4], 'detail', ARGV[5])
store_token(book, token)
local at = 8
for _ = 1, tonumber(ARGV[7]) do
  local uuid, detail, version, atoms = ARGV[at], ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3])
  if redis.call('HEXISTS', book, 'f:' .. uuid) == 0 then
    local flow = flow_prefix .. uuid
    redis.call('DEL', flow)
    redis.call('HSET', flow, 'detail', detail, 'version', version, 'natoms', 0)
    put_atoms(flow, at + 4, atoms)
    add_flow(book, uuid)
  end
  at = at + 4 + 3 * atoms
end
-- A new logbook holds exactly what was given: the caller builds the reply itself.
if created then return {'created'} end
return {'ok', dump(book)}
"""
)

#: Read only. KEYS = book. ARGV = flow prefix.
GET = (
    _PRELUDE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'notfound'} end
return {'ok', dump(KEYS[1])}
"""
)

# The checks and writes of UPDATE_FLOW, before its reply.
_UPDATE_FLOW_WRITE = (
    _PRELUDE
    + _FENCED_FLOW
    + """
local known = redis.call('HEXISTS', book, 'f:' .. ARGV[3]) == 1
local version = known and tonumber(redis.call('HGET', flow, 'version')) or 0
if version ~= tonumber(ARGV[5]) then return {'conflict', tostring(version)} end
local at = 7 + 3 * tonumber(ARGV[6])
local updates = tonumber(ARGV[at] or '0')
if updates > 0 and not known then return {'noflow'} end
-- Every check before any write: a refused update changes nothing.
local stale, current = stale_atom(flow, at + 1, updates)
if stale then return {'atomconflict', stale, current} end
put_read_atoms(flow, at + 1, updates)
redis.call('HSET', flow, 'detail', ARGV[4], 'version', version + 1)
if not known then
  redis.call('HSET', flow, 'natoms', 0)
  put_atoms(flow, 7, tonumber(ARGV[6]))
  add_flow(book, ARGV[3])
end
store_token(book, token)"""
)

#: KEYS = book, flow. ARGV = flow prefix, token, flow uuid, detail, version, atom count, then
#: per atom (for a flow the logbook does not hold yet): name, json, version; then the count of
#: atoms to update in the same write (of a flow it holds), then per atom: name, json, version
#: read. Replies as above (``{'ok', the flow's hash}``), or ``{'atomconflict', name, stored
#: version}``.
UPDATE_FLOW = _UPDATE_FLOW_WRITE + "\nreturn {'ok', redis.call('HGETALL', flow)}\n"

#: ``UPDATE_FLOW`` for a caller that has no use for the flow as saved (the fused ending): the
#: same checks, refusals and writes, but ``{'ok'}`` without the flow's hash, which would be
#: read, sent and parsed for nothing.
UPDATE_FLOW_UNREAD = _UPDATE_FLOW_WRITE + "\nreturn {'ok'}\n"

#: KEYS = book, flow. ARGV = flow prefix, token, flow uuid, atom count, then per atom: name,
#: json, version read. Every version is checked before any atom is written. Replies as above,
#: ``{'conflict', name, stored version}`` naming the stale atom.
UPDATE_ATOMS = (
    _PRELUDE
    + _FENCED_FLOW
    + """
if redis.call('HEXISTS', book, 'f:' .. ARGV[3]) == 0 then return {'noflow'} end
local count = tonumber(ARGV[4])
local stale, current = stale_atom(flow, 5, count)
if stale then return {'conflict', stale, current} end
put_read_atoms(flow, 5, count)
store_token(book, token)
return {'ok'}
"""
)

#: KEYS = books, book. ARGV = flow prefix, uuid.
DESTROY = (
    _PRELUDE
    + """
local book = KEYS[2]
if redis.call('EXISTS', book) == 0 then return {'notfound'} end
local fields = redis.call('HKEYS', book)
for _, field in ipairs(fields) do
  if string.sub(field, 1, 2) == 'f:' then redis.call('DEL', flow_prefix .. string.sub(field, 3)) end
end
redis.call('DEL', book)
redis.call('ZREM', KEYS[1], ARGV[2])
return {'ok'}
"""
)


@dataclass(frozen=True, slots=True)
class StoreScripts:
    """The store's scripts, loaded on a client by :func:`~aioconductor._backends.redis.scripts.load`
    (an attribute a script: a misspelt name fails the type check, not a call)."""

    save_logbook: AsyncScript = field(metadata=lua(SAVE_LOGBOOK))
    get: AsyncScript = field(metadata=lua(GET))
    update_flow: AsyncScript = field(metadata=lua(UPDATE_FLOW))
    update_atoms: AsyncScript = field(metadata=lua(UPDATE_ATOMS))
    destroy: AsyncScript = field(metadata=lua(DESTROY))
