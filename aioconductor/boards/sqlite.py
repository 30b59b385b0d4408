"""`SqliteJobBoard`: jobs in one SQLite file. Durable on one machine, no server.

``sqlite:///relative/jobs.db`` or ``sqlite:////absolute/jobs.db`` (``?namespace=NAME`` as on
every board). Several processes may share one file: every transition is one ``BEGIN IMMEDIATE``
transaction that checks state, owner and token, so two processes never both win a job and a
stale claim changes nothing. The board's clock is this process's ``time.time()``. The schema
and the statements are in :mod:`aioconductor._backends.sqlite.board_schema`, the connection in
:mod:`aioconductor._backends.sqlite.link`.

Notifications: this process cannot hear another's writes, so ``stream()`` pushes what this board
object makes claimable at once (posts, abandons, releases, retries without a delay), the
``CANCEL`` of a job it flags and the ``SLOT_FREED`` of a limited claim it ends, and its sweep
finds the rest (see :mod:`aioconductor._backends.sqlite.sweeping`).

Cancel is one write transaction: a job nobody runs ends ``CANCELLED``, else a CLAIMED one is
flagged (``cancel_rev`` records when, for the sweeps of its owner's process). Limits are in
``job_limits``; every claim counts the live claims of the job's key in its own write
transaction (see :mod:`aioconductor._backends.sqlite.limiting`).

Keys, ticks and retention: a keyed post is an insert the unique index ``jobs_key`` lets through
only if no job of the namespace holds the key, then a read of the holder, in the post's write
transaction; a tick's post first moves the schedule's last tick (``schedule_ticks``) forward
there (see :mod:`aioconductor._backends.sqlite.posting`). ``purge`` walks the partial index
``jobs_ended`` (finished jobs by state and ``updated_at``) and deletes by id in one statement
that re-checks that each job is finished. Deleted jobs had ended before the retention's age,
so sweeps, which report what was written since their last read, are not affected.
Search: indexed statements (see :mod:`aioconductor._backends.sqlite.searching`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Self

from aioconductor._backends.base import DueTimer
from aioconductor._backends.sqlite import board_schema as sql
from aioconductor._backends.sqlite.claiming import fetch
from aioconductor._backends.sqlite.claiming import renew_refused
from aioconductor._backends.sqlite.claiming import take_batch
from aioconductor._backends.sqlite.claiming import take_job
from aioconductor._backends.sqlite.claiming import write_current
from aioconductor._backends.sqlite.claiming import write_one
from aioconductor._backends.sqlite.limiting import DELETE_LIMIT
from aioconductor._backends.sqlite.limiting import LIMITS
from aioconductor._backends.sqlite.limiting import SET_LIMIT
from aioconductor._backends.sqlite.link import SqliteLink
from aioconductor._backends.sqlite.link import query
from aioconductor._backends.sqlite.link import sqlite_path
from aioconductor._backends.sqlite.posting import Written
from aioconductor._backends.sqlite.posting import posted_job
from aioconductor._backends.sqlite.posting import write_posts
from aioconductor._backends.sqlite.posting import write_tick
from aioconductor._backends.sqlite.searching import SqliteSearching
from aioconductor._backends.sqlite.sweeping import PushedRevs
from aioconductor._backends.sqlite.sweeping import read_sweep
from aioconductor._models import build
from aioconductor._payload import encode_json
from aioconductor._urls import ParsedURL
from aioconductor._urls import refuse_options
from aioconductor.boards._support import PAGE
from aioconductor.boards._support import conductor_from_row
from aioconductor.boards._support import job_from_row
from aioconductor.boards._support import listed_jobs
from aioconductor.boards._support import visible
from aioconductor.boards.base import EncodedObject
from aioconductor.boards.base import JobBoard
from aioconductor.boards.base import PostSpec
from aioconductor.boards.base import Subscription
from aioconductor.errors import BoardClosed
from aioconductor.errors import ClaimLost
from aioconductor.errors import JobNotFound
from aioconductor.errors import UnclaimableJob
from aioconductor.models import Claim
from aioconductor.models import ConductorInfo
from aioconductor.models import Job
from aioconductor.models import JobNotification
from aioconductor.models import JobState
from aioconductor.models import LimitInfo
from aioconductor.models import NotificationKind
from aioconductor.models import Outcome

__all__ = ["SqliteJobBoard"]


class SqliteJobBoard(SqliteSearching, JobBoard):
    """A job board in a SQLite file, shared safely by the processes of one machine.

    Open it with ``open_board("sqlite:///jobs.db")``. One connection per board object, used from
    a worker thread, one call at a time; WAL mode, so readers never wait for writers.

    Another process's posts, abandons, cancels and freed slots reach this board's ``stream()``
    through its sweep, every ``poll_interval`` seconds (sooner when a delay or lease it knows
    of falls due first).

    Args:
        path: the database file (created with its schema if missing).
        **kwargs: see :class:`~aioconductor.boards.base.JobBoard`.
    """

    def __init__(self, path: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = os.fspath(path)
        self._link = SqliteLink(self.path, closed_error=BoardClosed)
        #: The earliest ``ready_at`` of a scheduled or claimed job after the last sweep.
        self._due = DueTimer()
        #: The writes this object pushed to its streams, which its sweeps skip.
        self._pushed = PushedRevs()

    @classmethod
    def from_url(cls, parsed: ParsedURL, **kwargs: Any) -> Self:
        """Build the board for ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``."""
        refuse_options(parsed.driver_url, "SQLite board", cls.url_options | cls.ignored_url_options)
        kwargs.setdefault("path", sqlite_path(parsed.driver_url))
        return super().from_url(parsed, **kwargs)

    def __repr__(self) -> str:
        return f"<SqliteJobBoard {self.path!r} namespace={self.namespace!r}>"

    async def _connect(self) -> None:
        await self._link.connect(
            "board",
            sql.SCHEMA,
            lambda conn: conn.execute(sql.ADD_NAMESPACE, self._params()),
            migrate=self.migrate,
        )

    async def _aclose(self) -> None:
        await self._link.aclose()

    # -- helpers (run in the worker thread) ----------------------------------------------------

    def _params(self, **params: Any) -> dict[str, Any]:
        return {"ns": self.namespace, **params}

    def _fetch(self, conn: sqlite3.Connection, job_id: str) -> Job:
        return fetch(conn, self.namespace, job_id)

    def _change(self, conn: sqlite3.Connection, statement: str, **params: Any) -> Any:
        """Run a statement that writes one job and returns it; bump the counter if it did."""
        return write_one(conn, statement, self._params(**params))

    def _with_claim(
        self, conn: sqlite3.Connection, statement: str, claim: Claim, verb: str, **params: Any
    ) -> Any:
        """Run an ``sql.update_current`` statement; ``ClaimLost`` if the claim is not current."""
        return write_current(conn, statement, claim, verb, self._params(**params))

    # -- local notifications -------------------------------------------------------------------

    def _push(self, job: Job, rev: int, kind: NotificationKind) -> None:
        if self._subscriptions:
            self._pushed.add(rev, kind)
        self._notify_local(build(JobNotification, job_id=job.id, kind=kind, priority=job.priority))

    def _ended(self, row: Any) -> Job:
        """The job of ``row``, whose write ended its claim (consumed, trashed, or retried): a
        limited claim's slot is announced free (as ``sql._FREED`` tells sweeps)."""
        job = job_from_row(row)
        held = job.claim is not None or job.state is JobState.SCHEDULED
        if job.limit_key is not None and held:
            self._push(job, row[-1], NotificationKind.SLOT_FREED)
        return job

    # -- primitives ----------------------------------------------------------------------------

    async def _post(self, spec: PostSpec) -> Job:
        return (await self._post_many([spec]))[0]

    async def _post_many(self, specs: list[PostSpec]) -> list[Job]:
        def post(conn: sqlite3.Connection) -> list[Written | Job]:
            return write_posts(conn, self.namespace, specs, time.time())

        results = await self._link.write("post", post)
        return [self._posted(spec, result) for spec, result in zip(specs, results, strict=True)]

    async def _post_tick(self, schedule: str, tick: float, spec: PostSpec) -> Job | None:
        def post_tick(conn: sqlite3.Connection) -> list[Written | Job]:
            return write_tick(conn, self.namespace, schedule, tick, spec, time.time())

        posted = await self._link.write("post_tick", post_tick)
        return self._posted(spec, posted[0]) if posted else None

    async def _schedule_ticks(self) -> dict[str, float]:
        return dict(await self._link.read("schedule_ticks", query(sql.TICKS, self._params())))

    def _posted(self, spec: PostSpec, result: Written | Job) -> Job:
        """The job ``spec``'s post made (pushed, or noted as due), or its key's holder."""
        if isinstance(result, Job):
            # The key's holder, as ``get`` shows it.
            return visible(result, time.time())
        job = posted_job(spec, result)
        if result.scheduled:
            assert result.not_before is not None
            self._due.note(result.not_before, time.time())
        else:
            self._push(job, result.rev, NotificationKind.POSTED)
        return job

    async def _claim(self, job_id: str, owner: str, lease: float) -> Job:
        def claim(conn: sqlite3.Connection) -> Job:
            now = time.time()
            return take_job(
                conn, self._params(id=job_id, owner=owner, expires=now + lease, now=now)
            )

        job = await self._link.write("claim", claim)
        assert job.claim is not None
        self._due.note(job.claim.expires_at, time.time())
        return job

    async def _claim_next(self, owner: str, lease: float) -> Job | None:
        def claim_next(conn: sqlite3.Connection) -> Job | None:
            now = time.time()
            row = self._change(conn, sql.CLAIM_NEXT, owner=owner, expires=now + lease, now=now)
            return None if row is None else job_from_row(row)

        job = await self._link.write("claim_next", claim_next)
        if job is not None and job.claim is not None:
            self._due.note(job.claim.expires_at, time.time())
        return job

    async def _claim_batch(self, owner: str, lease: float, limit: int) -> list[Job]:
        def claim_batch(conn: sqlite3.Connection) -> list[Job]:
            now = time.time()
            params = self._params(owner=owner, expires=now + lease, now=now, limit=limit)
            return take_batch(conn, params)

        jobs = await self._link.write("claim_batch", claim_batch)
        if jobs:
            assert jobs[0].claim is not None
            self._due.note(jobs[0].claim.expires_at, time.time())
        return jobs

    async def _renew(self, claim: Claim, lease: float) -> Claim:
        def renew(conn: sqlite3.Connection) -> Job:
            now = time.time()
            params = self._params(
                id=claim.job_id, owner=claim.owner, token=claim.token, now=now, expires=now + lease
            )
            row = write_one(conn, sql.RENEW, params)
            if row is None:
                raise renew_refused(conn, self.namespace, claim)
            return job_from_row(row)

        job = await self._link.write("renew", renew)
        assert job.claim is not None
        self._due.note(job.claim.expires_at, time.time())
        return job.claim

    async def _consume(
        self, claim: Claim, outcome: Outcome, result: dict[str, Any], result_json: bytes
    ) -> Job:
        text = result_json.decode("utf-8")

        def consume(conn: sqlite3.Connection) -> Any:
            return self._with_claim(
                conn, sql.CONSUME, claim, "consume", outcome=outcome.value, result=text
            )

        return self._ended(await self._link.write("consume", consume))

    async def _abandon(self, claim: Claim) -> Job:
        return await self._give_back(claim, sql.ABANDON, "abandon")

    async def _release(self, claim: Claim) -> Job:
        return await self._give_back(claim, sql.RELEASE, "release")

    async def _give_back(self, claim: Claim, statement: str, verb: str) -> Job:
        """Run ``statement`` (abandon or release): the job UNCLAIMED, pushed to the streams."""

        def give_back(conn: sqlite3.Connection) -> tuple[Job, int]:
            row = self._with_claim(conn, statement, claim, verb)
            return job_from_row(row), row[-1]

        job, rev = await self._link.write(verb, give_back)
        self._push(job, rev, NotificationKind.ABANDONED)
        return job

    async def _retry(self, claim: Claim, delay: float, failure: EncodedObject | None) -> Job:
        text = None if failure is None else failure.json.decode("utf-8")

        def retry(conn: sqlite3.Connection) -> Any:
            try:
                return self._with_claim(conn, sql.RETRY, claim, "retry", delay=delay, failure=text)
            except ClaimLost:
                # Not scheduled: the job was flagged (it ends CANCELLED), or the claim is lost.
                return self._with_claim(conn, sql.RETRY_CANCELLED, claim, "retry", failure=text)

        row = await self._link.write("retry", retry)
        job = self._ended(row)
        if job.state.is_final:
            self._finished(job.id)
        elif delay > 0:
            # The sweep announces it then, as a delayed post.
            assert job.not_before is not None
            self._due.note(job.not_before, time.time())
        else:
            self._push(job, row[-1], NotificationKind.DUE)
        return job

    async def _trash(self, job_id: str, claim: Claim | None, reason: str) -> Job:
        def trash(conn: sqlite3.Connection) -> Any:
            if claim is not None:
                return self._with_claim(conn, sql.TRASH, claim, "trash", reason=reason)
            row = self._change(conn, sql.TRASH_BY_ID, id=job_id, reason=reason, now=time.time())
            if row is None:
                state = self._fetch(conn, job_id).state
                raise UnclaimableJob(f"job {job_id} is already {state}: it cannot be trashed")
            return row

        return self._ended(await self._link.write("trash", trash))

    async def _cancel(self, job_id: str, reason: str) -> Job:
        def cancel(conn: sqlite3.Connection) -> tuple[Job, int | None]:
            params = {"id": job_id, "reason": reason, "now": time.time()}
            row = self._change(conn, sql.CANCEL_WAITING, **params)
            if row is not None:
                return job_from_row(row), None
            row = self._change(conn, sql.FLAG, **params)
            if row is not None:
                return job_from_row(row), row[-1]
            # Flagged already, or final: as it is.
            return visible(self._fetch(conn, job_id), time.time()), None

        job, flagged = await self._link.write("cancel", cancel)
        if flagged is not None:
            self._push(job, flagged, NotificationKind.CANCEL)
        return job

    # -- limits --------------------------------------------------------------------------------

    async def _set_limit(self, key: str, limit: int | None) -> None:
        params = self._params(key=key, limit=limit)
        statement = DELETE_LIMIT if limit is None else SET_LIMIT
        await self._link.write("set_limit", lambda conn: conn.execute(statement, params))

    async def _limits(self) -> list[LimitInfo]:
        rows = await self._link.read("limits", query(LIMITS, self._params(now=time.time())))
        return [LimitInfo(key=key, limit=limit, claimed=claimed) for key, limit, claimed in rows]

    async def _get(self, job_id: str) -> Job:
        job = await self._link.read("get", lambda conn: self._fetch(conn, job_id))
        return visible(job, time.time())

    async def _get_by_key(self, key: str) -> Job:
        rows = await self._link.read("get_by_key", query(sql.BY_KEY, self._params(key=key)))
        if not rows:
            raise JobNotFound(f"no job holds the key {key!r} on this board")
        return visible(job_from_row(rows[0]), time.time())

    def _iterjobs(self, state: JobState | None) -> AsyncIterator[Job]:
        now = time.time()
        state = None if state is None else JobState(state)
        statement = sql.page(state)
        value = None if state is None else state.value

        def read_page(priority: int, seq: int) -> Awaitable[list[Any]]:
            params = self._params(now=now, state=value, p=priority, s=seq, limit=PAGE)
            return self._link.read("iterjobs", query(statement, params))

        return listed_jobs(read_page, now)

    async def _job_count(self, state: JobState | None) -> int:
        state = None if state is None else JobState(state)
        params = self._params(now=time.time(), state=None if state is None else state.value)
        rows = await self._link.read("job_count", query(sql.count(state), params))
        return int(rows[0][0])

    # -- retention -----------------------------------------------------------------------------

    async def _purgeable(
        self, older_than: float, states: tuple[JobState, ...], limit: int
    ) -> list[str]:
        def purgeable(conn: sqlite3.Connection) -> list[str]:
            params = self._params(cutoff=time.time() - older_than, limit=limit)
            # One walk of the jobs_ended index per state, merged here: each is cut at ``limit``,
            # where one query over both states would sort all of their old jobs.
            rows = [
                row
                for state in states
                for row in conn.execute(sql.PURGEABLE, {**params, "state": state.value})
            ]
            return [job_id for _, _, job_id in sorted(rows)[:limit]]

        return await self._link.snapshot("purge", purgeable)

    async def _purge(self, job_ids: list[str]) -> int:
        ids = json.dumps(job_ids)

        def purge(conn: sqlite3.Connection) -> int:
            deleted = len(conn.execute(sql.PURGE, self._params(ids=ids)).fetchall())
            if deleted:
                # Nothing claimable changed, so no sweep reports anything; the counter still
                # moves, as on every write to the jobs.
                conn.execute(sql.BUMP, self._params())
            return deleted

        return await self._link.write("purge", purge)

    # -- notifications -------------------------------------------------------------------------

    def _subscribe(self) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self._local_subscription()

    async def _sweep(self, cursor: Any) -> tuple[list[JobNotification], Any]:
        try:
            rows, rev, now, next_due = await self._link.snapshot(
                "sweep", lambda conn: read_sweep(conn, self.namespace, cursor)
            )
        except BoardClosed:
            # The board closed while this sweep waited for the connection: the stream ends.
            return [], cursor
        self._due.clear()
        self._due.note(next_due, now)
        self._pushed.forget(self.poll_interval)
        return self._pushed.notes(rows, cursor), (rev, now)

    def _sweep_delay(self) -> float:
        # Sweep when the next delay or lease falls due rather than at the next poll.
        return self._due.delay(self.poll_interval)

    # -- conductors ----------------------------------------------------------------------------

    async def _register_conductor(
        self, owner: str, name: str, ttl: float, meta: dict[str, Any]
    ) -> None:
        meta_text = encode_json("the conductor's meta", meta, 64 * 1024).decode("utf-8")

        def register(conn: sqlite3.Connection) -> None:
            now = time.time()
            params = self._params(owner=owner, name=name, now=now, expires=now + ttl)
            conn.execute(sql.REGISTER, {**params, "meta": meta_text})

        await self._link.write("register_conductor", register)

    async def _unregister_conductor(self, owner: str) -> None:
        await self._link.write(
            "unregister_conductor",
            lambda conn: conn.execute(sql.UNREGISTER, self._params(owner=owner)),
        )

    async def _conductors(self) -> list[ConductorInfo]:
        params = self._params(now=time.time())
        rows = await self._link.read("conductors", query(sql.ALIVE, params))
        return [conductor_from_row(row) for row in rows]
