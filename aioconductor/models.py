"""The job model shared by every board: jobs, their states, claims and notifications.

Times are seconds since the epoch (UTC) as floats, read from the board's clock: the process clock
for the memory and SQLite boards, the server's clock for the server backends.
"""

from __future__ import annotations

import enum
import math
import random
from typing import Any, Protocol

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field

__all__ = [
    "Claim",
    "ConductorInfo",
    "EndedCount",
    "Job",
    "JobFilter",
    "JobNotification",
    "JobPage",
    "JobState",
    "LimitInfo",
    "NotificationKind",
    "Outcome",
    "RetryPolicy",
    "claimable",
]

#: How many of its retried runs' failures a job keeps (the latest ones).
MAX_KEPT_FAILURES = 5


class JobState(enum.StrEnum):
    """Where a job is in its life."""

    #: Posted with a ``not_before`` in the future; claimable once that time has passed.
    SCHEDULED = "SCHEDULED"
    #: Waiting for a conductor.
    UNCLAIMED = "UNCLAIMED"
    #: Held by an owner until its lease expires (then claimable again).
    CLAIMED = "CLAIMED"
    #: Consumed: the flow ran to an end; ``outcome`` says which.
    COMPLETE = "COMPLETE"
    #: Given up: never offered again; ``trash_reason`` says why.
    TRASHED = "TRASHED"

    @property
    def is_final(self) -> bool:
        """Whether a job in this state will never change again."""
        return self in (JobState.COMPLETE, JobState.TRASHED)


class Outcome(enum.StrEnum):
    """How a consumed job's flow ended."""

    SUCCESS = "SUCCESS"
    #: A task failed and the flow was reverted cleanly.
    REVERTED = "REVERTED"
    #: A task failed and reverting it failed too.
    FAILURE = "FAILURE"
    #: Cancelled (``board.cancel``): ended before it ran, or stopped and its tasks reverted.
    CANCELLED = "CANCELLED"


class RetryPolicy(BaseModel):
    """Run a job again, later, when its flow ends ``REVERTED`` or ``FAILURE``.

    Retry ``k`` (1 for the first) is scheduled ``min(max_delay, base * factor ** (k - 1))``
    seconds after the run ended, scaled by a random factor in ``1 ± jitter``. ``retries=N``
    means at most ``N + 1`` runs in all (unlike the engine's ``Times(n)``, which counts every
    attempt: ``Times(3)`` is three in all). When the retries are spent the job is consumed
    with its last outcome.

    Attributes:
        retries: how many times the job may run again after its first run (0 to 1,000).
        base: the first retry's delay, in seconds.
        factor: how much each delay grows over the one before (1 keeps it constant).
        max_delay: the longest delay, in seconds.
        jitter: the spread of the random scaling, from 0 (none) to under 1.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    retries: int = Field(ge=0, le=1000)
    base: float = Field(default=1.0, ge=0, le=86_400 * 365, allow_inf_nan=False)
    factor: float = Field(default=2.0, ge=1, le=1000, allow_inf_nan=False)
    max_delay: float = Field(default=600.0, ge=0, le=86_400 * 365, allow_inf_nan=False)
    jitter: float = Field(default=0.1, ge=0, lt=1, allow_inf_nan=False)

    def delay(self, retry: int, rand: float | None = None) -> float:
        """The delay in seconds before retry number ``retry`` (1 for the first).

        Args:
            retry: the retry's number, from 1.
            rand: a number in [0, 1) choosing the jitter; a random one when None.
        """
        exponent = max(0, retry - 1)
        # Compared in logs: factor ** exponent overflows a float long before retries run out.
        if self.base == 0:
            raw = 0.0
        elif exponent * math.log(self.factor) >= math.log(self.max_delay / self.base or 1e-300):
            raw = self.max_delay
        else:
            raw = min(self.max_delay, self.base * self.factor**exponent)
        spread = (2 * (random.random() if rand is None else rand) - 1) * self.jitter
        return raw * (1 + spread)


class Claim(BaseModel):
    """Proof of ownership of one job, handed out by ``claim`` and checked by every verb after it.

    ``token`` is the fencing token: strictly increasing per job, bumped on every claim. A board
    refuses a verb whose token is not the job's current one with ``ClaimLost``.
    """

    model_config = ConfigDict(frozen=True)

    job_id: str
    owner: str
    token: int
    expires_at: float
    #: The job was cancelled while claimed (``board.cancel``): its holder is to stop the flow,
    #: revert what it did and consume the job ``CANCELLED``. Set on the claims that ``claim``
    #: and ``renew`` hand out once the job is flagged.
    cancel_requested: bool = False

    def __repr__(self) -> str:
        return f"Claim(job_id={self.job_id!r}, owner={self.owner!r}, token={self.token})"


class Job(BaseModel):
    """A unit of work on a board: which flow to run, with which arguments, and where it stands."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    flow: str
    args: dict[str, Any] = Field(default_factory=dict)
    #: The job's idempotency key, if it was posted with one: no other job on the board holds it
    #: until this one is purged.
    key: str | None = None
    priority: int = 0
    #: Post order on this board: a per-board sequence, used to break priority ties.
    seq: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    not_before: float | None = None
    #: How many claims the job had, less those given back (released by their owner on
    #: purpose, or retried under its retry policy): the runs that ended without a word, plus
    #: the current one.
    attempts: int = 0
    max_attempts: int = 3
    #: How many claims were given back by their owner on purpose (at most ``max_attempts``
    #: count; later ones spend their attempt).
    releases: int = 0
    #: How many runs were abandoned after a storage or internal failure (each spent an attempt).
    abandons: int = 0
    #: How many times a run ended ``REVERTED``/``FAILURE`` and was scheduled again.
    retries: int = 0
    #: The job's retry policy, if it has one.
    retry: RetryPolicy | None = None
    #: The failures of the latest retried runs, oldest first (at most ``MAX_KEPT_FAILURES``).
    failures: list[dict[str, Any]] = Field(default_factory=list)
    state: JobState = JobState.UNCLAIMED
    claim: Claim | None = None
    outcome: Outcome | None = None
    result: dict[str, Any] | None = None
    trash_reason: str | None = None
    #: Why the job was cancelled, once ``board.cancel`` was called on it while it was not
    #: final: it ended ``CANCELLED`` at once, or (claimed) its owner is asked to stop it.
    cancel_reason: str | None = None
    #: The fleet-wide concurrency limit the job counts against (``board.set_limit``).
    limit_key: str | None = None
    #: Metadata carried with the job but not given to its flow: a trace context
    #: (``traceparent``), a correlation id, a tenant. Set at ``post``; strings only.
    headers: dict[str, str] = Field(default_factory=dict)

    @property
    def owner(self) -> str | None:
        """The owner of the current claim, if any (expired or not)."""
        return self.claim.owner if self.claim is not None else None

    @property
    def cancel_requested(self) -> bool:
        """Whether the job was cancelled and has not ended yet: its owner is to stop it, and
        whoever claims it next reverts it instead of running it."""
        return self.cancel_reason is not None and not self.state.is_final

    def is_claimable(self, now: float) -> bool:
        """Whether ``claim`` could take this job at board time ``now``."""
        return claimable(self, now)


class ClaimState(Protocol):
    """What decides whether a job is claimable: a ``Job``, or a board's own record of one."""

    @property
    def state(self) -> JobState: ...

    @property
    def not_before(self) -> float | None: ...

    @property
    def claim(self) -> Claim | None: ...


def claimable(job: ClaimState, now: float) -> bool:
    """Whether a claim could take ``job`` at board time ``now``: it is ``UNCLAIMED``,
    ``SCHEDULED`` with its ``not_before`` passed, or ``CLAIMED`` with its lease expired."""
    if job.state is JobState.UNCLAIMED:
        return True
    if job.state is JobState.SCHEDULED:
        return job.not_before is None or job.not_before <= now
    if job.state is JobState.CLAIMED:
        return job.claim is not None and job.claim.expires_at <= now
    return False


class NotificationKind(enum.StrEnum):
    """Why a job became claimable, or (``CANCEL``) why its owner must act."""

    POSTED = "posted"
    ABANDONED = "abandoned"
    EXPIRED = "expired"
    DUE = "due"
    #: Already claimable when the stream started, or found by a sweep.
    WAITING = "waiting"
    #: A job counted against a concurrency limit let go of its slot (or the limit was raised
    #: or removed): jobs of that limit key that were skipped may be claimable now.
    SLOT_FREED = "slot_freed"
    #: The claimed job was cancelled: its owner is to stop it (no job became claimable).
    CANCEL = "cancel"

    @property
    def is_claimable(self) -> bool:
        """Whether a notification of this kind may announce a claimable job."""
        return self is not NotificationKind.CANCEL


class JobNotification(BaseModel):
    """A board's word that a job became claimable (or, kind ``CANCEL``, that its owner is
    asked to stop it)."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    kind: NotificationKind
    priority: int = 0


class Searched(Protocol):
    """What a :class:`JobFilter` reads of a job: a ``Job``, or a board's own record of one."""

    @property
    def state(self) -> JobState: ...

    @property
    def outcome(self) -> Outcome | None: ...

    @property
    def flow(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def key(self) -> str | None: ...


class JobFilter(BaseModel):
    """Which jobs ``board.search`` finds: every field given must match (none: every job).

    Attributes:
        state: the job's state as readers see it (``UNCLAIMED`` includes a scheduled job
            whose time came, as ``iterjobs`` lists it).
        outcome: a ``COMPLETE`` job's outcome.
        flow: the flow's name, exactly.
        text: a piece of the job's name or key, case-insensitive (``%`` and ``_`` are plain
            characters), 1 to 255 characters.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    state: JobState | None = None
    outcome: Outcome | None = None
    flow: str | None = None
    text: str | None = Field(default=None, min_length=1, max_length=255)

    def matches(self, job: Searched, state: JobState | None = None) -> bool:
        """Whether ``job`` matches.

        Args:
            job: a ``Job``, or a board's own record of one.
            state: the job's state as readers see it, where that is not ``job.state`` (a
                record's scheduled job whose time came); None: ``job.state``.
        """
        if self.state is not None and (state or job.state) is not self.state:
            return False
        if self.outcome is not None and job.outcome is not self.outcome:
            return False
        if self.flow is not None and job.flow != self.flow:
            return False
        if self.text is not None:
            needle = self.text.casefold()
            return needle in job.name.casefold() or needle in (job.key or "").casefold()
        return True


class JobPage(BaseModel):
    """One page of ``board.search``: jobs newest first (highest ``seq`` first)."""

    model_config = ConfigDict(frozen=True)

    jobs: list[Job]
    #: Give it as ``before=`` for the next page; None when this page is the last.
    next_before: int | None = None


class EndedCount(BaseModel):
    """How many jobs ended in one time bucket with one ending, as ``board.ended_counts``
    reports them."""

    model_config = ConfigDict(frozen=True)

    #: The bucket's start, epoch seconds (a multiple of the bucket's width).
    start: float
    #: The outcome of a ``COMPLETE`` job (``SUCCESS``, ``REVERTED``, ``FAILURE``,
    #: ``CANCELLED``), or ``TRASHED``.
    ending: str
    count: int


class LimitInfo(BaseModel):
    """A fleet-wide concurrency limit, as ``board.limits()`` reports it."""

    model_config = ConfigDict(frozen=True)

    #: The limit key jobs are posted with (``post(..., limit_key=)``).
    key: str
    #: At most this many jobs with the key are ``CLAIMED`` at once (0 pauses them).
    limit: int
    #: How many jobs with the key hold a live claim now.
    claimed: int


class ConductorInfo(BaseModel):
    """A conductor registered on a board, as ``board.conductors()`` reports it."""

    model_config = ConfigDict(frozen=True)

    owner: str
    name: str
    started_at: float
    heartbeat_at: float
    expires_at: float
    #: Free-form figures the conductor publishes (running jobs, capacity, ...).
    meta: dict[str, Any] = Field(default_factory=dict)
