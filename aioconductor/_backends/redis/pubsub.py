"""Notifications of the Redis board: a subscription read from its pub/sub channel.

The board's scripts publish ``<kind> <priority> <job id>`` on the namespace's ``events``
channel: ``posted``, ``abandoned``, ``due`` and ``expired`` (a job became claimable),
``slot_freed`` (a limited claim ended: jobs its limit key held back may be claimable) and
``cancel`` (a claimed job was cancelled: its owner is to stop it). Every subscriber in every
process hears each one within a round trip. A message published while a subscriber is
disconnected is lost to it: the stream then re-reads every claimable job, and an owner that
missed a ``cancel`` learns of it from its next ``renew`` (``Claim.cancel_requested``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import anyio
from redis import exceptions as rexc
from redis.asyncio.client import PubSub

from aioconductor._backends.base import Redial
from aioconductor._backends.base import map_exceptions
from aioconductor._backends.base import parse_note
from aioconductor._backends.redis.link import RedisLink
from aioconductor.boards.base import Subscription
from aioconductor.errors import BackendUnavailable
from aioconductor.models import JobNotification

__all__ = ["PubSubSubscription"]

#: How long cleanup after a failed open may take, shielded from cancellation.
_CLEANUP_TIMEOUT = 5.0

logger = logging.getLogger("aioconductor.boards.redis")

#: How long one read waits for a message: well under redis-py's 5 s socket timeout, so an idle
#: channel never looks like a dead connection.
_LISTEN_POLL = 1.0
#: A silent pub/sub connection is pinged this often; no answer within 3 pings means it is dead.
_PING_EVERY = 5.0


class PubSubSubscription(Subscription):
    """A subscription read straight from the board's pub/sub channel by the stream's own task.

    There is no reader task: ``stream()`` waits in :meth:`receive` under its own deadline, and
    ``receive`` reads the pub/sub connection. (A task group held by the subscription would
    hold a cancel scope across the stream's ``yield``, which breaks callers that open their own
    scopes around ``anext``.) A pub/sub read is safe to cancel: redis-py leaves the connection
    as it is and keeps a partly read message in its parser.

    When the connection drops, ``receive`` reconnects with backoff, resubscribes, and sets
    :attr:`lost` so the stream re-reads every claimable job (messages published meanwhile are
    gone).
    """

    def __init__(self, link: RedisLink, channel: str, poll_interval: float) -> None:
        super().__init__()
        self._link = link
        self._channel = channel
        self._poll_interval = poll_interval
        self._pubsub: PubSub | None = None
        self._redial = Redial(logger, f"Redis at {link.url}")
        self._heard_at = 0.0
        self._pinged_at = 0.0

    async def open(self) -> None:
        """Subscribe, and return once Redis confirmed it (no post after this is missed).

        Raises:
            BackendUnavailable: Redis could not be reached.
        """
        pubsub = self._link.client.pubsub()
        try:
            self._link.check_open()
            with map_exceptions(self._link.errors("subscribe")), anyio.fail_after(10):
                await pubsub.subscribe(self._channel)
                while True:
                    message = await pubsub.get_message(timeout=_LISTEN_POLL)
                    if message is not None and message["type"] == "subscribe":
                        break
        except BaseException:
            # Shielded and bounded: a cancelled subscribe must still give its connection back.
            with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
                await _close_pubsub(pubsub)
            raise
        self._pubsub = pubsub
        self._heard_at = self._pinged_at = anyio.current_time()

    async def aclose_transport(self) -> None:
        """Release the pub/sub connection."""
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await _close_pubsub(pubsub)

    async def receive(self) -> JobNotification:
        """The next notification published on the channel (reconnecting when it dropped)."""
        while True:
            if self.ended:
                raise anyio.EndOfStream
            pubsub = self._pubsub
            if pubsub is None:
                await self._reconnect()
                continue
            try:
                if pubsub.connection is None or not pubsub.connection.is_connected:
                    # redis-py would reconnect it silently and lose what was published
                    # meanwhile without telling; treat it as the drop it is.
                    raise rexc.ConnectionError("the pub/sub connection was closed")
                message = await pubsub.get_message(timeout=_LISTEN_POLL)
                note = self._heard(message)
                if note is not None:
                    return note
                await self._keep_alive(pubsub)
            except (rexc.RedisError, OSError) as exc:
                if self.ended:
                    raise anyio.EndOfStream from None
                logger.warning(
                    "Redis at %s: notifications lost (%s); reconnecting",
                    self._link.url,
                    self._link.scrub(exc),
                )
                await self.aclose_transport()

    def _heard(self, message: dict[str, Any] | None) -> JobNotification | None:
        if message is None:
            return None
        self._heard_at = anyio.current_time()
        if message["type"] != "message":
            return None
        return parse_note(message["data"])

    async def _keep_alive(self, pubsub: PubSub) -> None:
        now = anyio.current_time()
        if now - self._heard_at > 3 * _PING_EVERY:
            raise rexc.ConnectionError("no answer to pings on the pub/sub connection")
        if now - self._pinged_at > _PING_EVERY and now - self._heard_at > _PING_EVERY:
            # Only a ping proves a quiet connection alive (TCP keepalive takes a minute).
            self._pinged_at = now
            await pubsub.ping()

    async def _reconnect(self) -> None:
        if await self._redial.attempt(self.open, BackendUnavailable):
            self.lost = True
            # The stream re-reads every claimable job when a receive times out with `lost`
            # set; wait here past its deadline (never longer than poll_interval) so that
            # happens now.
            await anyio.sleep(self._poll_interval)


async def _close_pubsub(pubsub: PubSub) -> None:
    # Closing only drops a socket; shielded so a cancelled stream still frees its connection.
    with anyio.move_on_after(2, shield=True), contextlib.suppress(Exception):
        await pubsub.aclose()
