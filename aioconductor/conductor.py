"""`Conductor`: claims jobs from a board and runs each as an engine, under a semaphore.

All of a conductor's work lives in one task group: the dispatcher (notifications in, claims out),
one task per running job, the lease keeper and the heartbeat. Capacity is taken before a claim
(a slot of ``max_concurrency``) and given back in the job task's ``finally``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio

from aioconductor._checks import check_lease
from aioconductor._jobrun import CLEANUP_TIMEOUT, JobRun
from aioconductor._payload import MAX_NAME_LENGTH, validate_name
from aioconductor._solo import SoloGate
from aioconductor.boards.base import JobBoard
from aioconductor.errors import (
    AioconductorError,
    ConfigurationError,
    LogBookNotFound,
    PayloadError,
)
from aioconductor.events import Notifier
from aioconductor.models import Claim, Job, Outcome
from aioconductor.persistence.base import Store
from aioconductor.persistence.memory import MemoryStore
from aioconductor.registry import FlowRegistry

__all__ = ["Conductor", "ConductorStats"]

logger = logging.getLogger("aioconductor.conductor")


@dataclass
class ConductorStats:
    """What a conductor has done since it was made."""

    claimed: int = 0
    consumed: int = 0
    succeeded: int = 0
    reverted: int = 0
    failed: int = 0
    abandoned: int = 0
    #: Claims given back on purpose (a graceful stop): their attempts were not spent.
    released: int = 0
    #: Failed runs scheduled to run again under their job's retry policy.
    retried: int = 0
    trashed: int = 0
    lease_lost: int = 0
    #: Claims made because a job was announced that came back empty: another conductor was
    #: first (many mean more conductors wake per job than there are jobs).
    claim_conflicts: int = 0
    #: The most jobs that ran at once.
    peak_running: int = 0

    def count_outcome(self, outcome: Outcome) -> None:
        """Count one consumed job with ``outcome``."""
        self.consumed += 1
        if outcome is Outcome.SUCCESS:
            self.succeeded += 1
        elif outcome is Outcome.REVERTED:
            self.reverted += 1
        else:
            self.failed += 1


#: The longest a claim call may take (it is shielded from cancellation while it runs).
CLAIM_TIMEOUT = 60.0


#: The longest conductor name: the owner id on the board (name, "-", 32 hex digits) must fit
#: the boards' limit of MAX_NAME_LENGTH characters.
MAX_CONDUCTOR_NAME = MAX_NAME_LENGTH - 33


def _check_name(name: object) -> str:
    """``name`` if a board will take the owner id made from it, else ``ConfigurationError``."""
    if isinstance(name, str) and len(name) > MAX_CONDUCTOR_NAME:
        raise ConfigurationError(
            f"a conductor name is at most {MAX_CONDUCTOR_NAME} characters, got {len(name)}"
        )
    try:
        return validate_name("conductor name", name)
    except PayloadError as exc:
        raise ConfigurationError(str(exc).replace("the job's ", "the ")) from None


def _check_count(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be a whole number >= 1, got {value!r}")


def _check_drain_timeout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigurationError(f"drain_timeout must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _release(slots: anyio.Semaphore, count: int) -> None:
    for _ in range(count):
        slots.release()


class Conductor:
    """Claims jobs from ``board`` and runs each job's flow, saving progress in ``store``.

    Args:
        name: a label for people; the owner id on the board is ``name`` plus a uuid, unique
            per conductor object.
        board: the job board (connected by ``async with`` here if it is not yet).
        store: where engines save progress; a private in-memory store when None (then a job
            whose conductor dies starts over, and a job's logbook is dropped when it ends).
        flows: the registry that turns a job's ``flow`` name into a flow.
        max_concurrency: how many jobs run at once.
        lease: seconds a claim lasts unrenewed; renewed every ``lease / 3`` while a job runs.
        drain_timeout: how long ``stop(drain=True)`` lets running jobs finish before it
            suspends and abandons them.
        sweep_interval: how often an idle conductor looks for claimable jobs that no
            notification announced; at most ``min(lease, 5)`` seconds.
        claim_batch_size: the most jobs one claim call takes when several slots are free.
        notifier: where events go; a private ``Notifier`` when None.
        isolate_last_attempts: run a job alone when it is on its last attempt after earlier
            ones ended unfinished (see :meth:`runs_alone`): a neighbour that crashes the
            process cannot spend it, and if it is the one that crashes, it harms no other.

    Raises:
        ConfigurationError: an option no claim could work with (a name that is empty, holds a
            NUL or is too long for an owner id, a lease out of (0, 86,400] seconds, a
            ``max_concurrency`` that is not a whole number >= 1, ...).

    Example::

        async with Conductor("worker-1", board, store=store, flows=flows) as conductor:
            await conductor.run()  # until conductor.stop() or cancellation
    """

    def __init__(
        self,
        name: str,
        board: JobBoard,
        *,
        store: Store | None = None,
        flows: FlowRegistry,
        max_concurrency: int = 64,
        lease: float = 30.0,
        drain_timeout: float = 30.0,
        sweep_interval: float | None = None,
        claim_batch_size: int = 16,
        notifier: Notifier | None = None,
        isolate_last_attempts: bool = True,
    ) -> None:
        self.name = _check_name(name)
        self.owner = f"{name}-{uuid.uuid4().hex}"
        _check_count("max_concurrency", max_concurrency)
        _check_count("claim_batch_size", claim_batch_size)
        if sweep_interval is not None:
            sweep_interval = check_lease(sweep_interval, "sweep_interval")
        self.board = board
        self.store: Store = store if store is not None else MemoryStore()
        self._private_store = store is None
        self.flows = flows
        self.max_concurrency = max_concurrency
        self.lease = check_lease(lease)
        self.drain_timeout = _check_drain_timeout(drain_timeout)
        self.claim_batch_size = claim_batch_size
        ceiling = min(self.lease, 5.0)
        self.sweep_interval = min(sweep_interval, ceiling) if sweep_interval else ceiling
        self.isolate_last_attempts = isolate_last_attempts
        #: Jobs run under a shared hold of this gate, or alone (:meth:`runs_alone`).
        self.gate = SoloGate()
        #: Register listeners here (``conductor.notifier.register("job_consumed", fn)``).
        self.notifier = notifier if notifier is not None else Notifier()
        self.stats = ConductorStats()
        #: The jobs running now, by id.
        self.running: dict[str, JobRun] = {}
        self._opened: list[JobBoard | Store] = []
        self._stop_requested = anyio.Event()
        self._drain = True
        self._stopped = anyio.Event()
        self._stopped.set()
        self._idle_scope: anyio.CancelScope | None = None
        self._wakeup = anyio.Event()
        #: Job tasks alive (claimed and not yet finished), and an event set when none is.
        self._active = 0
        self._none_active = anyio.Event()

    def __repr__(self) -> str:
        return f"<Conductor {self.name!r} owner={self.owner!r} running={len(self.running)}>"

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self._open_resources()
        except BaseException:
            # Cancelled (or failed) between opening the board and the store: close what
            # was opened, or nobody will.
            await self._close_resources()
            raise
        return self

    async def _open_resources(self) -> None:
        # What the conductor opens (outside `async with conductor`, run() opens what is not
        # open) stays open across runs, and is closed by aclose().
        for resource in (self.board, self.store):
            if not resource.connected:
                await resource.connect()
                self._opened.append(resource)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop (with a drain) and close the board and store if the conductor opened them."""
        self.stop()
        try:
            await self.wait()
        finally:
            await self._close_resources()

    async def _close_resources(self) -> None:
        # Shielded so that a cancelled close still frees connections; bounded so that a dead
        # server cannot hold up shutdown.
        opened, self._opened = self._opened, []
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
            for resource in reversed(opened):
                try:
                    await resource.aclose()
                except Exception as exc:
                    logger.warning("conductor %s: closing %r failed: %r", self.name, resource, exc)

    def stop(self, *, drain: bool = True) -> None:
        """Ask the conductor to stop claiming and return from :meth:`run`.

        With ``drain`` the running jobs may finish within ``drain_timeout``; without it (or
        past it) they are suspended, their progress saved, and their claims abandoned.
        """
        self._drain = self._drain and drain
        self._stop_requested.set()
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    async def wait(self) -> None:
        """Wait until the conductor is not running."""
        await self._stopped.wait()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called and the conductor has not stopped yet."""
        return self._stop_requested.is_set() and self.is_running

    @property
    def is_running(self) -> bool:
        """Whether :meth:`run` is under way."""
        return not self._stopped.is_set()

    # -- running -------------------------------------------------------------------------------

    async def run(
        self,
        *,
        max_dispatches: int | None = None,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Claim and run jobs until :meth:`stop` is called or the task is cancelled.

        Start it with ``await task_group.start(conductor.run)`` to return once it runs.

        Args:
            max_dispatches: stop claiming after this many jobs, and return once they ended.
            task_status: set by ``TaskGroup.start``.
        """
        if self.is_running:
            raise RuntimeError(f"conductor {self.name!r} is already running")
        self._stopped = anyio.Event()
        self._stop_requested = anyio.Event()
        self._drain = True
        slots = anyio.Semaphore(self.max_concurrency)
        try:
            await self._open_resources()
            async with anyio.create_task_group() as jobs:
                async with anyio.create_task_group() as services:
                    services.start_soon(self._listen)
                    services.start_soon(self._keep_leases)
                    services.start_soon(self._heartbeat)
                    task_status.started()
                    await self._dispatch(jobs, slots, max_dispatches)
                    services.cancel_scope.cancel()
                await self._finish_jobs(jobs)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
                # Bounded: a dead board must not hold up shutdown.
                with contextlib.suppress(Exception):
                    await self.board.unregister_conductor(self.owner)
            self._stopped.set()

    async def _finish_jobs(self, jobs: anyio.abc.TaskGroup) -> None:
        """Let running jobs end: all of them after ``max_dispatches``; within
        ``drain_timeout`` after ``stop()``; none after ``stop(drain=False)``."""
        stopping = self._stop_requested.is_set()
        if self._active and (self._drain or not stopping):
            with anyio.move_on_after(self.drain_timeout if stopping else math.inf):
                await self._none_active.wait()
        if self._active:
            logger.info("conductor %s: suspending %d running jobs", self.name, self._active)
        jobs.cancel_scope.cancel()

    async def _dispatch(
        self, jobs: anyio.abc.TaskGroup, slots: anyio.Semaphore, max_dispatches: int | None
    ) -> None:
        dispatched = 0
        backoff = 0.05
        announced = False
        while not self._stop_requested.is_set():
            if max_dispatches is not None and dispatched >= max_dispatches:
                return
            # Capacity before claim: a claimed job never waits for a slot.
            with self._idle() as idle:
                await slots.acquire()
            if idle.cancelled_caught or self._stop_requested.is_set():
                if not idle.cancelled_caught:
                    slots.release()
                return
            # Every free slot is filled by one claim call (one round trip on most boards).
            wanted = self.claim_batch_size
            if max_dispatches is not None:
                wanted = min(wanted, max_dispatches - dispatched)
            held = 1 + self._take_free_slots(slots, wanted - 1)
            self._wakeup = anyio.Event()
            try:
                # Shielded (and bounded): jobs claimed must reach a task, which abandons them
                # if the conductor is being cancelled, rather than sit claimed until their
                # lease runs out with an attempt spent.
                with anyio.CancelScope(shield=True), anyio.fail_after(CLAIM_TIMEOUT):
                    claimed = await self.board.claim_batch(self.owner, held, lease=self.lease)
            except TimeoutError as exc:
                _release(slots, held)
                logger.warning("conductor %s: claim timed out (%r); retrying", self.name, exc)
                continue
            except AioconductorError as exc:
                _release(slots, held)
                logger.warning("conductor %s: claim failed (%r); retrying", self.name, exc)
                with self._idle():
                    await anyio.sleep(backoff)
                backoff = min(backoff * 2, self.sweep_interval)
                continue
            except BaseException:
                _release(slots, held)
                raise
            backoff = 0.05
            _release(slots, held - len(claimed))
            if not claimed:
                if announced:
                    self.stats.claim_conflicts += 1
                with self._idle(), anyio.move_on_after(self.sweep_interval):
                    await self._wakeup.wait()
                announced = self._wakeup.is_set()
                continue
            announced = False
            dispatched += len(claimed)
            self.stats.claimed += len(claimed)
            # Counted here, not in the task: a job must be waited for from the moment it is
            # claimed, even if its task has not started yet.
            self._active += len(claimed)
            if self._none_active.is_set():
                self._none_active = anyio.Event()
            self.stats.peak_running = max(self.stats.peak_running, self._active)
            for job, claim in claimed:
                jobs.start_soon(self._run_job, job, claim, slots, name=f"job {job.id}")

    @staticmethod
    def _take_free_slots(slots: anyio.Semaphore, most: int) -> int:
        """Take up to ``most`` slots that are free right now, without waiting."""
        taken = 0
        while taken < most and slots.value > 0:
            slots.acquire_nowait()
            taken += 1
        return taken

    @contextlib.contextmanager
    def _idle(self) -> Any:
        """A scope for the dispatcher's waits, which :meth:`stop` cancels (never a claim)."""
        with anyio.CancelScope() as scope:
            self._idle_scope = scope
            if self._stop_requested.is_set():
                scope.cancel()
            try:
                yield scope
            finally:
                self._idle_scope = None

    async def _run_job(self, job: Job, claim: Claim, slots: anyio.Semaphore) -> None:
        try:
            await JobRun(self, job, claim).run()
        finally:
            slots.release()
            self._active -= 1
            if not self._active:
                self._none_active.set()

    def runs_alone(self, job: Job) -> bool:
        """Whether ``job`` runs with no other job of this conductor beside it: it is on its
        last attempt, and an earlier one ended unfinished (the process may have crashed).

        Jobs running when it is claimed finish first, and jobs claimed while it waits or
        runs wait for it. A job posted with ``max_attempts=1`` never waits: its first attempt
        says nothing against it.
        """
        return self.isolate_last_attempts and 1 < job.attempts == job.max_attempts

    async def forget_progress(self, job_id: str) -> None:
        """Drop a job's logbook from the conductor's private store, once no run of the job
        here needs it: nobody else can read that store, and it would grow for ever."""
        if self._private_store and job_id not in self.running:
            with contextlib.suppress(LogBookNotFound):
                await self.store.destroy_logbook(job_id)

    def make_engine(self, job: Job, claim: Claim, flow: Any) -> Any:
        """The engine that runs ``job``'s flow, saving progress under the claim's token."""
        from aioconductor.engine import Engine

        return Engine(
            flow,
            store=self.store,
            book_id=job.id,
            book_name=job.name,
            token=claim.token,
            inputs=job.args,
            notifier=self.notifier,
            # The first claim (token 1): no earlier run can have saved progress, as every
            # write carries a token. Counting attempts would not do: a release gives one back.
            fresh=claim.token == 1,
            # Each retry is a fresh run of the flow, under a detail of its own.
            detail_name=None if job.retries == 0 else f"{flow.name} (retry {job.retries})",
        )

    # -- services ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Turn the board's notifications into wake-ups of the dispatcher."""
        while True:
            try:
                async with contextlib.aclosing(self.board.stream()) as notes:
                    async for _ in notes:
                        self._wakeup.set()
                return
            except AioconductorError as exc:
                logger.warning("conductor %s: notifications failed (%r)", self.name, exc)
                await anyio.sleep(self.sweep_interval)

    async def _keep_leases(self) -> None:
        """Renew every running job's claim once a third of its lease has passed.

        Renewals run side by side, each bounded by the time its lease has left: one that
        hangs (a silent connection) neither delays the others nor outlives its lease; the run
        is stopped before another owner may take the job.
        """
        interval = self.lease / 3
        while True:
            await anyio.sleep(interval / 2)
            deadline = time.time() + 2 * interval
            due = [run for run in self.running.values() if run.claim.expires_at < deadline]
            if not due:
                continue
            async with anyio.create_task_group() as renewals:
                for run in due:
                    renewals.start_soon(run.renew)

    async def _heartbeat(self) -> None:
        """Keep this conductor listed in ``board.conductors()`` with its load."""
        interval = min(self.lease / 3, 5.0)
        while True:
            try:
                await self.board.register_conductor(
                    self.owner,
                    self.name,
                    ttl=interval * 3,
                    meta={
                        "running": len(self.running),
                        "capacity": self.max_concurrency,
                        "jobs": sorted(self.running)[:100],
                    },
                )
            except AioconductorError as exc:
                logger.warning("conductor %s: heartbeat failed (%r)", self.name, exc)
            await anyio.sleep(interval)
