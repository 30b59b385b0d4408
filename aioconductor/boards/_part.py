"""The base of the parts a :class:`~aioconductor.boards.base.JobBoard` is made of (its posts'
endings, cancels, limits, searches, ...): what the board gives every one of them."""

from __future__ import annotations

import abc

__all__ = ["BoardPart"]


class BoardPart(abc.ABC):
    """One part of a board: its verbs on one subject, over what the board gives."""

    @abc.abstractmethod
    def _check_open(self) -> None:
        """Raise the board's closed error unless it is connected and not closed."""

    @abc.abstractmethod
    def _finished(self, job_id: str) -> None:
        """Wake whoever waits for job ``job_id`` to end (it just did)."""
