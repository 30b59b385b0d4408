"""The SQLite board's claims, run in the claim's write transaction (the worker thread).

Each is one ``BEGIN IMMEDIATE`` step: the checks (claimable, a slot of the job's limit key) and
the take happen under the file's write lock, so two processes never both take a job, nor
together more slots of a key than its limit (see :mod:`aioconductor._backends.sqlite.limiting`).
Every function bumps the namespace's change counter when it wrote a job.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from aioconductor._backends.sqlite import board_schema as sql
from aioconductor._backends.sqlite.limiting import TAKE_PICKED
from aioconductor._backends.sqlite.limiting import pick_batch
from aioconductor._backends.sqlite.link import first_row
from aioconductor.boards._support import job_from_row
from aioconductor.boards._support import lost_message
from aioconductor.boards._support import unclaimable_message
from aioconductor.errors import ClaimLost
from aioconductor.errors import JobNotFound
from aioconductor.errors import UnclaimableJob
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.models import JobState

__all__ = ["fetch", "renew_refused", "take_batch", "take_job", "write_current", "write_one"]


def fetch(conn: sqlite3.Connection, namespace: str, job_id: str) -> Job:
    """The job as stored; ``JobNotFound`` if there is none."""
    row = conn.execute(sql.FETCH, {"ns": namespace, "id": job_id}).fetchone()
    if row is None:
        raise JobNotFound(f"no job {job_id!r} on this board")
    return job_from_row(row)


def write_one(conn: sqlite3.Connection, statement: str, params: dict[str, Any]) -> Any:
    """Run a statement that writes one job and returns its row; bump the counter if it did."""
    row = first_row(conn.execute(statement, params))
    if row is not None:
        conn.execute(sql.BUMP, params)
    return row


def write_current(
    conn: sqlite3.Connection, statement: str, claim: Claim, verb: str, params: dict[str, Any]
) -> Any:
    """Run an ``update_current`` statement for ``verb`` (``params`` with ``:ns``): the job's row,
    or ``ClaimLost`` if the claim is not current."""
    claimed = {"id": claim.job_id, "owner": claim.owner, "token": claim.token}
    row = write_one(conn, statement, {"now": time.time(), **params, **claimed})
    if row is None:
        job = fetch(conn, params["ns"], claim.job_id)
        raise ClaimLost(lost_message(claim, verb, job.state, job.claim))
    return row


def take_job(conn: sqlite3.Connection, params: dict[str, Any]) -> Job:
    """Take the job ``:id`` if it is claimable and its limit key has a slot.

    Raises:
        UnclaimableJob: it is not claimable, or its key is full.
        JobNotFound: no such job.
    """
    row = write_one(conn, sql.CLAIM, params)
    if row is not None:
        return job_from_row(row)
    job = fetch(conn, params["ns"], params["id"])
    now = params["now"]
    if job.is_claimable(now):
        raise UnclaimableJob(f"job {job.id} waits for a slot: limit key {job.limit_key!r} is full")
    raise UnclaimableJob(unclaimable_message(job, now))


def take_batch(conn: sqlite3.Connection, params: dict[str, Any]) -> list[Job]:
    """Take up to ``:limit`` claimable jobs in claim order, no more of a limited key than its
    free slots; the jobs in claim order."""
    picked = pick_batch(conn, {"ns": params["ns"], "now": params["now"]}, params["limit"])
    if picked is None:
        rows = conn.execute(sql.CLAIM_BATCH, params).fetchall()
    elif picked:
        rows = conn.execute(TAKE_PICKED, {**params, "seqs": json.dumps(picked)}).fetchall()
    else:
        return []
    if rows:
        conn.execute(sql.BUMP, params)
    # RETURNING gives rows in the order they were written, not the claim order.
    return sorted(map(job_from_row, rows), key=lambda job: (-job.priority, job.seq))


def renew_refused(conn: sqlite3.Connection, namespace: str, claim: Claim) -> ClaimLost:
    """Why ``RENEW`` wrote nothing: the claim is not current, or (current, its lease ran out)
    its limit key is full without it."""
    job = fetch(conn, namespace, claim.job_id)
    current = job.claim
    if job.state is not JobState.CLAIMED or current is None:
        return ClaimLost(lost_message(claim, "renew", job.state, current))
    if (current.owner, current.token) != (claim.owner, claim.token):
        return ClaimLost(lost_message(claim, "renew", job.state, current))
    return ClaimLost(
        f"renew of job {job.id} by {claim.owner!r} refused: its lease ran out and its limit "
        f"key {job.limit_key!r} is full"
    )
