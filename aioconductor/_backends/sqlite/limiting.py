"""The SQLite board's concurrency limits: the ``job_limits`` table, and the batch claim that
takes no more of a key than its free slots.

Every claim counts the live claims of a job's key in its own ``BEGIN IMMEDIATE`` transaction,
which holds the file's write lock from its first read to its commit: no other process (nor
another write of the same group commit) can take a slot between the count and the take, so a
limit is exact across every process on the file. A claim by id (and a renew) is one statement
that counts the job's own key (``board_schema.OWN_SLOT``); ``claim_next`` is one statement that
passes over the full keys (``HAS_SLOT``, whose list of full keys SQLite reads once); a batch
reads the free slots of every limited key, then walks the claimable jobs in claim order
(:func:`pick_batch`), so it needs a few statements, all in the one transaction. A namespace
with no limit set reads one empty range of ``job_limits`` and claims as before.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from aioconductor._backends.sqlite.board_schema import CLAIMABLE
from aioconductor._backends.sqlite.board_schema import COLUMNS
from aioconductor._backends.sqlite.board_schema import TAKE
from aioconductor._backends.sqlite.board_schema import live_claims

__all__ = ["DELETE_LIMIT", "LIMITS", "SET_LIMIT", "TAKE_PICKED", "pick_batch"]

SET_LIMIT = """INSERT INTO job_limits (namespace, limit_key, max_claims) VALUES (:ns, :key, :limit)
    ON CONFLICT (namespace, limit_key) DO UPDATE SET max_claims = excluded.max_claims"""
DELETE_LIMIT = "DELETE FROM job_limits WHERE namespace = :ns AND limit_key = :key"
#: Every limit of the namespace: (key, limit, live claims of the key at ``:now``).
LIMITS = f"""SELECT lim.limit_key, lim.max_claims, {live_claims("lim.limit_key")}
    FROM job_limits AS lim WHERE lim.namespace = :ns"""
#: The free slots of every limited key at ``:now`` (0 or less: full).
_SLOTS = f"""SELECT lim.limit_key, lim.max_claims - {live_claims("lim.limit_key")}
    FROM job_limits AS lim WHERE lim.namespace = :ns"""
#: Claimable jobs after (``:p``, ``:s``) in claim order, but those of the keys in ``:full`` (a
#: JSON array).
_CANDIDATES = f"""SELECT seq, priority, limit_key FROM jobs INDEXED BY jobs_ready
    WHERE namespace = :ns AND {CLAIMABLE}
        AND (priority < :p OR (priority = :p AND seq > :s))
        AND (limit_key IS NULL OR limit_key NOT IN (SELECT value FROM json_each(:full)))
    ORDER BY priority DESC, seq"""
#: Takes the jobs whose ``seq`` is in ``:seqs`` (a JSON array).
TAKE_PICKED = f"""{TAKE} WHERE seq IN (SELECT value FROM json_each(:seqs))
    RETURNING {COLUMNS}"""

#: Above every priority a job can have (a 32-bit int): where a walk in claim order starts.
_TOP = 2**31


def pick_batch(conn: sqlite3.Connection, params: dict[str, Any], limit: int) -> list[int] | None:
    """The ``seq`` of up to ``limit`` jobs to claim at once, in claim order, taking no more of
    a limited key than its free slots; None when the namespace has no limit (``CLAIM_BATCH``
    then claims as it always did). Run in the claim's write transaction.

    ``params`` holds ``:ns`` and ``:now``.
    """
    slots = conn.execute(_SLOTS, params).fetchall()
    if not slots:
        return None
    full = [key for key, free in slots if free <= 0]
    left = {key: free for key, free in slots if free > 0}
    picked: list[int] = []
    after = (_TOP, 0)
    while len(picked) < limit:
        walk = {**params, "p": after[0], "s": after[1], "full": json.dumps(full)}
        cursor = conn.execute(_CANDIDATES, walk)
        try:
            for seq, priority, key in cursor:
                after = (priority, seq)
                picked.append(seq)
                if len(picked) == limit:
                    break
                if key in left:
                    left[key] -= 1
                    if not left[key]:
                        # Its other jobs are passed over: walk on without them, rather than
                        # read each of a long backlog of a full key here.
                        del left[key]
                        full.append(key)
                        break
            else:
                return picked  # no claimable job left
        finally:
            cursor.close()  # a statement left running would keep the savepoint open
    return picked
