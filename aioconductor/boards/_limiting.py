"""Fleet-wide concurrency limits, written once for every board: ``set_limit`` and ``limits``.

A job posted with ``limit_key="payments"`` counts against that key's limit: while as many jobs
with the key hold a live claim (``CLAIMED``, lease not expired) as the limit allows, every
claim passes those jobs over and takes the next claimable job instead. The check is part of
the claim's atomic step on every backend (``claim``, ``claim_next`` and ``claim_batch``: a
batch never takes more of a key than its free slots), so the limit holds across every
conductor on every machine. A slot is freed by whatever ends the claim: ``consume``,
``abandon``, ``release``, ``retry``, ``trash``, or the lease running out. Renewing a claim whose
lease ran out re-takes its slot, so it fails (``ClaimLost``, nothing changed) if the key is
full meanwhile: a holder past its lease is fenced out rather than let the limit be exceeded.
Lowering a limit stops nothing running. Every end of a limited claim is announced
(``SLOT_FREED``, pushed where the backend pushes, else found by the next sweep), so the jobs the
full key held back are claimed at once; a raised or removed limit is found by the next claim.

A backend gives ``_set_limit`` (store or delete the key's limit), ``_limits`` (every limit with
the live claims of its key) and keeps the rule above in its claims, renewals and endings.
"""

from __future__ import annotations

from aioconductor._payload import validate_key
from aioconductor.boards._part import BoardPart
from aioconductor.errors import PayloadError
from aioconductor.models import LimitInfo

__all__ = ["MAX_LIMIT", "Limits", "check_limit"]

#: The largest limit ``set_limit`` takes.
MAX_LIMIT = 1_000_000


def check_limit(limit: object) -> int | None:
    """``limit`` if it is None or an int from 0 to :data:`MAX_LIMIT`, else ``PayloadError``."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise PayloadError(f"a limit must be an int or None, got {limit!r:.80}")
    if not 0 <= limit <= MAX_LIMIT:
        raise PayloadError(f"a limit must be from 0 to {MAX_LIMIT:,}, got {limit}")
    return limit


class Limits(BoardPart):
    """The concurrency limit verbs of :class:`~aioconductor.boards.base.JobBoard`."""

    async def set_limit(self, key: str, limit: int | None) -> None:
        """Allow at most ``limit`` jobs posted with ``limit_key=key`` to be claimed at once,
        across every conductor on the board; ``None`` removes the limit (the key then limits
        nothing). 0 pauses the key's jobs. Jobs running now go on even if the new limit is
        lower.

        Raises:
            PayloadError: a bad key or limit; nothing changed.
        """
        self._check_open()
        await self._set_limit(validate_key(key, "limit key"), check_limit(limit))

    async def limits(self) -> list[LimitInfo]:
        """Every limit set on the board, by key, with how many of its jobs are claimed now."""
        self._check_open()
        found = await self._limits()
        return sorted(found, key=lambda info: info.key)

    # -- what the board gives ------------------------------------------------------------------

    async def _set_limit(self, key: str, limit: int | None) -> None:
        """Store (or, with None, delete) the key's limit."""
        raise NotImplementedError(f"{type(self).__name__} has no concurrency limits yet")

    async def _limits(self) -> list[LimitInfo]:
        """Every stored limit with the number of live claims of its key."""
        raise NotImplementedError(f"{type(self).__name__} has no concurrency limits yet")
