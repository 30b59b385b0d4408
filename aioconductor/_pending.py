"""A call queued for a batch: whoever runs the batch settles it, its caller awaits ``done``.

Used by the SQLite group commit and the Redis pipelining, which both run the calls of many
callers at once and hand each its own reply or error.
"""

from __future__ import annotations

from typing import Any

import anyio

__all__ = ["Pending"]


class Pending:
    """One caller's call in a batch, and what became of it."""

    def __init__(self) -> None:
        #: Set once the batch that took this call is over (settled or not).
        self.done = anyio.Event()
        self.reply: Any = None
        self.error: BaseException | None = None
        #: Whether the call has its outcome.
        self.settled = False

    def settle(self, reply: Any = None, *, error: BaseException | None = None) -> None:
        """Give the call its reply, or its error."""
        self.reply, self.error, self.settled = reply, error, True

    def outcome(self) -> Any:
        """The call's reply, or its error raised."""
        if self.error is not None:
            raise self.error
        return self.reply
