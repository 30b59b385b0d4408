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

Schema (in ``aioconductor._backends.postgres.migrations``; created and migrated at connect,
recorded in ``schema_version``): ``jobs`` (a row per job, every namespace in one table; ``seq``
is the post order; ``ready_at`` is when an unfinished job is claimable from, NULL once final),
``conductors``, ``schedule_ticks`` (each schedule's last posted tick; ``post_tick`` upserts
it and posts the tick's job in one transaction, see ``_backends.postgres.posting``) and
``limits`` (a row a limit key with a limit set). ``args`` and ``result`` are ``json``, not
``jsonb``: ``json`` keeps the text as written, so a ``\\u0000`` in a string, key order and
numbers come back exactly as posted.

Keys and retention: ``job_key`` has a partial unique index per namespace, and a post is one
``INSERT ... ON CONFLICT DO NOTHING`` (see ``_backends.postgres.posting``); ``purge`` reads the
partial index of finished jobs by end time and deletes a batch by id in one short statement.

Cancels and limits: ``cancel`` is one statement (end an unclaimed job, or flag a claimed one
and ``pg_notify`` its owner). A claim that would take a job with a limit key goes, inside the
same statement, to the PL/pgSQL function ``claim_limited``: it locks the key's row, then
counts the key's live claims in a statement of its own, so concurrent claims never overshoot
a limit (see ``_backends.postgres.limits_sql``). A renewal of a job with a limit key goes to
``renew_limited`` the same way, which reads its clock only once it holds the key's lock. Jobs
without limit keys never call either.

Notifications: post, abandon and release (and a retry due at once), a cancel of a claimed job
and every end of a claim of a limit key ``pg_notify`` the namespace's channel in the same
statement, so a notification goes out exactly when the change commits; each ``stream()``
LISTENs on a connection of its own. Delays, retries and leases that fall due are found by the
stream's sweep.

Search: indexed statements (see ``_backends.postgres.searching``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn, Self, Unpack

from aioconductor._backends.base import DueTimer
from aioconductor._backends.postgres import board_sql as sql
from aioconductor._backends.postgres.board_reads import PostgresBoardBase
from aioconductor._backends.postgres.board_sql import channel_name
from aioconductor._backends.postgres.board_sql import json_text
from aioconductor._backends.postgres.board_sql import seconds
from aioconductor._backends.postgres.link import PostgresLink
from aioconductor._backends.postgres.posting import Posted
from aioconductor._backends.postgres.posting import check_spec
from aioconductor._backends.postgres.posting import post_many
from aioconductor._backends.postgres.posting import post_one
from aioconductor._backends.postgres.posting import post_tick
from aioconductor._backends.postgres.schema import refuse_nul
from aioconductor._backends.postgres.schema import with_schema
from aioconductor._backends.postgres.urls import URL_OPTIONS
from aioconductor._urls import ParsedURL
from aioconductor._urls import validate_namespace
from aioconductor.boards._posting import PostOptions
from aioconductor.boards._posting import post_spec
from aioconductor.boards._support import job_from_row
from aioconductor.boards._support import visible
from aioconductor.boards.base import EncodedObject
from aioconductor.boards.base import JobBoard
from aioconductor.boards.base import PostSpec
from aioconductor.boards.base import lost_message
from aioconductor.boards.base import unclaimable_message
from aioconductor.errors import BoardClosed
from aioconductor.errors import BoardError
from aioconductor.errors import ClaimLost
from aioconductor.errors import JobNotFound
from aioconductor.errors import PayloadError
from aioconductor.errors import UnclaimableJob
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.models import JobState
from aioconductor.models import LimitInfo
from aioconductor.models import Outcome

__all__ = ["PostgresJobBoard"]


class PostgresJobBoard(PostgresBoardBase):
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
        self.channel = channel_name(self.schema, self.namespace)
        self._sql = with_schema(sql.BoardStatements(), self._link.q)
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
        :meth:`post` (``limit_key`` too): if a job holds ``key`` (committed, or written
        earlier in this transaction), nothing is written and that job is returned, as
        :meth:`get` would show it to this transaction. If another transaction is posting the
        same key, this call waits until it ends. Under ``REPEATABLE READ`` or
        ``SERIALIZABLE``, a key taken by a transaction that committed after this one began
        raises ``BoardError`` (a serialization failure: retry the transaction).

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
            job = visible(job, now)
            if job.limit_key is not None and job.is_claimable(now):
                raise UnclaimableJob(
                    f"job {job_id} waits for a slot: limit key {job.limit_key!r} is full"
                )
            raise UnclaimableJob(unclaimable_message(job, now))
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

    async def _renew(self, claim: Claim, lease: float) -> Claim:
        args = (*await self._claim_args(claim, "renew"), seconds(lease))
        row = await self._fetch_row("renew", self._sql.renew, *args)
        if row is None:
            await self._renew_refused(claim)
        job = job_from_row(row)
        assert job.claim is not None
        self._due.note(job.claim.expires_at, job.updated_at)
        return job.claim

    async def _renew_refused(self, claim: Claim) -> NoReturn:
        """Raise ``ClaimLost`` for a renewal that changed nothing: the claim is not current, or
        (still current) its lease ran out and its limit key was full (``renew_limited``)."""
        job, _ = await self._current(claim.job_id)
        held = job.claim is not None and (job.claim.owner, job.claim.token) == (
            claim.owner,
            claim.token,
        )
        if job.state is JobState.CLAIMED and held and job.limit_key is not None:
            raise ClaimLost(
                f"renew of job {job.id} by {claim.owner!r} refused: its lease ran out and its "
                f"limit key {job.limit_key!r} is full"
            )
        raise ClaimLost(lost_message(claim, "renew", job.state, job.claim))

    async def _consume(
        self, claim: Claim, outcome: Outcome, result: dict[str, Any], result_json: bytes
    ) -> Job:
        args = (
            *await self._claim_args(claim, "consume"),
            outcome.value,
            result_json.decode(),
            self.channel,
        )
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
        if job.state is JobState.SCHEDULED:
            self._due.note(job.not_before, job.updated_at)
        return job

    async def _trash(self, job_id: str, claim: Claim | None, reason: str) -> Job:
        refuse_nul("the trash reason", reason, PayloadError)
        if claim is not None:
            args = (*await self._claim_args(claim, "trash"), reason, self.channel)
            row = await self._fetch_row("trash", self._sql.trash, *args)
            return await self._checked(row, claim, "trash")
        row = None
        if "\x00" not in job_id:
            row = await self._fetch_row(
                "trash", self._sql.trash_by_id, job_id, reason, self.channel
            )
        if row is None:
            job, _ = await self._current(job_id)
            raise UnclaimableJob(f"job {job_id} is already {job.state}: it cannot be trashed")
        return job_from_row(row)

    # -- cancels and limits --------------------------------------------------------------------

    async def _cancel(self, job_id: str, reason: str) -> Job:
        refuse_nul("the cancel reason", reason, PayloadError)
        row = None
        if "\x00" not in job_id:
            row = await self._fetch_row("cancel", self._sql.cancel, job_id, reason, self.channel)
        if row is not None:
            return job_from_row(row)
        # Flagged already, final, or no such job: as it is.
        job, now = await self._current(job_id)
        return visible(job, now)

    async def _set_limit(self, key: str, limit: int | None) -> None:
        # Setting a limit twice is harmless, so a lost reply is retried like a read.
        await self._read("set_limit", self._sql.set_limit, key, limit)

    async def _limits(self) -> list[LimitInfo]:
        rows = await self._read("limits", self._sql.limits)
        return [LimitInfo(key=row[0], limit=row[1], claimed=row[2]) for row in rows]
