"""Job ids as an operator types them: the whole id, or a unique prefix of it (``3f2a9c1e``).

Every verb that takes a job id (``show``, ``trash``, ``cancel``) goes through
:func:`resolve_job_id`, and nothing else in the command line looks a job up by its id.
"""

from __future__ import annotations

import contextlib

from aioconductor.boards import JobBoard
from aioconductor.errors import ConfigurationError
from aioconductor.errors import JobNotFound
from aioconductor.models import Job

__all__ = ["AmbiguousJobId", "resolve_job_id"]


class AmbiguousJobId(ConfigurationError, LookupError):
    """More than one job's id starts with the prefix given: the message lists them."""


async def resolve_job_id(board: JobBoard, text: str) -> str:
    """The id of the job ``text`` names: its exact id, else the one job whose id starts with
    ``text`` (case-insensitive).

    An exact id is used as it is (one lookup). Otherwise the board's jobs are scanned, and the
    scan stops at the second match: this is an operator's tool, not a hot path.

    Raises:
        JobNotFound: no job has that id, nor an id that starts with it (the board's own
            "no job" error).
        AmbiguousJobId: two jobs (or more) have ids starting with ``text``.
    """
    try:
        return (await board.get(text)).id
    except JobNotFound as missing:
        not_found = missing
    prefix = text.lower()
    if not prefix:
        raise not_found
    matches: list[Job] = []
    async with contextlib.aclosing(board.iterjobs()) as jobs:
        async for job in jobs:
            if job.id.lower().startswith(prefix):
                matches.append(job)
                if len(matches) == 2:
                    break
    if not matches:
        raise not_found
    if len(matches) == 1:
        return matches[0].id
    listed = ", ".join(f"{job.id} ({job.name})" for job in matches)
    raise AmbiguousJobId(
        f"job id prefix {text!r} is ambiguous: it matches {listed} (and perhaps more); "
        "give more of the id"
    )
