"""The plumbing, reads, notifications and conductor registry of the PostgreSQL board: what
:class:`~aioconductor.boards.postgres.PostgresJobBoard` inherits, so that its module holds the
transitions (claims, endings, cancels, limits) alone."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from aioconductor._backends.base import DueTimer
from aioconductor._backends.postgres import board_sql as sql
from aioconductor._backends.postgres.board_sql import BoardStatements
from aioconductor._backends.postgres.board_sql import seconds
from aioconductor._backends.postgres.link import PostgresLink
from aioconductor._backends.postgres.listen import ListenSubscription
from aioconductor._backends.postgres.listen import swept
from aioconductor._backends.postgres.schema import refuse_nul
from aioconductor._backends.postgres.searching import ENDED_COUNTS
from aioconductor._backends.postgres.searching import HELD_CLAIMS
from aioconductor._backends.postgres.searching import matches_nothing
from aioconductor._backends.postgres.searching import search_count_query
from aioconductor._backends.postgres.searching import search_query
from aioconductor._payload import encode_json
from aioconductor.boards._support import PAGE
from aioconductor.boards._support import conductor_from_row
from aioconductor.boards._support import job_from_row
from aioconductor.boards._support import listed_jobs
from aioconductor.boards._support import visible
from aioconductor.boards.base import JobBoard
from aioconductor.boards.base import Subscription
from aioconductor.boards.base import lost_message
from aioconductor.errors import BoardClosed
from aioconductor.errors import ClaimLost
from aioconductor.errors import JobNotFound
from aioconductor.errors import PayloadError
from aioconductor.models import Claim
from aioconductor.models import ConductorInfo
from aioconductor.models import EndedCount
from aioconductor.models import Job
from aioconductor.models import JobFilter
from aioconductor.models import JobNotification
from aioconductor.models import JobState

__all__ = ["PostgresBoardBase"]


class PostgresBoardBase(JobBoard):
    """What every PostgreSQL board verb builds on: the link, the statements, the reads."""

    #: The pool and the connections of the board.
    _link: PostgresLink
    #: The board's statements, the schema put in.
    _sql: BoardStatements
    #: The schema holding the board's tables.
    schema: str
    #: The channel this board's posts, give-backs, cancels and freed slots are announced on.
    channel: str
    #: When the earliest delayed job, retry or lease this board knows of falls due.
    _due: DueTimer

    # -- plumbing ------------------------------------------------------------------------------

    async def _connect(self) -> None:
        await self._link.connect("board", sql.MIGRATIONS, migrate=self.migrate)

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

    async def _claim_args(self, claim: Claim, verb: str) -> tuple[str, str, int]:
        """The claim as bind parameters; refused first if PostgreSQL could not even look it up."""
        if "\x00" in claim.job_id or "\x00" in claim.owner:
            job, _ = await self._current(claim.job_id)
            raise ClaimLost(lost_message(claim, verb, job.state, job.claim))
        return claim.job_id, claim.owner, claim.token

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

    # -- search (see _backends.postgres.searching) ----------------------------------------------

    async def _search(self, where: JobFilter, before: int | None, limit: int) -> list[Job]:
        if matches_nothing(where):
            return []
        statement, args = search_query(where, before, limit)
        rows = await self._read("search", statement.replace("{s}", self._link.q), *args)
        return [visible(job_from_row(row), row[-1]) for row in rows]

    async def _search_count(self, where: JobFilter) -> int:
        if matches_nothing(where):
            return 0
        statement, args = search_count_query(where)
        rows = await self._read("search_count", statement.replace("{s}", self._link.q), *args)
        return int(rows[0][0])

    async def _ended_counts(self, since: float, bucket: float) -> list[EndedCount]:
        statement = ENDED_COUNTS.replace("{s}", self._link.q)
        rows = await self._read("ended_counts", statement, since, bucket)
        return [EndedCount(start=int(k) * bucket, ending=e, count=n) for k, e, n in rows]

    async def _held_claims(self) -> dict[str, int]:
        statement = HELD_CLAIMS.replace("{s}", self._link.q)
        return {owner: n for owner, n in await self._read("held_claims", statement)}

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
