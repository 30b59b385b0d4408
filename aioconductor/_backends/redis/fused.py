"""One script for a job's ending on Redis: the store's write of the flow's end and the board's
consume, when the board and the store share a server and a namespace (so one hash tag: one
Redis Cluster slot).

The script is the board's and the store's scripts as they are, each wrapped in a function of
its own KEYS and ARGV: ``UPDATE_FLOW_UNREAD`` of the store and ``CONSUME_UNREAD`` of the board
(``UPDATE_FLOW`` and ``CONSUME`` but for the flow's and the job's hashes they would send back,
which nobody reads), and ``CONSUME`` itself for a refusal, whose reply carries the job. Run in
this order:

1. the board's fence, read only: the job is ``CLAIMED`` by this owner and token; if not,
   ``CONSUME`` answers the refusal (it writes nothing then);
2. the store's script: it checks everything before it writes, so a refusal (a stale token or
   version) writes nothing, and the script stops there, the job still claimed;
3. ``CONSUME_UNREAD``, whose fence was checked in the same atomic run: the job is consumed.

So a stale claim changes nothing, and a refused store write consumes nothing.

KEYS = the board's keys, then the store's. ARGV = the number of the board's keys, the number of
its arguments, its arguments, then the store's. Replies: ``{'board', refusal}``, ``{'store',
refusal}`` or ``{'ok'}``.
"""

from __future__ import annotations

from aioconductor._backends.redis.board_scripts import CONSUME
from aioconductor._backends.redis.board_scripts import CONSUME_UNREAD
from aioconductor._backends.redis.store_scripts import UPDATE_FLOW_UNREAD

__all__ = ["END_AND_CONSUME"]

END_AND_CONSUME = f"""
local function board_part(KEYS, ARGV)
{CONSUME}
end

local function board_done(KEYS, ARGV)
{CONSUME_UNREAD}
end

local function store_part(KEYS, ARGV)
{UPDATE_FLOW_UNREAD}
end

local nkeys, nargs = tonumber(ARGV[1]), tonumber(ARGV[2])
local bkeys, bargs, skeys, sargs = {{}}, {{}}, {{}}, {{}}
for i = 1, #KEYS do
  if i <= nkeys then bkeys[#bkeys + 1] = KEYS[i] else skeys[#skeys + 1] = KEYS[i] end
end
for i = 3, #ARGV do
  if i <= nargs + 2 then bargs[#bargs + 1] = ARGV[i] else sargs[#sargs + 1] = ARGV[i] end
end
local f = redis.call('HMGET', bkeys[nkeys], 'state', 'owner', 'token')
if f[1] ~= 'CLAIMED' or f[2] ~= bargs[3] or f[3] ~= bargs[4] then
  return {{'board', board_part(bkeys, bargs)}}
end
local saved = store_part(skeys, sargs)
if saved[1] ~= 'ok' then return {{'store', saved}} end
local done = board_done(bkeys, bargs)
if done[1] ~= 'ok' then return {{'board', done}} end
return {{'ok'}}
"""
