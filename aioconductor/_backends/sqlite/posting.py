"""The SQLite board's posts: the rows a batch of posts writes (keyed ones included), run in the
caller's write transaction, and the jobs they make.

A keyed post is one ``INSERT ... ON CONFLICT DO NOTHING`` under the transaction's write lock,
then, if nothing was inserted, a read of the job holding the key: no other writer comes in
between, and the unique index ``jobs_key`` would refuse a second holder anyway. An earlier post
of the same batch is in the same transaction, so it holds its key for the later ones.

A schedule's tick is the same keyed post, preceded in its transaction by an upsert that moves
the schedule's last tick forward; if it does not move (a tick at or before the last one), the
post is not made. Both are undone together if the post fails.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from aioconductor._backends.sqlite import board_schema as sql
from aioconductor._backends.sqlite.link import first_row
from aioconductor._models import build
from aioconductor.boards._support import PostSpec
from aioconductor.boards._support import job_from_row
from aioconductor.errors import BoardError
from aioconductor.models import Job
from aioconductor.models import JobState

__all__ = ["Written", "posted_job", "write_posts", "write_tick"]


@dataclass(frozen=True, slots=True)
class Written:
    """What the file gave back for a post that inserted its job."""

    seq: int
    rev: int
    #: The board time of the post.
    now: float
    not_before: float | None

    @property
    def scheduled(self) -> bool:
        """Whether the job waits for its ``not_before``."""
        return self.not_before is not None and self.not_before > self.now


def write_posts(
    conn: sqlite3.Connection, namespace: str, specs: list[PostSpec], now: float
) -> list[Written | Job]:
    """Insert the jobs of ``specs`` in order, in the open transaction, each bumping the
    namespace's change counter; a spec whose key is held inserts nothing.

    Returns:
        For each spec, what its insert wrote, or the job holding its key as stored.
    """
    results: list[Written | Job] = []
    for spec in specs:
        not_before = spec.not_before
        if spec.delay:
            not_before = now + spec.delay
        scheduled = not_before is not None and not_before > now
        params: dict[str, Any] = {
            "ns": namespace,
            "id": spec.id,
            "name": spec.name,
            "flow": spec.flow,
            "args": spec.args_json.decode("utf-8"),
            "priority": spec.priority,
            "now": now,
            "not_before": not_before,
            "max_attempts": spec.max_attempts,
            "state": (JobState.SCHEDULED if scheduled else JobState.UNCLAIMED).value,
            "ready_at": not_before if scheduled else now,
            "headers": spec.headers_json.decode("utf-8"),
            "retry": None if spec.retry_json is None else spec.retry_json.decode("utf-8"),
            "key": spec.key,
            "limit_key": spec.limit_key,
        }
        row = first_row(conn.execute(sql.POST, params))
        if row is not None:
            conn.execute(sql.BUMP, {"ns": namespace})
            results.append(Written(seq=row[0], rev=row[1], now=now, not_before=not_before))
            continue
        holder = conn.execute(sql.BY_KEY, {"ns": namespace, "key": spec.key}).fetchone()
        if holder is None:
            # Only a held key stops an insert, and the holder is in this very transaction's
            # view: this would be a bug (or a file changed by hand), not a race.
            raise BoardError(f"post of job {spec.id} inserted nothing and no job holds its key")
        results.append(job_from_row(holder))
    return results


def write_tick(
    conn: sqlite3.Connection,
    namespace: str,
    schedule: str,
    tick: float,
    spec: PostSpec,
    now: float,
) -> list[Written | Job]:
    """In the open transaction: unless ``schedule``'s last tick is at or after ``tick``, make
    ``tick`` its last tick and post ``spec`` as :func:`write_posts` does.

    Returns:
        What the post wrote (or the job holding its key), alone in a list; an empty list if
        the tick was not after the last one and nothing was written.
    """
    params = {"ns": namespace, "schedule": schedule, "tick": tick}
    if first_row(conn.execute(sql.ADVANCE_TICK, params)) is None:
        return []
    return write_posts(conn, namespace, [spec], now)


def posted_job(spec: PostSpec, written: Written) -> Job:
    """The job ``spec``'s insert made, as :func:`~aioconductor.boards._support.job_from_row`
    would read it back."""
    return build(
        Job,
        id=spec.id,
        name=spec.name,
        flow=spec.flow,
        args=spec.args,
        key=spec.key,
        priority=spec.priority,
        seq=written.seq,
        created_at=written.now,
        updated_at=written.now,
        not_before=written.not_before,
        attempts=0,
        max_attempts=spec.max_attempts,
        state=JobState.SCHEDULED if written.scheduled else JobState.UNCLAIMED,
        claim=None,
        outcome=None,
        result=None,
        trash_reason=None,
        headers=spec.headers,
        releases=0,
        abandons=0,
        retries=0,
        retry=spec.retry,
        failures=[],
        cancel_reason=None,
        limit_key=spec.limit_key,
    )
