"""Notifications of the PostgreSQL board: a subscription fed by LISTEN on its own connection,
and the sweep that finds what no notification announces."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio

from aioconductor._backends.base import Redial
from aioconductor._backends.base import parse_note
from aioconductor._backends.postgres.board_sql import BoardStatements
from aioconductor._backends.postgres.board_sql import sweep_kind
from aioconductor._backends.postgres.connect import CLEANUP_TIMEOUT
from aioconductor._backends.postgres.link import PostgresLink
from aioconductor._models import build
from aioconductor.boards.base import Subscription
from aioconductor.errors import BackendUnavailable
from aioconductor.models import JobNotification
from aioconductor.models import NotificationKind

__all__ = ["ListenSubscription", "swept"]

logger = logging.getLogger("aioconductor.boards.postgres")

#: How long one wait for a notification lasts before the connection's health is checked.
_LISTEN_POLL = 1.0
#: A silent listening connection is pinged this often (TCP alone notices a dead peer late).
_PING_EVERY = 10.0


class ListenSubscription(Subscription):
    """A subscription fed by ``LISTEN`` on a connection of its own (outside the pool).

    asyncpg reads the connection in the event loop and calls :meth:`_heard` for each
    notification, which pushes it without blocking; there is no reader task. (A task group held
    by the subscription would hold a cancel scope across the stream's ``yield``.) ``receive``
    runs in the stream's own task: it waits for a pushed notification and, between waits,
    checks the connection, pings it when it was quiet, and reconnects with backoff when it was
    lost, setting :attr:`lost` so the stream re-reads every claimable job (notifications sent
    meanwhile are gone).
    """

    def __init__(self, link: PostgresLink, channel: str, poll_interval: float) -> None:
        super().__init__()
        self._link = link
        self._channel = channel
        self._poll_interval = poll_interval
        self._conn: Any = None
        self._redial = Redial(logger, f"PostgreSQL at {link.url}")
        self._heard_at = 0.0
        self._loop_time: Callable[[], float] = time.monotonic

    async def open(self) -> None:
        """Connect and LISTEN; once this returns, no notification committed after is missed.

        Raises:
            BackendUnavailable: the server could not be reached.
        """
        conn = await self._link.connect_one("listen")
        try:
            conn.add_termination_listener(self._terminated)
            with self._link.translate("listen"):
                await conn.add_listener(self._channel, self._heard)
        except BaseException:
            # Shielded and bounded: a cancelled LISTEN must still give its connection back.
            with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                await self._link.release_one(conn)
            raise
        self._conn = conn
        self._loop_time = asyncio.get_running_loop().time
        self._heard_at = anyio.current_time()

    def _heard(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        # asyncpg calls this from a bare event-loop callback, outside any task, where anyio
        # cannot tell which loop runs (anyio.current_time() raises there). asyncpg is
        # asyncio-only, and anyio's clock on asyncio is the loop's.
        self._heard_at = self._loop_time()
        note = parse_note(payload)
        if note is not None:
            self.push(note)

    def _terminated(self, conn: Any) -> None:
        if conn is self._conn and not self.ended:
            # Whatever was sent from now until LISTEN works again is lost.
            self.lost = True

    async def aclose_transport(self) -> None:
        """Release the listening connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._link.release_one(conn)

    async def receive(self) -> JobNotification:
        """The next notification (reconnecting first when the connection was lost)."""
        while True:
            if self.ended:
                raise anyio.EndOfStream
            conn = self._conn
            if conn is None or conn.is_closed():
                await self.aclose_transport()
                await self._reconnect()
                continue
            with anyio.move_on_after(_LISTEN_POLL):
                return await super().receive()
            await self._keep_alive(conn)

    async def _keep_alive(self, conn: Any) -> None:
        now = anyio.current_time()
        if now - self._heard_at < _PING_EVERY:
            return
        self._heard_at = now
        alive = False
        # Shielded and bounded: a ping cut short by the stream's deadline would leave the
        # connection mid-query.
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await conn.fetchval("SELECT 1")
                alive = True
            except Exception as exc:
                logger.warning("PostgreSQL at %s: %s", self._link.url, self._link.scrub(exc))
        if not alive:
            self.lost = True
            await self.aclose_transport()

    async def _reconnect(self) -> None:
        if await self._redial.attempt(self._open_bounded, (BackendUnavailable, TimeoutError)):
            self.lost = True
            # The stream re-reads every claimable job when a receive times out with `lost`
            # set; wait here past its deadline (never longer than poll_interval) so that
            # happens now.
            await anyio.sleep(self._poll_interval)

    async def _open_bounded(self) -> None:
        # Shielded (and bounded) so the stream's short deadlines cannot keep cutting a slow
        # connect short for ever.
        with anyio.CancelScope(shield=True), anyio.fail_after(10):
            await self.open()


async def swept(
    conn: Any, sql: BoardStatements, namespace: str, now: float, cursor: float | None
) -> list[JobNotification]:
    """What a sweep at board time ``now`` finds on ``conn``: every claimable job (``cursor``
    None), else the delays and leases that ended since the sweep at ``cursor``."""
    if cursor is None:
        rows = await conn.fetch(sql.sweep_all, namespace, now)
        kinds = [NotificationKind.WAITING] * len(rows)
    else:
        rows = await conn.fetch(sql.sweep_since, namespace, now, cursor)
        kinds = [sweep_kind(row[2]) for row in rows]
    return [
        build(JobNotification, job_id=row[0], kind=kind, priority=row[1])
        for row, kind in zip(rows, kinds, strict=True)
    ]
