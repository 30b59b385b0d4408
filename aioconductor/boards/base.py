"""The `JobBoard` contract that every backend keeps.

The public verbs validate their input, check that the board is open and call the backend's
``_``-prefixed primitives, which do the one atomic change each verb stands for. What does not
need the backend lives once, in this class and the parts it is made of: posting
(:mod:`~aioconductor.boards._posting`: payload and option checks), the verbs that end a claim
(:mod:`~aioconductor.boards._endings`), notifications and waits
(:mod:`~aioconductor.boards._notifications`) and the conductor registry
(:mod:`~aioconductor.boards._conductors`).

Semantics every backend keeps (the conformance suite in ``tests/boards`` checks them):

- One owner per claim. The fencing ``token`` is strictly increasing per job, bumped on every
  claim, and 1 on a job's first claim. ``renew``, ``consume``, ``retry``, ``release``,
  ``abandon`` and ``trash`` with a claim whose owner or token is not the job's current one raise
  ``ClaimLost`` and change nothing. A claim whose lease expired stays valid until another owner
  claims the job: its token is still the current one.
- ``attempts`` counts claims less those given back (``release``, ``retry``). Claims and
  ``iterjobs`` follow one order: higher priority first, then post order (a per-board sequence,
  never a timestamp).
- A job is claimable when it is ``UNCLAIMED``, ``SCHEDULED`` with its ``not_before`` passed, or
  ``CLAIMED`` with its lease expired.
- A key is held by one job of the namespace, whatever its state, until that job is purged; a
  post whose key is held writes nothing and hands back the holder (check and insert are one
  atomic step).
- Cancels and concurrency limits: see :mod:`~aioconductor.boards._cancelling` and
  :mod:`~aioconductor.boards._limiting`; search and paging: :mod:`~aioconductor.boards._searching`.
"""

from __future__ import annotations

import abc
import itertools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Self, Unpack

from pydantic import BaseModel

from aioconductor._checks import check_lease
from aioconductor._lifecycle import Lifecycle
from aioconductor._payload import validate_key
from aioconductor._payload import validate_name
from aioconductor._urls import BOARD_OPTIONS
from aioconductor._urls import ParsedURL
from aioconductor._urls import float_option
from aioconductor._urls import int_option
from aioconductor._urls import lease_option
from aioconductor._urls import validate_namespace
from aioconductor.boards._cancelling import Cancels
from aioconductor.boards._conductors import ConductorRegistry
from aioconductor.boards._endings import ClaimEndings
from aioconductor.boards._limiting import Limits
from aioconductor.boards._notifications import Notifications
from aioconductor.boards._posting import PostOptions
from aioconductor.boards._posting import post_spec
from aioconductor.boards._purging import Purging
from aioconductor.boards._searching import Searching
from aioconductor.boards._support import EncodedObject
from aioconductor.boards._support import PostSpec
from aioconductor.boards._support import Subscription
from aioconductor.boards._support import lost_message
from aioconductor.boards._support import unclaimable_message
from aioconductor.boards._ticking import Ticks
from aioconductor.errors import BoardClosed
from aioconductor.errors import BoardError
from aioconductor.errors import ConfigurationError
from aioconductor.errors import PayloadError
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.models import JobState

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "MAX_BATCH",
    "MAX_POST_BATCH",
    "EncodedObject",
    "JobBoard",
    "PostOptions",
    "PostSpec",
    "Subscription",
    "lost_message",
    "unclaimable_message",
]

DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20
DEFAULT_LEASE = 30.0
#: The most jobs one ``claim_batch`` takes (bounds one statement's or script's work).
MAX_BATCH = 256
#: The most jobs one ``post_many`` takes (bounds one transaction, pipeline or statement).
MAX_POST_BATCH = 10_000


class JobBoard(
    Lifecycle,
    Notifications,
    ClaimEndings,
    Cancels,
    Limits,
    Purging,
    Searching,
    Ticks,
    ConductorRegistry,
):
    """An async job board. Open it with ``async with open_board(url) as board``.

    Args:
        namespace: isolates this application's jobs from another's on the same backend.
        max_payload_bytes: the largest encoded ``args`` (or ``result``) the board accepts.
        lease: the default lease of a claim, in seconds.
        poll_interval: how often ``stream()`` sweeps for jobs that became claimable without a
            push (expired leases, delays passed, posts from processes it cannot hear).
        migrate: create or upgrade what the backend needs (tables, topics) when connecting,
            the default. False for read-only tools: nothing is created or written, and a
            backend whose schema is missing or older refuses to connect with
            ``ConfigurationError`` (run ``aioconductor migrate`` first).
    """

    def __init__(
        self,
        *,
        namespace: str = "default",
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        lease: float = DEFAULT_LEASE,
        poll_interval: float = 1.0,
        migrate: bool = True,
    ) -> None:
        Lifecycle.__init__(self)
        Notifications.__init__(self)
        if poll_interval <= 0 or max_payload_bytes <= 0:
            raise ConfigurationError("poll_interval and max_payload_bytes must be positive")
        self.namespace = validate_namespace(namespace)
        self.max_payload_bytes = max_payload_bytes
        self.lease = check_lease(lease)
        self.poll_interval = float(poll_interval)
        self.migrate = bool(migrate)

    closed_error = BoardClosed
    kind = "board"

    url_options: frozenset[str] = BOARD_OPTIONS
    #: None so far: a store's options are its board's too.
    ignored_url_options: frozenset[str] = frozenset()

    @classmethod
    def from_url(cls, parsed: ParsedURL, **kwargs: Any) -> Self:
        """Build the board for a parsed URL (``open_board`` calls this); not yet connected."""
        kwargs.setdefault("namespace", parsed.namespace)
        options = parsed.options
        kwargs.setdefault(
            "max_payload_bytes",
            int_option(options, "max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES),
        )
        kwargs.setdefault("lease", lease_option(options, "lease", DEFAULT_LEASE))
        kwargs.setdefault("poll_interval", float_option(options, "poll_interval", 1.0))
        return cls(**kwargs)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} namespace={self.namespace!r}>"

    def _closing(self) -> None:
        self._end_waits()

    # -- producing -----------------------------------------------------------------------------

    async def post(
        self,
        name: str,
        flow: str,
        args: Mapping[str, Any] | BaseModel | None = None,
        *,
        key: str | None = None,
        **options: Unpack[PostOptions],
    ) -> Job:
        """Post a job: the flow registered as ``flow``, to be built and run with ``args``.

        Args:
            name: a label for people (1 to 255 characters).
            flow: the name the conductors' flow registry knows the flow by.
            args: a JSON object (or a pydantic model, dumped in JSON mode); the flow factory
                and the flow's tasks receive it by name.
            key: an idempotency key (1 to 255 characters, no control characters): if a job on
                the board holds it, whatever its state, nothing is written and that job is
                returned. A key is free again once its job is purged. :meth:`get_or_post`
                says which happened.
            **options: the post's options (:class:`PostOptions`), below; all keywords.

        Keyword Args:
            priority (int): higher runs first; equal priorities run in post order. Default 0.
            max_attempts (int): how many claims the job gets; the next claim trashes it.
                Default 3.
            delay (float | None): seconds from now before the job may be claimed.
            not_before (float | None): epoch seconds before which the job may not be claimed.
            headers (Mapping[str, str] | None): strings carried with the job but not given to
                its flow (a trace context, a correlation id); at most 8 KiB as JSON.
            retry (RetryPolicy | None): run the job again, later, when its flow ends
                ``REVERTED`` or ``FAILURE`` (it wins over the policy its flow was registered
                with).
            limit_key (str | None): the fleet-wide concurrency limit the job counts against:
                while as many jobs with this key are claimed as :meth:`set_limit` allows,
                claims pass this job over (a key without a limit set limits nothing).

        Returns:
            The job as stored (``UNCLAIMED``, or ``SCHEDULED`` when delayed), or the job
            holding ``key``.

        Raises:
            PayloadError: bad name, flow, args, key or option; nothing was written.
        """
        self._check_open()
        limit = self.max_payload_bytes
        return await self._post(post_spec(name, flow, args, limit, key=key, **options))

    async def get_or_post(
        self,
        name: str,
        flow: str,
        args: Mapping[str, Any] | BaseModel | None = None,
        *,
        key: str,
        **options: Unpack[PostOptions],
    ) -> tuple[Job, bool]:
        """Post a job with the idempotency ``key`` unless a job holds it already.

        The arguments are those of :meth:`post`; ``key`` is required.

        Returns:
            ``(job, created)``: the new job and True, or the job holding ``key`` (in whatever
            state it is) and False, in which case nothing was written.

        Raises:
            PayloadError: bad name, flow, args, key or option; nothing was written.
        """
        self._check_open()
        if key is None:
            raise PayloadError("get_or_post needs a key (post() posts without one)")
        spec = post_spec(name, flow, args, self.max_payload_bytes, key=key, **options)
        job = await self._post(spec)
        return job, job.id == spec.id

    async def post_many(
        self,
        flow: str,
        args: Iterable[Mapping[str, Any] | BaseModel | None],
        *,
        name: str | None = None,
        keys: Iterable[str | None] | None = None,
        **options: Unpack[PostOptions],
    ) -> list[Job]:
        """Post one job of ``flow`` for each item of ``args``, in order (their ``seq`` follows
        it), in one round trip on the SQLite, Redis and PostgreSQL boards.

        Every item is checked before anything is written: one bad item and nothing is posted.
        The options are those of :meth:`post`, for every job; ``name`` defaults to ``flow``.
        ``keys``, when given, holds one idempotency key (or None) per item: an item whose key
        is held (by a job on the board, or by an earlier item) is not posted, and its place in
        the result holds the job that holds the key.

        Returns:
            The jobs as stored, in the order of ``args``.

        Raises:
            PayloadError: a bad item or option; nothing was written.
            BackendUnavailable: the backend failed; on Redis some of the jobs may exist (each
                is posted under an id of its own, so nothing is posted twice).
        """
        self._check_open()
        label = flow if name is None else name
        items = list(itertools.islice(args, MAX_POST_BATCH + 1))
        if len(items) > MAX_POST_BATCH:
            raise PayloadError(f"post_many takes at most {MAX_POST_BATCH:,} jobs a call")
        item_keys: list[str | None] = [None] * len(items)
        if keys is not None:
            if isinstance(keys, (str, bytes)):
                raise PayloadError("keys must be one key (or None) per item, not one string")
            item_keys = list(itertools.islice(keys, len(items) + 1))
            if len(item_keys) != len(items):
                many = "more" if len(item_keys) > len(items) else str(len(item_keys))
                raise PayloadError(
                    f"post_many got {len(items)} args and {many} keys: one key (or None) each"
                )
        limit = self.max_payload_bytes
        specs = [
            post_spec(label, flow, item, limit, key=key, **options)
            for item, key in zip(items, item_keys, strict=True)
        ]
        return await self._post_many(specs) if specs else []

    # -- claiming ------------------------------------------------------------------------------

    def _lease(self, lease: float | None) -> float:
        return self.lease if lease is None else check_lease(lease)

    async def claim(self, job_id: str, owner: str, *, lease: float | None = None) -> Claim:
        """Claim one job for ``owner`` for ``lease`` seconds.

        Raises:
            JobNotFound: no such job.
            UnclaimableJob: another owner holds a live claim, the job is finished, or not due.
        """
        self._check_open()
        validate_name("owner", owner)
        job = await self._claim(str(job_id), owner, self._lease(lease))
        assert job.claim is not None
        return job.claim

    async def claim_next(
        self, owner: str, *, lease: float | None = None
    ) -> tuple[Job, Claim] | None:
        """Claim the best claimable job (priority, then post order), or return None if none is."""
        self._check_open()
        validate_name("owner", owner)
        job = await self._claim_next(owner, self._lease(lease))
        if job is None:
            return None
        assert job.claim is not None
        return job, job.claim

    async def claim_batch(
        self, owner: str, limit: int, *, lease: float | None = None
    ) -> list[tuple[Job, Claim]]:
        """Claim up to ``limit`` of the best claimable jobs at once (in one round trip where
        the backend can), in claim order; an empty list if none is claimable.

        A conductor with several free slots fills them with one call instead of one each.
        """
        seconds, limit = self._claim_batch_args(owner, limit, lease)
        jobs = await self._claim_batch(owner, seconds, limit)
        self._check_claimed(jobs, limit)
        claimed: list[tuple[Job, Claim]] = []
        for job in jobs:
            assert job.claim is not None
            claimed.append((job, job.claim))
        return claimed

    def _claim_batch_args(self, owner: str, limit: int, lease: float | None) -> tuple[float, int]:
        """``claim_batch``'s checks (the board open, the owner, the limit): the lease's seconds
        and the limit to claim, capped at :data:`MAX_BATCH`."""
        self._check_open()
        validate_name("owner", owner)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"limit must be a positive integer, got {limit!r}")
        return self._lease(lease), min(limit, MAX_BATCH)

    def _check_claimed(self, jobs: Sequence[object], limit: int) -> None:
        """Refuse a backend's claim of more than ``limit`` jobs (a bug: callers size their
        slots by the limit)."""
        if len(jobs) > limit:
            raise BoardError(f"{type(self).__name__} claimed {len(jobs)} jobs, asked for {limit}")

    async def renew(self, claim: Claim, *, lease: float | None = None) -> Claim:
        """Extend the claim's lease to ``lease`` seconds from now (same token).

        Raises:
            ClaimLost: the claim is not the job's current one.
        """
        self._check_open()
        return await self._renew(claim, self._lease(lease))

    # -- reading -------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        """The job with that id.

        Raises:
            JobNotFound: no such job.
        """
        self._check_open()
        return await self._get(str(job_id))

    async def get_by_key(self, key: str) -> Job:
        """The job holding the idempotency ``key``.

        Raises:
            JobNotFound: no job holds it (never posted, or its job was purged).
            PayloadError: ``key`` is not a valid key.
        """
        self._check_open()
        return await self._get_by_key(validate_key(key))

    async def iterjobs(self, *, state: JobState | None = None) -> AsyncGenerator[Job, None]:
        """Every job (or every job in ``state``), higher priority first, then in post order.

        ``state=UNCLAIMED`` includes scheduled jobs whose time has come.
        """
        self._check_open()
        async for job in self._iterjobs(None if state is None else JobState(state)):
            yield job

    async def job_count(self, *, state: JobState | None = None) -> int:
        """How many jobs there are (in ``state``, counted as :meth:`iterjobs` would list them)."""
        self._check_open()
        return await self._job_count(None if state is None else JobState(state))

    async def find_owner(self, job_id: str) -> str | None:
        """The owner of the job's live claim, or None when nobody holds it."""
        job = await self.get(job_id)
        if job.state is JobState.CLAIMED and job.claim is not None:
            if job.claim.expires_at > time.time():
                return job.claim.owner
        return None

    # -- backend primitives --------------------------------------------------------------------

    @abc.abstractmethod
    async def _post(self, spec: PostSpec) -> Job: ...

    @abc.abstractmethod
    async def _claim(self, job_id: str, owner: str, lease: float) -> Job: ...

    @abc.abstractmethod
    async def _claim_next(self, owner: str, lease: float) -> Job | None: ...

    async def _post_many(self, specs: list[PostSpec]) -> list[Job]:
        """The jobs of ``specs`` in order; one ``_post`` each unless a backend does better."""
        return [await self._post(spec) for spec in specs]

    async def _claim_batch(self, owner: str, lease: float, limit: int) -> list[Job]:
        """Up to ``limit`` claims; one ``_claim_next`` each unless a backend does better."""
        jobs: list[Job] = []
        while len(jobs) < limit:
            job = await self._claim_next(owner, lease)
            if job is None:
                break
            jobs.append(job)
        return jobs

    @abc.abstractmethod
    async def _renew(self, claim: Claim, lease: float) -> Claim: ...

    @abc.abstractmethod
    async def _get(self, job_id: str) -> Job: ...

    @abc.abstractmethod
    async def _get_by_key(self, key: str) -> Job: ...

    @abc.abstractmethod
    def _iterjobs(self, state: JobState | None) -> AsyncIterator[Job]: ...

    @abc.abstractmethod
    async def _job_count(self, state: JobState | None) -> int: ...
