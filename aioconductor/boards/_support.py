"""What a board backend is handed and hands back, beside the job model itself.

``PostSpec`` is a validated ``post``; ``EncodedObject`` a JSON object checked and encoded once
for every backend (a failed run's ``failure``); ``Subscription`` carries pushed notifications to one
``stream()``; the message helpers keep every backend's refusals worded alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream

from aioconductor._fastjson import decode
from aioconductor._models import build
from aioconductor._models import evolve
from aioconductor._payload import decode_json
from aioconductor.models import Claim
from aioconductor.models import ConductorInfo
from aioconductor.models import Job
from aioconductor.models import JobNotification
from aioconductor.models import JobState
from aioconductor.models import Outcome
from aioconductor.models import RetryPolicy
from aioconductor.models import claimable

__all__ = [
    "JOB_COLUMNS",
    "EncodedObject",
    "PostSpec",
    "Subscription",
    "conductor_from_row",
    "job_from_row",
    "listed_jobs",
    "lost_message",
    "unclaimable_message",
    "visible",
]

#: Jobs read per statement by a SQL board's ``iterjobs()``.
PAGE = 500

#: The columns a SQL backend selects to build a ``Job`` with :func:`job_from_row`, in order.
JOB_COLUMNS = (
    "id, name, flow, args, priority, seq, created_at, updated_at, not_before, attempts,"
    " max_attempts, token, state, owner, expires_at, outcome, result, trash_reason, headers,"
    " releases, abandons, retries, retry, failures, job_key, cancel_reason, limit_key"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PostSpec:
    """A validated ``post``: what the backend writes, with the args already encoded."""

    #: The new job's id (a uuid made by the board before any backend sees the post, so the
    #: board can tell a created job from the holder of a taken key).
    id: str
    name: str
    flow: str
    args: dict[str, Any]
    args_json: bytes
    priority: int
    max_attempts: int
    #: Seconds to wait before the job becomes claimable (0 for none); backends add it to their
    #: own clock, so a delay means the same on every machine.
    delay: float
    #: An absolute time (epoch seconds) before which the job is not claimable, if one was given.
    not_before: float | None
    #: The job's headers, checked, and as JSON text.
    headers: dict[str, str] = field(default_factory=dict)
    headers_json: bytes = b"{}"
    #: The job's retry policy, and as JSON text.
    retry: RetryPolicy | None = None
    retry_json: bytes | None = None
    #: The idempotency key, checked: the backend writes nothing for this spec if a job on the
    #: board (or an earlier spec of the same call) holds it, and hands back that job instead.
    key: str | None = None
    #: The concurrency limit key, checked: a claim skips the job while the key's limit is full.
    limit_key: str | None = None


@dataclass(frozen=True, slots=True)
class EncodedObject:
    """A JSON object checked by the board: as a reader will get it back, and as JSON."""

    #: The object decoded from :attr:`json` (a tuple is a list here, and so on).
    value: dict[str, Any]
    #: Its compact JSON text, UTF-8 encoded.
    json: bytes


class Subscription:
    """The receiving end of a board's push notifications, for one ``stream()``.

    Backends push with :meth:`push`, which never blocks: when the buffer is full the notification
    is dropped and :attr:`lost` is set, and the stream then re-reads every claimable job.
    """

    def __init__(self, max_buffer: int = 10_000) -> None:
        send: MemoryObjectSendStream[JobNotification]
        receive: MemoryObjectReceiveStream[JobNotification]
        send, receive = anyio.create_memory_object_stream[JobNotification](max_buffer)
        self._send = send
        self._receive = receive
        #: Whether a notification was dropped since the last full re-read.
        self.lost = False
        #: Whether :meth:`close` was called: the stream is over.
        self.ended = False

    def push(self, note: JobNotification) -> None:
        """Deliver ``note`` without blocking (dropped, and ``lost`` set, if the buffer is full)."""
        try:
            self._send.send_nowait(note)
        except anyio.WouldBlock:
            self.lost = True
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def receive(self) -> JobNotification:
        """The next notification; raises ``anyio.EndOfStream`` once closed and drained."""
        return await self._receive.receive()

    def close(self) -> None:
        """Stop accepting notifications; ``receive`` ends the stream once drained."""
        self.ended = True
        self._send.close()

    def aclose_receiver(self) -> None:
        """Release the receiving end."""
        self._receive.close()

    async def open(self) -> None:
        """Open what feeds the subscription (a connection); nothing for in-process pushes."""

    async def aclose_transport(self) -> None:
        """Release what :meth:`open` opened; nothing for in-process pushes."""


def lost_message(claim: Claim, verb: str, state: JobState, current: Claim | None) -> str:
    """Why ``verb`` with ``claim`` was refused, for a ``ClaimLost`` message."""
    if state is not JobState.CLAIMED or current is None:
        why = f"the job is {state}"
    elif current.owner != claim.owner:
        why = f"it is now held by {current.owner!r} with token {current.token}"
    else:
        why = f"the current token is {current.token}"
    return (
        f"{verb} of job {claim.job_id} by {claim.owner!r} with token {claim.token} refused: {why}"
    )


def unclaimable_message(job: Job, now: float) -> str:
    """Why ``job`` cannot be claimed at board time ``now``, for an ``UnclaimableJob`` message."""
    if job.state is JobState.CLAIMED and job.claim is not None:
        left = job.claim.expires_at - now
        return f"job {job.id} is claimed by {job.claim.owner!r} for {left:.1f} s more"
    if job.state is JobState.SCHEDULED:
        left = (job.not_before or now) - now
        return f"job {job.id} is scheduled: claimable in {left:.1f} s"
    return f"job {job.id} is {job.state}: it cannot be claimed"


def _decode_or(text: str | bytes, empty: str, new: Callable[[], Any]) -> Any:
    """Decode JSON ``text``; the column's empty value (most rows hold it) as a new ``new()``
    without parsing it."""
    return new() if text == empty else decode(text)


#: The states and outcomes by their values: a dict look-up costs a fraction of the enum's call
#: (a value not in them still goes through the enum, which refuses it as before).
_STATES = {state.value: state for state in JobState}
_OUTCOMES = {outcome.value: outcome for outcome in Outcome}


def job_from_row(row: Sequence[Any]) -> Job:
    """A ``Job`` from a row of :data:`JOB_COLUMNS` (args, result, headers, retry and failures
    as JSON text)."""
    job_id, owner, state, cancel_reason = row[0], row[13], row[12], row[25]
    state = _STATES[state] if state in _STATES else JobState(state)
    claim = None
    if owner is not None:
        claim = build(
            Claim,
            job_id=job_id,
            owner=owner,
            token=row[11],
            expires_at=row[14],
            cancel_requested=cancel_reason is not None and not state.is_final,
        )
    outcome, result = row[15], row[16]
    return build(
        Job,
        id=job_id,
        name=row[1],
        flow=row[2],
        args=decode(row[3]),
        priority=row[4],
        seq=row[5],
        created_at=row[6],
        updated_at=row[7],
        not_before=row[8],
        attempts=row[9],
        max_attempts=row[10],
        state=state,
        claim=claim,
        outcome=None if outcome is None else _OUTCOMES.get(outcome) or Outcome(outcome),
        result=None if result is None else decode(result),
        trash_reason=row[17],
        headers=_decode_or(row[18], "{}", dict),
        releases=row[19],
        abandons=row[20],
        retries=row[21],
        retry=None if row[22] is None else RetryPolicy.model_validate_json(row[22]),
        failures=_decode_or(row[23], "[]", list),
        key=row[24],
        cancel_reason=cancel_reason,
        limit_key=row[26],
    )


async def listed_jobs(
    read_page: Callable[[int, int], Awaitable[Sequence[Sequence[Any]]]], now: float
) -> AsyncIterator[Job]:
    """The jobs a SQL board's ``iterjobs`` lists, as readers see them at ``now``.

    ``read_page(priority, seq)`` reads the next :data:`PAGE` rows of :data:`JOB_COLUMNS` in
    claim order after that key. Paging by (priority, seq), which never change, makes each page
    one short statement, so no connection is held while the caller handles a page, and no job
    is listed twice.
    """
    priority, seq = 2**31, 0
    while True:
        rows = await read_page(priority, seq)
        for row in rows:
            yield visible(job_from_row(row), now)
        if len(rows) < PAGE:
            return
        priority, seq = rows[-1][4], rows[-1][5]


def visible(job: Job, now: float) -> Job:
    """``job`` as readers see it at ``now``: a scheduled job whose time came is UNCLAIMED."""
    if job.state is JobState.SCHEDULED and claimable(job, now):
        return evolve(job, state=JobState.UNCLAIMED)
    return job


def conductor_from_row(row: Sequence[Any]) -> ConductorInfo:
    """A ``ConductorInfo`` from a row of (owner, name, started_at, heartbeat_at, expires_at,
    meta as JSON text)."""
    owner, name, started_at, heartbeat_at, expires_at, meta = row
    return ConductorInfo(
        owner=owner,
        name=name,
        started_at=started_at,
        heartbeat_at=heartbeat_at,
        expires_at=expires_at,
        meta=decode_json(meta),
    )
