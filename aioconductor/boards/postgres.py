"""`PostgresJobBoard`: jobs in PostgreSQL, shared by conductors on many machines.

``postgresql://[user[:password]@]host[:port]/database?namespace=NAME`` (``postgres://`` too).
The library's options: ``schema`` (default ``aioc_<namespace>``: one schema a namespace),
``pool_min`` and ``pool_max`` (default 1 and 10), besides the board's ``lease``,
``poll_interval`` and ``max_payload_bytes``.
Every other option goes to asyncpg: ``sslmode=require``, or a server setting such as
``application_name=billing`` or ``statement_timeout=5000``.

Every transition is one statement that checks state, owner and fencing token in its WHERE
clause and reads the server's clock (``clock_timestamp()``), so two conductors never both win a
job and a stale claim changes nothing; ``claim_next`` picks its job with ``FOR UPDATE SKIP
LOCKED``, so concurrent claimers never wait for each other. No transaction stays open while a
job runs.

Schema (in ``aioconductor._backends.postgres.board_sql``; created and migrated at connect,
recorded in ``schema_version``): ``jobs`` (a row per job, every namespace in one table; ``seq``
is the post order; ``ready_at`` is when an unfinished job is claimable from, NULL once final),
``conductors`` and ``schedule_ticks`` (each schedule's last posted tick; ``post_tick`` upserts
it and posts the tick's job in one transaction, see ``_backends.postgres.posting``). ``args``
and ``result`` are ``json``, not ``jsonb``: ``json`` keeps the text as written, so a
``\\u0000`` in a string, key order and numbers come back exactly as posted.

Keys and retention: ``job_key`` has a partial unique index per namespace, and a post is one
``INSERT ... ON CONFLICT DO NOTHING`` (see ``_backends.postgres.posting``); ``purge`` reads the
partial index of finished jobs by end time and deletes a batch by id in one short statement.

Notifications: post, abandon and release (and a retry due at once) ``pg_notify`` the
namespace's channel in the same statement, so a notification goes out exactly when the change
commits; each ``stream()`` LISTENs on a connection of its own. Delays, retries and leases that
fall due are found by the stream's sweep.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, Self, Unpack

from aioconductor._backends.base import DueTimer
from aioconductor._backends.postgres import board_sql as sql
from aioconductor._backends.postgres.board_sql import channel_name
from aioconductor._backends.postgres.board_sql import json_text
from aioconductor._backends.postgres.board_sql import seconds
from aioconductor._backends.postgres.link import PostgresLink
from aioconductor._backends.postgres.listen import ListenSubscription
from aioconductor._backends.postgres.listen import swept
from aioconductor._backends.postgres.posting import Posted
from aioconductor._backends.postgres.posting import check_spec
from aioconductor._backends.postgres.posting import post_many
from aioconductor._backends.postgres.posting import post_one
from aioconductor._backends.postgres.posting import post_tick
from aioconductor._backends.postgres.schema import refuse_nul
from aioconductor._backends.postgres.schema import with_schema
from aioconductor._backends.postgres.urls import URL_OPTIONS
from aioconductor._payload import encode_json
from aioconductor._urls import ParsedURL
from aioconductor._urls import validate_namespace
from aioconductor.boards._posting import PostOptions
from aioconductor.boards._posting import post_spec
from aioconductor.boards._support import PAGE
from aioconductor.boards._support import conductor_from_row
from aioconductor.boards._support import job_from_row
from aioconductor.boards._support import listed_jobs
from aioconductor.boards._support import visible
from aioconductor.boards.base import EncodedObject
from aioconductor.boards.base import JobBoard
from aioconductor.boards.base import PostSpec
from aioconductor.boards.base import Subscription
from aioconductor.boards.base import lost_message
from aioconductor.boards.base import unclaimable_message
from aioconductor.errors import BoardClosed
from aioconductor.errors import BoardError
from aioconductor.errors import ClaimLost
from aioconductor.errors import JobNotFound
from aioconductor.errors import PayloadError
from aioconductor.errors import UnclaimableJob
from aioconductor.models import Claim
from aioconductor.models import ConductorInfo
from aioconductor.models import Job
from aioconductor.models import JobNotification
from aioconductor.models import JobState
from aioconductor.models import Outcome

__all__ = ["PostgresJobBoard"]


class PostgresJobBoard(JobBoard):
    """A job board on PostgreSQL: SKIP LOCKED claims, LISTEN/NOTIFY pushes, server time.

    Open it with ``open_board("postgresql://host/db?namespace=NAME")``; the URL's password is
    never shown in reprs, logs or errors.

    Args:
        driver_url: the PostgreSQL URL without the library's options.
        schema: the schema holding the board's tables (default the URL's ``schema=`` option,
            else ``aioc_<namespace>``).
        options: the library's PostgreSQL options from the URL (``pool_min``, ``pool_max``).
        **kwargs: see :class:`~aioconductor.boards.base.JobBoard`.

    Raises:
        ConfigurationError: a bad namespace, schema or pool option.
    """

    url_options = JobBoard.url_options | URL_OPTIONS

    def __init__(
        self,
        *,
        driver_url: str = "postgresql://127.0.0.1:5432/postgres",
        schema: str | None = None,
        options: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        validate_namespace(self.namespace)
        self._link = PostgresLink(
            driver_url,
            options or {},
            closed_error=BoardClosed,
            error=BoardError,
            schema=schema,
            namespace=self.namespace,
        )
        self.schema = self._link.schema
        #: The channel this board's posts and abandons are announced on.
        self.channel = channel_name(self.schema, self.namespace)
        self._sql = with_schema(sql.BoardStatements(), self._link.q)
        #: When the earliest delayed job, retry or lease this board knows of falls due.
        self._due = DueTimer()

    @classmethod
    def from_url(cls, parsed: ParsedURL, **kwargs: Any) -> Self:
        """Build the board for a parsed ``postgresql://`` URL; not yet connected."""
        kwargs.setdefault("driver_url", parsed.driver_url)
        kwargs.setdefault("options", {k: v for k, v in parsed.options.items() if k in URL_OPTIONS})
        return super().from_url(parsed, **kwargs)

    def __repr__(self) -> str:
        return (
            f"<PostgresJobBoard {self._link.url} schema={self.schema!r}"
            f" namespace={self.namespace!r}>"
        )

    # -- plumbing ------------------------------------------------------------------------------

    async def _connect(self) -> None:
        await self._link.connect("board", sql.MIGRATIONS)

    async def _aclose(self) -> None:
        await self._link.aclose()

    async def _fetch_row(self, what: str, query: str, *args: Any) -> Any:
        """Run a one-row statement once (a transition: never retried)."""
        return await self._link.call(what, lambda conn: conn.fetchrow(query, self.namespace, *args))

    async def _read(self, what: str, query: str, *args: Any) -> list[Any]:
        """Run an idempotent query, retried through connection errors."""
        rows: list[Any] = await self._link.read(
            what, lambda conn: conn.fetch(query, self.namespace, *args)
        )
        return rows

    async def _current(self, job_id: str) -> tuple[Job, float]:
        """The job as stored and the board time; ``JobNotFound`` if there is none."""
        rows = [] if "\x00" in job_id else await self._read("get", self._sql.fetch, job_id)
        if not rows:
            raise JobNotFound(f"no job {job_id!r} on this board")
        return job_from_row(rows[0]), rows[0][-1]

    async def _checked(self, row: Any, claim: Claim, verb: str) -> Job:
        """The job of a verb's updated row, or ``ClaimLost`` (``JobNotFound``) if none."""
        if row is not None:
            return job_from_row(row)
        job, _ = await self._current(claim.job_id)
        raise ClaimLost(lost_message(claim, verb, job.state, job.claim))

    # -- transitions ---------------------------------------------------------------------------

    async def post_in_transaction(
        self,
        connection: Any,
        name: str,
        flow: str,
        args: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        **options: Unpack[PostOptions],
    ) -> Job:
        """Post a job on the caller's own asyncpg ``connection``, inside its transaction.

        The job exists (and conductors hear of it) only if that transaction commits; a
        rollback leaves no trace: the transactional-outbox pattern, for jobs that must exist
        exactly when the application's own rows do. ``key`` and the options are those of
        :meth:`post`: if a job holds ``key`` (committed, or written earlier in this
        transaction), nothing is written and that job is returned, as :meth:`get` would show
        it to this transaction. If another transaction is posting the same key, this call
        waits until it ends. Under ``REPEATABLE READ`` or ``SERIALIZABLE``, a key taken by a
        transaction that committed after this one began raises ``BoardError`` (a
        serialization failure: retry the transaction).

        Example::

            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("INSERT INTO orders ...")
                await board.post_in_transaction(
                    conn, "ship", "ship-order", {"order": 7}, key="ship-order-7"
                )

        Raises:
            PayloadError: bad name, flow, args, key or option; nothing was written.
            BoardError: the statement failed; the caller's transaction is then aborted, as
                with any failed statement.
        """
        self._check_open()
        spec = post_spec(name, flow, args, self.max_payload_bytes, key=key, **options)
        check_spec(spec)
        with self._link.translate("post"):
            posted = await post_one(connection, self._sql, self.namespace, self.channel, spec)
        return self._noted(posted)

    def _noted(self, posted: Posted) -> Job:
        """The job a post returned, its delay noted (the sweep wakes when it falls due)."""
        job, now = posted
        if job.state is JobState.SCHEDULED:
            self._due.note(job.not_before, now)
        return job

    async def _post(self, spec: PostSpec) -> Job:
        check_spec(spec)
        # The id is the spec's and a post of an existing id writes nothing, so a post whose
        # reply was lost is retried like a read without posting twice.
        posted = await self._link.read(
            "post", lambda conn: post_one(conn, self._sql, self.namespace, self.channel, spec)
        )
        return self._noted(posted)

    async def _post_many(self, specs: list[PostSpec]) -> list[Job]:
        if len(specs) == 1:
            return [await self._post(specs[0])]
        for spec in specs:
            check_spec(spec)
        # Ids chosen before, and a post of an existing id writes nothing: retried like a read.
        posted = await self._link.read(
            "post", lambda conn: post_many(conn, self._sql, self.namespace, self.channel, specs)
        )
        return [self._noted(each) for each in posted]

    async def _post_tick(self, schedule: str, tick: float, spec: PostSpec) -> Job | None:
        check_spec(spec)
        # A try whose reply was lost committed its job or nothing: retried like a read.
        posted = await self._link.read(
            "post_tick",
            lambda conn: post_tick(
                conn, self._sql, self.namespace, self.channel, schedule, tick, spec
            ),
        )
        return None if posted is None else self._noted(posted)

    async def _claim(self, job_id: str, owner: str, lease: float) -> Job:
        refuse_nul("the owner", owner, PayloadError)
        if "\x00" in job_id:
            raise JobNotFound(f"no job {job_id!r} on this board")
        row = await self._fetch_row("claim", self._sql.claim, job_id, owner, seconds(lease))
        if row is None:
            job, now = await self._current(job_id)
            raise UnclaimableJob(unclaimable_message(visible(job, now), now))
        job = job_from_row(row)
        assert job.claim is not None
        self._due.note(job.claim.expires_at, job.updated_at)
        return job

    async def _claim_next(self, owner: str, lease: float) -> Job | None:
        refuse_nul("the owner", owner, PayloadError)
        row = await self._fetch_row("claim_next", self._sql.claim_next, owner, seconds(lease))
        if row is None:
            return None
        job = job_from_row(row)
        assert job.claim is not None
        self._due.note(job.claim.expires_at, job.updated_at)
        return job

    async def _claim_batch(self, owner: str, lease: float, limit: int) -> list[Job]:
        refuse_nul("the owner", owner, PayloadError)
        query = self._sql.claim_batch
        args = (self.namespace, owner, seconds(lease), limit)
        rows = await self._link.call("claim_batch", lambda conn: conn.fetch(query, *args))
        jobs = [job_from_row(row) for row in rows]
        if jobs:
            assert jobs[0].claim is not None
            self._due.note(jobs[0].claim.expires_at, jobs[0].updated_at)
        return jobs

    async def _claim_args(self, claim: Claim, verb: str) -> tuple[str, str, int]:
        """The claim as bind parameters; refused first if PostgreSQL could not even look it up."""
        if "\x00" in claim.job_id or "\x00" in claim.owner:
            job, _ = await self._current(claim.job_id)
            raise ClaimLost(lost_message(claim, verb, job.state, job.claim))
        return claim.job_id, claim.owner, claim.token

    async def _renew(self, claim: Claim, lease: float) -> Claim:
        args = (*await self._claim_args(claim, "renew"), seconds(lease))
        row = await self._fetch_row("renew", self._sql.renew, *args)
        job = await self._checked(row, claim, "renew")
        assert job.claim is not None
        self._due.note(job.claim.expires_at, job.updated_at)
        return job.claim

    async def _consume(
        self, claim: Claim, outcome: Outcome, result: dict[str, Any], result_json: bytes
    ) -> Job:
        args = (*await self._claim_args(claim, "consume"), outcome.value, result_json.decode())
        row = await self._fetch_row("consume", self._sql.consume, *args)
        return await self._checked(row, claim, "consume")

    async def _abandon(self, claim: Claim) -> Job:
        args = (*await self._claim_args(claim, "abandon"), self.channel)
        row = await self._fetch_row("abandon", self._sql.abandon, *args)
        return await self._checked(row, claim, "abandon")

    async def _release(self, claim: Claim) -> Job:
        args = (*await self._claim_args(claim, "release"), self.channel)
        row = await self._fetch_row("release", self._sql.release, *args)
        return await self._checked(row, claim, "release")

    async def _retry(self, claim: Claim, delay: float, failure: EncodedObject | None) -> Job:
        args = await self._claim_args(claim, "retry")
        text = None if failure is None else json_text(failure.json)
        row = await self._fetch_row(
            "retry", self._sql.retry, *args, seconds(delay), text, self.channel
        )
        job = await self._checked(row, claim, "retry")
        self._due.note(job.not_before, job.updated_at)
        return job

    async def _trash(self, job_id: str, claim: Claim | None, reason: str) -> Job:
        refuse_nul("the trash reason", reason, PayloadError)
        if claim is not None:
            args = (*await self._claim_args(claim, "trash"), reason)
            row = await self._fetch_row("trash", self._sql.trash, *args)
            return await self._checked(row, claim, "trash")
        row = None
        if "\x00" not in job_id:
            row = await self._fetch_row("trash", self._sql.trash_by_id, job_id, reason)
        if row is None:
            job, _ = await self._current(job_id)
            raise UnclaimableJob(f"job {job_id} is already {job.state}: it cannot be trashed")
        return job_from_row(row)

    # -- reads ---------------------------------------------------------------------------------

    async def _get(self, job_id: str) -> Job:
        job, now = await self._current(job_id)
        return visible(job, now)

    async def _get_by_key(self, key: str) -> Job:
        rows = await self._read("get_by_key", self._sql.by_key, key)
        if not rows:
            raise JobNotFound(f"no job holds the key {key!r} on this board")
        return visible(job_from_row(rows[0]), rows[0][-1])

    async def _schedule_ticks(self) -> dict[str, float]:
        return {row[0]: row[1] for row in await self._read("schedule_ticks", self._sql.ticks)}

    async def _purgeable(
        self, older_than: float, states: tuple[JobState, ...], limit: int
    ) -> list[str]:
        wanted = [state.value for state in states]
        rows = await self._read("purge", self._sql.purgeable, wanted, older_than, limit)
        return [row[0] for row in rows]

    async def _purge(self, job_ids: list[str]) -> int:
        ids = [job_id for job_id in job_ids if "\x00" not in job_id]
        # Tried once, as a transition: a retry after a lost reply would count 0 for its work.
        deleted: int = await self._link.call(
            "purge", lambda conn: conn.fetchval(self._sql.purge, self.namespace, ids)
        )
        return deleted

    async def _now(self) -> float:
        now: float = await self._link.read(
            "read the clock", lambda conn: conn.fetchval(self._sql.now)
        )
        return now

    async def _iterjobs(self, state: JobState | None) -> AsyncIterator[Job]:
        now = await self._now()
        statement = sql.page(state).replace("{s}", self._link.q)
        extra = sql.state_params(state, now)

        def read_page(priority: int, seq: int) -> Awaitable[list[Any]]:
            return self._read("iterjobs", statement, priority, seq, PAGE, *extra)

        async for job in listed_jobs(read_page, now):
            yield job

    async def _job_count(self, state: JobState | None) -> int:
        now = await self._now() if state in (JobState.UNCLAIMED, JobState.SCHEDULED) else 0.0
        statement = sql.count(state).replace("{s}", self._link.q)
        rows = await self._read("job_count", statement, *sql.state_params(state, now))
        return int(rows[0][0])

    # -- notifications -------------------------------------------------------------------------

    def _subscribe(self) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self._registered(ListenSubscription(self._link, self.channel, self.poll_interval))

    async def _sweep(self, cursor: Any) -> tuple[list[JobNotification], Any]:
        try:
            return await self._link.read("sweep", lambda conn: self._sweep_on(conn, cursor))
        except BoardClosed:
            if not self.closed:
                raise
            # Closed while sweeping: the stream ends at its next check, quietly.
            return [], cursor

    async def _sweep_on(self, conn: Any, cursor: float | None) -> tuple[list[JobNotification], Any]:
        now, due = await conn.fetchrow(self._sql.sweep_clock, self.namespace)
        self._due.clear()
        self._due.note(due, now)
        return await swept(conn, self._sql, self.namespace, now, cursor), now

    def _sweep_delay(self) -> float:
        # Sweep when the earliest delayed job or lease falls due, not only every poll_interval.
        return self._due.delay(self.poll_interval)

    # -- conductors ----------------------------------------------------------------------------

    async def _register_conductor(
        self, owner: str, name: str, ttl: float, meta: dict[str, Any]
    ) -> None:
        refuse_nul("the owner", owner, PayloadError)
        refuse_nul("the conductor's name", name, PayloadError)
        data = encode_json("the conductor's meta", meta, 64 * 1024).decode("utf-8")
        query = self._sql.register
        # Registering again is harmless, so a lost reply is retried like a read.
        await self._link.read(
            "register_conductor",
            lambda conn: conn.execute(query, self.namespace, owner, name, seconds(ttl), data),
        )

    async def _unregister_conductor(self, owner: str) -> None:
        await self._read("unregister_conductor", self._sql.unregister, owner)

    async def _conductors(self) -> list[ConductorInfo]:
        rows = await self._read("conductors", self._sql.alive)
        return [conductor_from_row(row) for row in rows]
