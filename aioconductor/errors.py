"""Every error aioconductor raises.

One root, :class:`AioconductorError`, and a few categories under it. Backends translate their
driver's exceptions into these at their edge (``raise BackendUnavailable(...) from exc``), so an
application never has to catch ``redis`` or ``asyncpg`` errors.

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

__all__ = [
    "AioconductorError",
    "BackendUnavailable",
    "BoardClosed",
    "BoardError",
    "ClaimLost",
    "CompilationError",
    "ConfigurationError",
    "DependencyMissing",
    "FlowError",
    "FlowFailed",
    "FlowNotFound",
    "JobNotFound",
    "LogBookNotFound",
    "PayloadError",
    "SchemaMissing",
    "StoreClosed",
    "StoreError",
    "TaskTimeout",
    "UnclaimableJob",
    "VersionConflict",
]


class AioconductorError(Exception):
    """Something went wrong in aioconductor."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message if message is not None else (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        """The human-readable message of this error."""
        return str(self)


class ConfigurationError(AioconductorError, ValueError):
    """The configuration (a URL, an option, an argument) is not valid."""


class SchemaMissing(ConfigurationError):
    """A board or store opened without migrating (``migrate=False``: the read-only commands)
    found its schema (tables, topics) missing or older than this aioconductor's: run
    ``aioconductor migrate`` first. Nothing was created or written."""


class DependencyMissing(ConfigurationError, ImportError):
    """An optional dependency needed for this backend is not installed."""


class PayloadError(AioconductorError, ValueError):
    """The job's payload was refused: nothing was written."""


class BoardError(AioconductorError):
    """A job board operation failed."""


class JobNotFound(BoardError, LookupError):
    """No job with that id exists on this board."""


class UnclaimableJob(BoardError):
    """The job cannot be claimed now (claimed by another owner, finished, or not yet due)."""


class ClaimLost(BoardError):
    """The claim is no longer held: its lease expired or another owner claimed the job."""


class BoardClosed(BoardError):
    """The board is closed: open a new one or use it inside ``async with``."""


class BackendUnavailable(AioconductorError, ConnectionError):
    """The backing service could not be reached or failed mid-operation."""


class StoreError(AioconductorError):
    """A persistence store operation failed."""


class LogBookNotFound(StoreError, LookupError):
    """No logbook with that id exists in this store."""


class VersionConflict(StoreError):
    """The record was changed by someone else since it was read."""


class StoreClosed(StoreError):
    """The store is closed: open a new one or use it inside ``async with``."""


class FlowError(AioconductorError):
    """A flow could not be built or run."""


class FlowNotFound(FlowError, LookupError):
    """No flow is registered under that name."""


class CompilationError(FlowError):
    """The flow is not valid: a missing input, a cycle, or a duplicate name or output."""


class TaskTimeout(FlowError, TimeoutError):
    """A task ran past its timeout."""


class FlowFailed(FlowError):
    """The flow failed and was reverted; ``failure`` holds what went wrong."""

    def __init__(self, message: str | None = None, *, failure: object = None) -> None:
        super().__init__(message)
        #: The :class:`aioconductor.Failure` that made the flow fail.
        self.failure = failure
