"""One script for a batch of claims on Redis and the creation of their jobs' runs, when the board
and the store share a server and a namespace (one hash tag: one Redis Cluster slot), as for the
fused ending (``fused.py``): see :mod:`aioconductor.persistence.runs`.

The script is the board's ``CLAIM_BATCH`` as it is, wrapped in a function of its own KEYS and
ARGV, then the store's writes for each claimed job whose flow the templates name and that never
ran (its first claim, token 1, not cancelled, within its attempts): its logbook's hash (fenced by
the claim's token), the run's flow hash (RUNNING, version 0, its uuid one the caller drew) and
the template's first task (RUNNING, ``meta.started`` the claim's clock, version 0), laid out as
``SAVE_LOGBOOK`` lays out a new logbook (``store_scripts``). A job whose logbook exists already
gets nothing written: its engine reads it as usual. All in the one atomic script run.

KEYS = the board's keys. ARGV = the number of the board's arguments, its arguments, the store's
key prefix, the number of templates, then per template its flow, the run's detail JSON up to its
uuid, its first task ('' for none) and that task's JSON up to its start time, then one flow uuid
per job the claim may take. Reply: the board's reply, then per claimed job the created flow's
uuid ('' for none).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from aioconductor._backends.redis.board_scripts import CLAIM_BATCH
from aioconductor.persistence.runs import RunTemplate

__all__ = ["CLAIM_AND_CREATE", "template_args"]

CLAIM_AND_CREATE = f"""
local function board_part(KEYS, ARGV)
{CLAIM_BATCH}
end

local nargs = tonumber(ARGV[1])
local bargs = {{}}
for i = 2, nargs + 1 do bargs[#bargs + 1] = ARGV[i] end
local at = nargs + 2
local store, templates = ARGV[at], {{}}
at = at + 2
for _ = 1, tonumber(ARGV[at - 1]) do
  templates[ARGV[at]] = {{ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]}}
  at = at + 4
end
local reply = board_part(KEYS, bargs)
local now, created = reply[2], {{}}
local i = 3
while i <= #reply do
  local count, f = reply[i], {{}}
  for j = i + 1, i + count, 2 do f[reply[j]] = reply[j + 1] end
  i = i + count + 1
  local made, t = '', templates[f['flow']]
  local book = store .. 'book:' .. f['id']
  if t and f['token'] == '1' and not f['cancel_reason']
      and tonumber(f['attempts']) <= tonumber(f['max_attempts'])
      and redis.call('EXISTS', book) == 0 then
    made = ARGV[at + #created]
    redis.call('HSET', book, 'uuid', f['id'], 'created_at', now, 'nflows', 1, 'name', f['name'],
      'detail', '{{"updated_at":' .. now .. ',"meta":{{}}}}', 'token', f['token'], 'f:' .. made, 1)
    redis.call('ZADD', store .. 'books', now, f['id'])
    local flow = store .. 'flow:' .. f['id'] .. ':' .. made
    redis.call('HSET', flow, 'detail', t[1] .. made .. '"}}', 'version', 0, 'natoms', 0)
    if t[2] ~= '' then
      redis.call('HSET', flow, 'natoms', 1, 'i:' .. t[2], 1, 'a:' .. t[2],
        t[3] .. now .. '}}}}', 'v:' .. t[2], 0)
    end
  end
  created[#created + 1] = made
end
return {{reply, created}}
"""


def template_args(templates: Mapping[str, RunTemplate]) -> list[str]:
    """``templates`` as the script takes them (see the module): their count, then per template
    its flow, the run's detail JSON up to its uuid, its first task and that task's JSON up to
    its start time (the store's layout, ``store_records``)."""
    args = [str(len(templates))]
    for flow, template in templates.items():
        head = {"name": template.detail, "state": "RUNNING", "meta": {}}
        atom = ""
        if template.first is not None:
            fields = {
                "name": template.first,
                "kind": "task",
                "state": "RUNNING",
                "intention": "EXECUTE",
                "result": None,
                "failure": None,
                "revert_result": None,
                "revert_failure": None,
                "version": 0,
            }
            atom = json.dumps(fields, separators=(",", ":"))[:-1] + ',"meta":{"started":'
        detail = json.dumps(head, separators=(",", ":"))[:-1] + ',"uuid":"'
        args += [flow, detail, template.first or "", atom]
    return args
