"""``jobs`` and ``show``: jobs for a person (ISO 8601 times, human durations, a claim that is
over shown as past) or, with ``--json``, for a script (the job's fields, times as epoch
seconds)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from aioconductor.boards import JobBoard
from aioconductor.cli.jobids import resolve_job_id
from aioconductor.cli.output import echo
from aioconductor.cli.output import echo_json
from aioconductor.cli.output import table
from aioconductor.cli.progress import progress_lines
from aioconductor.cli.progress import read_progress
from aioconductor.cli.times import ago
from aioconductor.cli.times import human_duration
from aioconductor.cli.times import when
from aioconductor.models import Job
from aioconductor.models import JobState
from aioconductor.models import Outcome
from aioconductor.models import RetryPolicy

__all__ = ["cmd_jobs", "cmd_show", "job_lines", "outcome_text"]


def outcome_text(job: Job) -> str:
    """The outcome column: the outcome, the reason of a cancel or a trash, or a pending cancel."""
    if job.outcome is Outcome.CANCELLED:
        return f"CANCELLED: {job.cancel_reason}" if job.cancel_reason else "CANCELLED"
    if job.cancel_requested:
        return f"cancel requested: {job.cancel_reason}"
    return job.outcome or job.trash_reason or ""


def _row(job: Job, utc: bool) -> list[str]:
    return [
        job.id,
        job.state.value,
        str(job.priority),
        f"{job.attempts}/{job.max_attempts}",
        when(job.updated_at, utc=utc),
        job.flow[:30],
        job.name[:40],
        (job.key or "")[:40],
        outcome_text(job)[:60],
    ]


async def cmd_jobs(board: JobBoard, args: argparse.Namespace) -> int:
    """``jobs``: a table of the jobs (``updated``: each one's last change), or JSON lines."""
    state = JobState(args.state) if args.state else None
    if args.json:
        async for job in board.iterjobs(state=state):
            echo_json(job.model_dump_json())
        return 0
    rows = [_row(job, args.utc) async for job in board.iterjobs(state=state)]
    headers = ["id", "state", "prio", "try", "updated", "flow", "name", "key", "outcome"]
    table(headers, rows, right={2, 3})
    return 0


async def cmd_show(board: JobBoard, args: argparse.Namespace) -> int:
    """``show``: one job (by id, a unique prefix of one, or key), for a person or as JSON,
    with its progress as its store saved it (``--store``, else the board's URL where that
    backend has a store; opened read-only)."""
    if args.key is None:
        job = await board.get(await resolve_job_id(board, args.job_id))
    else:
        job = await board.get_by_key(args.key)
    now = time.time()
    progress = await read_progress(job, args.board, args.store, now=now)
    if args.json:
        shown = job.model_dump(mode="json")
        # Not a stored field: whether a cancel waits for the job's owner (or next claimer).
        shown["cancel_requested"] = job.cancel_requested
        shown["progress"] = progress
        echo_json(json.dumps(shown, indent=2, sort_keys=True))
        return 0
    lines = job_lines(job, now=now, utc=args.utc)
    width = max(len(label) for label, _ in lines) + 1
    for label, value in lines:
        echo(f"{label + ':':<{width}} {value}")
    for line in progress_lines(progress):
        echo(line)
    return 0


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _state(job: Job, now: float, utc: bool) -> str:
    if job.state is JobState.COMPLETE:
        return f"COMPLETE ({job.outcome})" if job.outcome else "COMPLETE"
    if job.state is JobState.SCHEDULED and job.not_before is not None:
        return (
            f"SCHEDULED: may run from {when(job.not_before, utc=utc)} ({ago(job.not_before, now)})"
        )
    if job.state is JobState.CLAIMED and job.claim is not None:
        return f"CLAIMED by {job.claim.owner}"
    return job.state.value


def _claim(job: Job, now: float, utc: bool) -> tuple[str, str] | None:
    """The claim line: held (lease to when), lapsed, or past (``last claim``)."""
    claim = job.claim
    if claim is None:
        return None
    lease = when(claim.expires_at, utc=utc)
    if job.state is JobState.CLAIMED:
        if claim.expires_at > now:
            left = human_duration(claim.expires_at - now)
            return (
                "claim",
                f"held by {claim.owner}, token {claim.token}, lease to {lease} ({left} left)",
            )
        lapsed = f"{lease} ({ago(claim.expires_at, now)})"
        return (
            "claim",
            f"{claim.owner}, token {claim.token}, lease ran out at {lapsed}: the next claim takes "
            "the job over",
        )
    why = "the job ended" if job.state.is_final else "given back, or its lease ran out"
    return (
        "last claim",
        f"owner {claim.owner}, token {claim.token}; no longer held ({why}); its lease was to "
        f"run to {lease}",
    )


def _retry(policy: RetryPolicy) -> str:
    return (
        f"up to {policy.retries} retries, the first after {human_duration(policy.base)}, each "
        f"x{policy.factor:g}, at most {human_duration(policy.max_delay)} apart "
        f"(jitter {policy.jitter:.0%})"
    )


def job_lines(job: Job, *, now: float, utc: bool = False) -> list[tuple[str, str]]:
    """``show``'s lines for ``job`` as (label, value) at time ``now``: times in ISO 8601 (local,
    or UTC with ``utc``), durations for a person, a claim that is over shown as past."""
    lines: list[tuple[str, str]] = [
        ("id", job.id),
        ("name", job.name),
        ("flow", job.flow),
        ("state", _state(job, now, utc)),
    ]
    if job.key is not None:
        lines.append(("key", job.key))
    if job.limit_key is not None:
        lines.append(("limit key", job.limit_key))
    lines.append(("priority", str(job.priority)))
    spent = [
        f"{count} {what}"
        for count, what in (
            (job.releases, "given back"),
            (job.abandons, "abandoned"),
            (job.retries, "retried"),
        )
        if count
    ]
    attempts = f"{job.attempts} of {job.max_attempts}"
    lines.append(("attempts", f"{attempts} ({', '.join(spent)})" if spent else attempts))
    if job.retry is not None:
        lines.append(("retry", _retry(job.retry)))
    lines.append(("posted", f"{when(job.created_at, utc=utc)} ({ago(job.created_at, now)})"))
    if job.state.is_final:
        took = human_duration(max(0.0, job.updated_at - job.created_at))
        lines.append(("ended", f"{when(job.updated_at, utc=utc)} ({took} after it was posted)"))
    else:
        lines.append(("updated", f"{when(job.updated_at, utc=utc)} ({ago(job.updated_at, now)})"))
    claim = _claim(job, now, utc)
    if claim is not None:
        lines.append(claim)
    if job.cancel_requested:
        lines.append(("cancel", f"requested: {job.cancel_reason} (the job is to be reverted)"))
    elif job.outcome is Outcome.CANCELLED:
        lines.append(("cancelled", job.cancel_reason or "-"))
    if job.trash_reason is not None:
        lines.append(("trashed", job.trash_reason))
    lines.append(("args", _json(job.args)))
    if job.result is not None:
        lines.append(("result", _json(job.result)))
    for number, failure in enumerate(job.failures, start=1):
        lines.append((f"failure {number}", _json(failure)))
    if job.headers:
        lines.append(("headers", _json(job.headers)))
    return lines
