"""The `JobBoard` contract that every backend keeps.

The public verbs here validate their input, check that the board is open and call the backend's
``_``-prefixed primitives, which do the one atomic change each verb stands for. Everything that
does not need the backend (payload checks, ``stream``'s sweep loop, ``wait``, ``wait_for``) lives
here once.

Semantics every backend keeps (the conformance suite in ``tests/boards`` checks them):

- One owner per claim. The fencing ``token`` is strictly increasing per job and bumped on every
  claim. ``renew``, ``consume``, ``abandon`` and ``trash`` with a claim whose owner or token is not
  the job's current one raise ``ClaimLost`` and change nothing. A claim whose lease expired stays
  valid until another owner claims the job: its token is still the current one.
- ``attempts`` counts claims. Claims and ``iterjobs`` follow one order: higher priority first,
  then post order (a per-board sequence, never a timestamp).
- A job is claimable when it is ``UNCLAIMED``, ``SCHEDULED`` with its ``not_before`` passed, or
  ``CLAIMED`` with its lease expired.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from typing import Any, Self

import anyio

from aioconductor._checks import check_lease
from aioconductor._lifecycle import Lifecycle
from aioconductor._payload import encode_json, encode_object, finite_seconds, validate_name
from aioconductor._urls import (
    BOARD_OPTIONS,
    ParsedURL,
    float_option,
    int_option,
    lease_option,
    validate_namespace,
)
from aioconductor.boards._support import (
    PostSpec,
    Subscription,
    lost_message,
    unclaimable_message,
)
from aioconductor.errors import BoardClosed, BoardError, ConfigurationError, PayloadError
from aioconductor.models import (
    Claim,
    ConductorInfo,
    Job,
    JobNotification,
    JobState,
    Outcome,
    RetryPolicy,
)

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "MAX_BATCH",
    "MAX_POST_BATCH",
    "JobBoard",
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
#: The most a job's headers may weigh, as JSON.
MAX_HEADERS_BYTES = 8192


class JobBoard(Lifecycle):
    """An async job board. Open it with ``async with open_board(url) as board``.

    Args:
        namespace: isolates this application's jobs from another's on the same backend.
        max_payload_bytes: the largest encoded ``args`` (or ``result``) the board accepts.
        lease: the default lease of a claim, in seconds.
        poll_interval: how often ``stream()`` sweeps for jobs that became claimable without a
            push (expired leases, delays passed, posts from processes it cannot hear).
    """

    def __init__(
        self,
        *,
        namespace: str = "default",
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        lease: float = DEFAULT_LEASE,
        poll_interval: float = 1.0,
    ) -> None:
        super().__init__()
        if poll_interval <= 0 or max_payload_bytes <= 0:
            raise ConfigurationError("poll_interval and max_payload_bytes must be positive")
        self.namespace = validate_namespace(namespace)
        self.max_payload_bytes = max_payload_bytes
        self.lease = check_lease(lease)
        self.poll_interval = float(poll_interval)
        self._subscriptions: set[Subscription] = set()
        self._final_waiters: dict[str, anyio.Event] = {}

    closed_error = BoardClosed
    kind = "board"

    #: The library's own URL options, removed before the URL reaches a driver.
    url_options: frozenset[str] = BOARD_OPTIONS
    #: The store's URL options on this backend that the board does not read: accepted and
    #: ignored, so one URL serves both (none so far: a store's options are its board's too).
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
        # Open streams end and wait_for callers wake (to find the board closed).
        for subscription in list(self._subscriptions):
            subscription.close()
        for event in self._final_waiters.values():
            event.set()

    # -- producing -----------------------------------------------------------------------------

    async def post(
        self,
        name: str,
        flow: str,
        args: Mapping[str, Any] | None = None,
        *,
        priority: int = 0,
        max_attempts: int = 3,
        delay: float | None = None,
        not_before: float | None = None,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> Job:
        """Post a job: the flow registered as ``flow``, to be built and run with ``args``.

        Args:
            name: a label for people (1 to 255 characters).
            flow: the name the conductors' flow registry knows the flow by.
            args: a JSON object; the flow factory and the flow's tasks receive it by name.
            priority: higher runs first; equal priorities run in post order.
            max_attempts: how many claims the job gets; the next claim trashes it.
            delay: seconds from now before the job may be claimed.
            not_before: epoch seconds before which the job may not be claimed.
            headers: strings carried with the job but not given to its flow (a trace
                context, a correlation id); at most 8 KiB as JSON.
            retry: run the job again, later, when its flow ends ``REVERTED`` or ``FAILURE``
                (it wins over the policy its flow was registered with).

        Returns:
            The job as stored (``UNCLAIMED``, or ``SCHEDULED`` when delayed).

        Raises:
            PayloadError: bad name, flow, args or option; nothing was written.
        """
        self._check_open()
        spec = self._post_spec(
            name, flow, args, priority, max_attempts, delay, not_before, headers, retry
        )
        job = await self._post(spec)
        return job

    async def post_many(
        self,
        flow: str,
        args: Iterable[Mapping[str, Any] | None],
        *,
        name: str | None = None,
        priority: int = 0,
        max_attempts: int = 3,
        delay: float | None = None,
        not_before: float | None = None,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> list[Job]:
        """Post one job of ``flow`` for each item of ``args``, in order (their ``seq`` follows
        it), in one round trip on the SQLite, Redis and PostgreSQL boards.

        Every item is checked before anything is written: one bad item and nothing is posted.
        The options are those of :meth:`post`, for every job; ``name`` defaults to ``flow``.

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
        specs = [
            self._post_spec(
                label, flow, item, priority, max_attempts, delay, not_before, headers, retry
            )
            for item in items
        ]
        return await self._post_many(specs) if specs else []

    def _post_spec(
        self,
        name: str,
        flow: str,
        args: Mapping[str, Any] | None,
        priority: int,
        max_attempts: int,
        delay: float | None,
        not_before: float | None,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> PostSpec:
        validate_name("name", name)
        validate_name("flow name", flow)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise PayloadError(f"priority must be an int, got {priority!r:.80}")
        if not -(2**31) <= priority < 2**31:
            raise PayloadError(f"priority {priority} is out of range (a 32-bit signed int)")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise PayloadError(f"max_attempts must be an int, got {max_attempts!r:.80}")
        if not 1 <= max_attempts <= 1_000_000:
            raise PayloadError(f"max_attempts must be from 1 to 1,000,000, got {max_attempts}")
        if delay is not None and not_before is not None:
            raise PayloadError("give delay or not_before, not both")
        delay_s = 0.0 if delay is None else finite_seconds("delay", delay)
        at = None if not_before is None else finite_seconds("not_before", not_before)
        # Store what a reader will get back: decoding normalises tuples to lists and so on.
        data, decoded = encode_object(
            "the job's args", {} if args is None else args, self.max_payload_bytes
        )
        checked, headers_json = _check_headers(headers)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise PayloadError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        return PostSpec(
            name,
            flow,
            decoded,
            data,
            priority,
            max_attempts,
            delay_s,
            at,
            checked,
            headers_json,
            retry,
            None if retry is None else retry.model_dump_json().encode(),
        )

    # -- claiming ------------------------------------------------------------------------------

    def _lease(self, lease: float | None) -> float:
        if lease is None:
            return self.lease
        try:
            seconds = finite_seconds("lease", lease)
        except PayloadError as exc:
            raise ConfigurationError(str(exc)) from None
        if seconds == 0:
            raise ConfigurationError("lease must be a positive number of seconds, got 0")
        return seconds

    async def claim(self, job_id: str, owner: str, *, lease: float | None = None) -> Claim:
        """Claim one job for ``owner`` for ``lease`` seconds.

        Raises:
            JobNotFound: no such job.
            UnclaimableJob: another owner holds a live claim, the job is finished, or not due.
        """
        job = await self.claim_job(job_id, owner, lease=lease)
        assert job.claim is not None
        return job.claim

    async def claim_job(self, job_id: str, owner: str, *, lease: float | None = None) -> Job:
        """Like :meth:`claim`, returning the claimed job (its ``claim`` set)."""
        self._check_open()
        validate_name("owner", owner)
        return await self._claim(str(job_id), owner, self._lease(lease))

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
        self._check_open()
        validate_name("owner", owner)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"limit must be a positive integer, got {limit!r}")
        seconds = self._lease(lease)
        limit = min(limit, MAX_BATCH)
        jobs = await self._claim_batch(owner, seconds, limit)
        if len(jobs) > limit:  # a backend's bug: callers size their slots by the limit
            raise BoardError(f"{type(self).__name__} claimed {len(jobs)} jobs, asked for {limit}")
        claimed: list[tuple[Job, Claim]] = []
        for job in jobs:
            assert job.claim is not None
            claimed.append((job, job.claim))
        return claimed

    async def renew(self, claim: Claim, *, lease: float | None = None) -> Claim:
        """Extend the claim's lease to ``lease`` seconds from now (same token).

        Raises:
            ClaimLost: the claim is not the job's current one.
        """
        self._check_open()
        return await self._renew(claim, self._lease(lease))

    async def consume(
        self,
        claim: Claim,
        *,
        outcome: Outcome | str = Outcome.SUCCESS,
        result: Mapping[str, Any] | None = None,
    ) -> Job:
        """Mark the claimed job ``COMPLETE`` with its outcome and result.

        Raises:
            ClaimLost: the claim is not the job's current one (nothing changed).
            PayloadError: ``result`` is not a JSON object within ``max_payload_bytes``.
        """
        self._check_open()
        try:
            checked = Outcome(outcome)
        except ValueError:
            raise PayloadError(f"unknown outcome {outcome!r}") from None
        data, decoded = encode_object("the job's result", result or {}, self.max_payload_bytes)
        job = await self._consume(claim, checked, decoded, data)
        self._finished(job.id)
        return job

    async def abandon(self, claim: Claim) -> Job:
        """Give the job back: ``UNCLAIMED`` again, offered to every conductor. The run spent
        its attempt (a storage or internal failure): ``abandons`` counts it.

        Raises:
            ClaimLost: the claim is not the job's current one (nothing changed).
        """
        self._check_open()
        return await self._abandon(claim)

    async def release(self, claim: Claim) -> Job:
        """Give the job back without spending its attempt: its owner let go of it on purpose
        (a graceful stop past its drain timeout, a cancelled conductor).

        The job is ``UNCLAIMED`` at once, with ``attempts`` as before the claim and
        ``releases`` one more. Give-backs are capped: once a job had ``max_attempts`` of them,
        a release spends the attempt as :meth:`abandon` does (``abandons`` one more), so a job
        that keeps causing its own shutdown is still trashed in the end. One fenced step.

        Raises:
            ClaimLost: the claim is not the job's current one (nothing changed).
        """
        self._check_open()
        return await self._release(claim)

    async def retry(
        self, claim: Claim, *, delay: float, failure: Mapping[str, Any] | None = None
    ) -> Job:
        """Schedule the claimed job to run again in ``delay`` seconds: its run ended
        ``REVERTED`` or ``FAILURE`` and its retry policy has retries left.

        The job is ``SCHEDULED`` (``not_before`` is the board's now plus ``delay``), with
        ``attempts`` as before the claim, ``retries`` one more, and ``failure`` (the run's, as
        JSON) added to ``failures``, of which the latest ``MAX_KEPT_FAILURES`` are kept. One
        fenced step.

        Raises:
            ClaimLost: the claim is not the job's current one (nothing changed).
            PayloadError: a bad delay, or a failure that is not a JSON object within
                ``max_payload_bytes``; nothing changed.
        """
        self._check_open()
        seconds = finite_seconds("delay", delay)
        if failure is None:
            return await self._retry(claim, seconds, None, None)
        data, decoded = encode_object("the run's failure", failure, self.max_payload_bytes)
        return await self._retry(claim, seconds, decoded, data)

    async def trash(self, claim_or_id: Claim | str, *, reason: str) -> Job:
        """Give the job up for good: ``TRASHED`` with ``reason``, never offered again.

        With a claim, the claim must be current. With a job id (an operator's action), any job
        that is not finished is trashed, and whoever holds it loses the claim.

        Raises:
            ClaimLost: the claim is not the job's current one.
            JobNotFound: no such job.
            UnclaimableJob: the job (given by id) is already finished.
        """
        self._check_open()
        if not isinstance(reason, str):
            raise PayloadError("the trash reason must be a string")
        # Reasons often quote an exception's text: keep them, made safe for every backend.
        reason = reason[:4000].replace("\x00", "\\x00")
        reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")
        if isinstance(claim_or_id, Claim):
            job = await self._trash(claim_or_id.job_id, claim_or_id, reason)
        else:
            job = await self._trash(str(claim_or_id), None, reason)
        self._finished(job.id)
        return job

    # -- reading -------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        """The job with that id.

        Raises:
            JobNotFound: no such job.
        """
        self._check_open()
        return await self._get(str(job_id))

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

    # -- notifications -------------------------------------------------------------------------

    async def stream(self) -> AsyncGenerator[JobNotification, None]:
        """Notifications of jobs becoming claimable, for as long as the board is open.

        The stream starts with every job already claimable, then pushes posts and abandons as
        they happen, and sweeps every ``poll_interval`` for expired leases and delays that
        passed. Each call is an independent subscription; close it with ``aclose()`` (or iterate
        it inside ``contextlib.aclosing``).
        """
        self._check_open()
        async with self._subscribe() as subscription:
            notes, cursor = await self._sweep(None)
            for note in notes:
                yield note
            while not self._closed:
                pushed: JobNotification | None = None
                with anyio.move_on_after(self._sweep_delay()):
                    try:
                        pushed = await subscription.receive()
                    except anyio.EndOfStream:
                        return
                if pushed is not None:
                    yield pushed
                    if not subscription.lost:
                        continue
                # A timed-out wait sweeps for what no push announces; a lost push (a full
                # buffer, a dropped connection) re-reads every claimable job at once.
                if subscription.lost:
                    subscription.lost = False
                    notes, cursor = await self._sweep(None)
                else:
                    notes, cursor = await self._sweep(cursor)
                for note in notes:
                    yield note

    @contextlib.asynccontextmanager
    async def _registered(self, subscription: Subscription) -> AsyncIterator[Subscription]:
        """``subscription`` opened, ended when the board closes, and released after use
        (also when opening it failed)."""
        try:
            await subscription.open()
            self._subscriptions.add(subscription)
            yield subscription
        finally:
            self._subscriptions.discard(subscription)
            subscription.close()
            subscription.aclose_receiver()
            await subscription.aclose_transport()

    def _local_subscription(self) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """A subscription to the notifications this board object pushes itself."""
        return self._registered(Subscription())

    def _notify_local(self, note: JobNotification) -> None:
        for subscription in self._subscriptions:
            subscription.push(note)

    def _sweep_delay(self) -> float:
        """Seconds until ``stream()`` should sweep again."""
        return self.poll_interval

    # The timeout keywords are the public API DESIGN.md names; they wrap anyio.fail_after.
    async def wait(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once at least one job is claimable.

        Raises:
            TimeoutError: none was within ``timeout`` seconds.
        """
        with anyio.fail_after(timeout):
            async with contextlib.aclosing(self.stream()) as notes:
                async for _ in notes:
                    return
            raise BoardClosed()

    async def wait_for(self, job_id: str, *, timeout: float | None = None) -> Job:  # noqa: ASYNC109
        """Return the job once it is ``COMPLETE`` or ``TRASHED``.

        Raises:
            TimeoutError: the job was not finished within ``timeout`` seconds.
            JobNotFound: no such job.
        """
        job_id = str(job_id)
        delay = 0.005
        with anyio.fail_after(timeout):
            while True:
                job = await self.get(job_id)
                if job.state.is_final:
                    return job
                event = self._final_waiters.setdefault(job_id, anyio.Event())
                try:
                    # Woken at once when this board object finishes the job; polled (backing
                    # off to 250 ms) when another process or board object does.
                    with anyio.move_on_after(delay):
                        await event.wait()
                finally:
                    if event.is_set() or not event.statistics().tasks_waiting:
                        self._final_waiters.pop(job_id, None)
                delay = min(delay * 2, 0.25)

    def _finished(self, job_id: str) -> None:
        event = self._final_waiters.pop(job_id, None)
        if event is not None:
            event.set()

    # -- conductors ------------------------------------------------------------------------------

    async def register_conductor(
        self,
        owner: str,
        name: str,
        *,
        ttl: float,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Record (or refresh) that conductor ``owner`` is alive for ``ttl`` more seconds."""
        self._check_open()
        validate_name("owner", owner)
        validate_name("conductor name", name)
        encode_json("the conductor's meta", meta or {}, 64 * 1024)
        ttl = finite_seconds("ttl", ttl)
        if ttl <= 0:
            raise PayloadError(f"ttl must be positive, got {ttl}")
        await self._register_conductor(owner, name, float(ttl), dict(meta or {}))

    async def unregister_conductor(self, owner: str) -> None:
        """Forget conductor ``owner`` (it stopped)."""
        self._check_open()
        await self._unregister_conductor(owner)

    async def conductors(self) -> list[ConductorInfo]:
        """The conductors alive now (heartbeat within their ttl), by name."""
        self._check_open()
        infos = await self._conductors()
        return sorted(infos, key=lambda info: (info.name, info.owner))

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
    async def _consume(
        self, claim: Claim, outcome: Outcome, result: dict[str, Any], result_json: bytes
    ) -> Job: ...

    @abc.abstractmethod
    async def _abandon(self, claim: Claim) -> Job: ...

    @abc.abstractmethod
    async def _release(self, claim: Claim) -> Job: ...

    @abc.abstractmethod
    async def _retry(
        self,
        claim: Claim,
        delay: float,
        failure: dict[str, Any] | None,
        failure_json: bytes | None,
    ) -> Job: ...

    @abc.abstractmethod
    async def _trash(self, job_id: str, claim: Claim | None, reason: str) -> Job: ...

    @abc.abstractmethod
    async def _get(self, job_id: str) -> Job: ...

    @abc.abstractmethod
    def _iterjobs(self, state: JobState | None) -> AsyncIterator[Job]: ...

    @abc.abstractmethod
    async def _job_count(self, state: JobState | None) -> int: ...

    @abc.abstractmethod
    def _subscribe(self) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """A subscription to pushed notifications (for backends that cannot push across
        processes, at least those this board object makes: ``_local_subscription``)."""

    @abc.abstractmethod
    async def _sweep(self, cursor: Any) -> tuple[list[JobNotification], Any]:
        """Notifications for jobs that became claimable since ``cursor`` without a push, and
        the next cursor. With ``cursor=None``: every job claimable now, in claim order."""

    @abc.abstractmethod
    async def _register_conductor(
        self, owner: str, name: str, ttl: float, meta: dict[str, Any]
    ) -> None: ...

    @abc.abstractmethod
    async def _unregister_conductor(self, owner: str) -> None: ...

    @abc.abstractmethod
    async def _conductors(self) -> list[ConductorInfo]: ...


def _check_headers(headers: Mapping[str, str] | None) -> tuple[dict[str, str], bytes]:
    """The headers as a plain dict and as JSON, or ``PayloadError`` naming what is wrong."""
    if headers is None:
        return {}, b"{}"
    if not isinstance(headers, Mapping):
        raise PayloadError(f"headers must be a mapping of strings, got {type(headers).__name__}")
    checked: dict[str, str] = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise PayloadError(f"headers must map strings to strings, got {key!r}: {value!r:.80}")
        validate_name("header name", key)
        if "\x00" in value:
            raise PayloadError(f"header {key!r} contains a NUL character")
        checked[key] = value
    data = encode_json("the job's headers", checked, MAX_HEADERS_BYTES)
    return checked, data
