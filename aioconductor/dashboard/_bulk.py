"""The dashboard's actions on many jobs at once: cancel, trash or re-post the selected jobs, or
every job matching the list's filter, at most :data:`BULK_LIMIT` a request.

"All matching" pages through ``board.search`` newest first (keyset by ``seq``), so jobs that
change meanwhile are neither done twice nor skipped, and the jobs a re-post creates (newer than
every page read) are never picked up by the same request. A request that reaches the bound
says so (``more``): the operator runs it again for the rest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aioconductor.boards._searching import MAX_PAGE
from aioconductor.boards.base import JobBoard
from aioconductor.errors import JobNotFound
from aioconductor.errors import UnclaimableJob
from aioconductor.models import Job
from aioconductor.models import JobFilter

__all__ = [
    "BULK_ACTIONS",
    "BULK_LIMIT",
    "CANCEL_REASON",
    "TRASH_REASON",
    "bulk",
    "matching",
    "repost",
    "selected",
]

#: The most jobs one bulk request acts on.
BULK_LIMIT = 10_000
#: The actions on many jobs (``POST /api/bulk/{action}``).
BULK_ACTIONS = ("cancel", "trash", "repost")
#: The reasons the dashboard's actions record on a job.
CANCEL_REASON = "cancelled from the dashboard"
TRASH_REASON = "trashed from the dashboard"


async def repost(board: JobBoard, old: Job) -> Job:
    """Post ``old`` again as a new job: its name, flow, args, headers, priority, attempts,
    retry policy and limit key (not its idempotency key: a re-post is another job)."""
    return await board.post(
        old.name,
        old.flow,
        old.args,
        priority=old.priority,
        max_attempts=old.max_attempts,
        headers=old.headers or None,
        retry=old.retry,
        limit_key=old.limit_key,
    )


async def matching(board: JobBoard, where: JobFilter, limit: int) -> AsyncIterator[Job]:
    """Up to ``limit`` jobs matching ``where``, newest first, a search page at a time."""
    before: int | None = None
    left = limit
    while left > 0:
        page = await board.search(where, before=before, limit=min(MAX_PAGE, left))
        for job in page.jobs:
            yield job
        left -= len(page.jobs)
        if page.next_before is None:
            return
        before = page.next_before


async def selected(board: JobBoard, ids: Iterable[str], counts: Counter[str]) -> AsyncIterator[Job]:
    """The jobs of ``ids`` as they are now; a missing one is counted in ``counts``."""
    for job_id in dict.fromkeys(ids):
        try:
            yield await board.get(job_id)
        except JobNotFound:
            counts["missing"] += 1


async def _one(board: JobBoard, action: str, job: Job, counts: Counter[str]) -> None:
    if action == "repost":
        await repost(board, job)
        counts["reposted"] += 1
        return
    if job.state.is_final:
        counts["already ended"] += 1
        return
    try:
        if action == "trash":
            await board.trash(job.id, reason=TRASH_REASON)
            counts["trashed"] += 1
            return
        after = await board.cancel(job.id, reason=CANCEL_REASON)
    except JobNotFound:
        counts["missing"] += 1
        return
    except UnclaimableJob:  # it ended since it was read
        counts["already ended"] += 1
        return
    if after.state.is_final:
        counts["cancelled"] += 1
    elif job.cancel_requested:
        counts["already flagged"] += 1
    else:
        counts["flagged"] += 1


async def bulk(
    board: JobBoard, action: str, *, ids: list[str] | None = None, where: JobFilter | None = None
) -> dict[str, Any]:
    """Do ``action`` on the jobs of ``ids``, or on those matching ``where`` (newest first, at
    most :data:`BULK_LIMIT`).

    Returns:
        ``action``; ``scope`` (``"selected"`` or ``"matching"``); ``examined``, the jobs
        looked at; ``counts`` of what became of them (``cancelled``, ``flagged``,
        ``already flagged``, ``trashed``, ``reposted``, ``already ended``, ``missing``);
        ``more``, whether matching jobs were left for another request; and ``limit``.
    """
    counts: Counter[str] = Counter()
    examined = 0
    last: int | None = None
    if ids is not None:
        wanted = list(dict.fromkeys(ids))[:BULK_LIMIT]
        async for job in selected(board, wanted, counts):
            await _one(board, action, job, counts)
        examined = len(wanted)
    else:
        where = where or JobFilter()
        async for job in matching(board, where, BULK_LIMIT):
            examined += 1
            last = job.seq
            await _one(board, action, job, counts)
    # Reached the bound: is any matching job left below the last one done?
    more = last is not None and examined >= BULK_LIMIT
    if more and where is not None:
        more = bool((await board.search(where, before=last, limit=1)).jobs)
    return {
        "action": action,
        "scope": "selected" if ids is not None else "matching",
        "examined": examined,
        "counts": dict(counts),
        "more": more,
        "limit": BULK_LIMIT,
    }
