"""``asyncpg.connect`` made cancellation-safe: every connection of a PostgreSQL link opens here.

A cancellation that reaches ``asyncpg.connect`` while the TCP connection is being set up,
before asyncpg sends its SSL request, makes the event loop close the transport; asyncpg's
``TLSUpgradeProto.connection_lost`` then sets ``ConnectionError('unexpected connection_lost()
call')`` on a future (``on_data``) that no one will ever await, and the loop reports "Future
exception was never retrieved" once the future is collected (asyncpg 0.32). A conductor
cancelled as it starts hit that 8 times in 30. So the connect runs in a task of its own, out of
the cancellation's reach; a caller that is cancelled (or fails) meanwhile lets it finish, for at
most ``CONNECT_GRACE`` seconds, closes the connection it made, and then re-raises.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

__all__ = ["CLEANUP_TIMEOUT", "CONNECT_GRACE", "safe_connect"]

#: How long cleanup after a failed open may take, shielded from cancellation.
CLEANUP_TIMEOUT = 5.0
#: How long a connect whose caller was cancelled may go on to finish.
CONNECT_GRACE = 2.0


async def safe_connect(*args: Any, **kwargs: Any) -> Any:
    """``asyncpg.connect``, which a cancellation never cuts in the middle of its handshake.

    Used for a link's own connections (:meth:`PostgresLink.connect_one`) and its pool's
    (asyncpg calls this for each); takes ``asyncpg.connect``'s arguments.
    """
    connecting = asyncio.ensure_future(asyncpg.connect(*args, **kwargs))
    try:
        return await asyncio.shield(connecting)
    except BaseException:
        # Shielded so the cancellation being raised cannot cut this cleanup short; bounded by
        # the grace and the close's own timeouts.
        with anyio.CancelScope(shield=True):
            await _abandon(connecting)
        raise


async def _abandon(connecting: asyncio.Future[Any]) -> None:
    """Let a connect its caller gave up on end, then close the connection it made."""
    await asyncio.wait([connecting], timeout=CONNECT_GRACE)
    if not connecting.done():
        # Past the grace the connect is most likely still waiting for the server to accept
        # the TCP connection, where asyncpg has no protocol yet and a cut leaves nothing.
        connecting.cancel()
        await asyncio.wait([connecting], timeout=CLEANUP_TIMEOUT)
        if not connecting.done():
            return
    if connecting.cancelled() or connecting.exception() is not None:
        return  # nothing was opened (and the exception is now retrieved)
    conn = connecting.result()
    # Closing says goodbye to the server; bounded, then terminated, in case it does not answer.
    with anyio.move_on_after(2), contextlib.suppress(Exception):
        await conn.close(timeout=2)
    if not conn.is_closed():
        conn.terminate()
