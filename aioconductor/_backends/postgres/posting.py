"""Posting on the PostgreSQL board: the insert, and what a post that wrote nothing finds.

A post is one ``INSERT ... ON CONFLICT DO NOTHING`` (``POST``, or ``POST_MANY`` for a batch): the
check of the key and the insert are one atomic step, and a post of a key that a transaction not
yet ended is inserting waits for that transaction. A spec the insert did not return was not
written: its id is there already (a retry after a lost reply) or its key is held. The holder is
then read in a statement of its own, whose snapshot (under READ COMMITTED) sees the transaction
the insert waited for. A holder purged between the two statements freed its key: that spec is
posted again.

A schedule's tick (``post_tick``) is one transaction: the upsert of the schedule's last tick,
which holds its row till the end (so the callers of one schedule take turns), then the post
as above (a key held by another job returns that job; the last tick moved all the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aioconductor._backends.postgres.board_sql import BoardStatements
from aioconductor._backends.postgres.board_sql import post_args
from aioconductor._backends.postgres.board_sql import post_many_args
from aioconductor._backends.postgres.schema import refuse_nul
from aioconductor.boards._support import PostSpec
from aioconductor.boards._support import job_from_row
from aioconductor.boards._support import visible
from aioconductor.errors import PayloadError
from aioconductor.models import Job

__all__ = ["Posted", "check_spec", "post_many", "post_one", "post_tick"]

#: A job a post returns and the board time it was read at (to note when a delay falls due).
Posted = tuple[Job, float]


def check_spec(spec: PostSpec) -> None:
    """Refuse what PostgreSQL's ``text`` cannot store, before anything is sent."""
    refuse_nul("the job's name", spec.name, PayloadError)
    refuse_nul("the job's flow name", spec.flow, PayloadError)


async def post_one(
    conn: Any, sql: BoardStatements, namespace: str, channel: str, spec: PostSpec
) -> Posted:
    """Post ``spec`` on ``conn``: the new job, or the job holding its key as ``get`` shows it."""
    args = post_args(channel, spec)
    while True:
        rows = await conn.fetch(sql.post, namespace, *args)
        if rows:
            job = job_from_row(rows[0])
            return job, job.created_at
        found = _find(spec, await _holders(conn, sql, namespace, [spec]))
        if found is not None:
            return found
        # The holder was purged after the insert saw it: the key is free, post again.


async def post_tick(
    conn: Any,
    sql: BoardStatements,
    namespace: str,
    channel: str,
    schedule: str,
    tick: float,
    spec: PostSpec,
) -> Posted | None:
    """Post ``spec`` as ``schedule``'s ``tick`` on ``conn``, unless the schedule's last tick is
    at or after it: then None, or the job an earlier try of this call committed (found by the
    spec's id: a call retried after a lost reply returns what it posted)."""
    async with conn.transaction():
        advanced, own = await conn.fetchrow(sql.tick, namespace, schedule, tick, spec.id)
        if advanced:
            return await post_one(conn, sql, namespace, channel, spec)
    rows = await conn.fetch(sql.holders, namespace, [spec.id], []) if own else []
    return (job_from_row(rows[0]), rows[0][-1]) if rows else None


async def post_many(
    conn: Any, sql: BoardStatements, namespace: str, channel: str, specs: Sequence[PostSpec]
) -> list[Posted]:
    """Post ``specs`` on ``conn`` in one statement, in order; each place holds the new job, or
    the job holding its key (an earlier spec's new job, or one on the board)."""
    rows = await conn.fetch(sql.post_many, *post_many_args(namespace, channel, specs))
    created = {job.id: job for job in map(job_from_row, rows)}
    posted: list[Posted | None] = []
    by_key: dict[str, Posted] = {}
    for spec in specs:
        job = created.get(spec.id)
        if job is not None:
            posted.append((job, job.created_at))
            if spec.key is not None:
                by_key[spec.key] = (job, job.created_at)
        else:  # held by an earlier spec of this batch, or to be read from the board
            posted.append(by_key.get(spec.key) if spec.key is not None else None)
    missing = [spec for spec, got in zip(specs, posted, strict=True) if got is None]
    if missing:
        holders = await _holders(conn, sql, namespace, missing)
        for i, spec in enumerate(specs):
            if posted[i] is None:
                posted[i] = _find(spec, holders) or await post_one(
                    conn, sql, namespace, channel, spec
                )
    assert None not in posted
    return [got for got in posted if got is not None]


async def _holders(
    conn: Any, sql: BoardStatements, namespace: str, specs: Sequence[PostSpec]
) -> dict[str, Posted]:
    """The jobs with the ids or keys of ``specs`` (as ``get`` shows them), by ``id:<id>`` and
    ``key:<key>``."""
    ids = [spec.id for spec in specs]
    keys = [spec.key for spec in specs if spec.key is not None]
    found: dict[str, Posted] = {}
    for row in await conn.fetch(sql.holders, namespace, ids, keys):
        job, now = job_from_row(row), row[-1]
        found[f"id:{job.id}"] = job, now
        if job.key is not None:
            found[f"key:{job.key}"] = job, now
    return found


def _find(spec: PostSpec, holders: dict[str, Posted]) -> Posted | None:
    """The job ``spec``'s post found: its own (written by an earlier try whose reply was lost)
    as stored, else its key's holder as ``get`` shows it."""
    own = holders.get(f"id:{spec.id}")
    if own is not None:
        return own
    held = None if spec.key is None else holders.get(f"key:{spec.key}")
    if held is None:
        return None
    job, now = held
    return visible(job, now), now
