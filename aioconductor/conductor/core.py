"""`Conductor`: claims jobs from a board and runs each as an engine, under a semaphore.

All of a conductor's work lives in one task group: the dispatcher (notifications in, claims
out: :mod:`aioconductor.conductor.dispatch`), one task per running job
(:mod:`aioconductor.conductor.jobrun`), the lease keeper and the heartbeat. Capacity is taken
before a claim (a slot of ``max_concurrency``) and given back in the job task's ``finally``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Sequence
from typing import Self

import anyio
import anyio.abc

from aioconductor._checks import check_lease
from aioconductor.boards.base import JobBoard
from aioconductor.conductor.dispatch import Dispatcher
from aioconductor.conductor.ending import Endings
from aioconductor.conductor.jobrun import CLEANUP_TIMEOUT
from aioconductor.conductor.jobrun import JobRun
from aioconductor.conductor.jobrun import RunContext
from aioconductor.conductor.jobtasks import JobTasks
from aioconductor.conductor.options import check_count
from aioconductor.conductor.options import check_drain_timeout
from aioconductor.conductor.options import check_name
from aioconductor.conductor.options import check_schedules
from aioconductor.conductor.retention import Purger
from aioconductor.conductor.retention import Retention
from aioconductor.conductor.scheduling import Scheduler
from aioconductor.conductor.solo import SoloGate
from aioconductor.conductor.solo import last_attempt_after_unfinished
from aioconductor.conductor.starting import Starts
from aioconductor.conductor.stats import ConductorStats
from aioconductor.engine import Engine
from aioconductor.engine import Flow
from aioconductor.errors import AioconductorError
from aioconductor.errors import ConfigurationError
from aioconductor.events import Notifier
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.persistence.base import Store
from aioconductor.persistence.memory import MemoryStore
from aioconductor.registry import FlowRegistry
from aioconductor.schedules import Clock
from aioconductor.schedules import Schedule
from aioconductor.schedules import SystemClock

__all__ = ["Conductor"]

logger = logging.getLogger("aioconductor.conductor")


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
            suspends and releases them.
        sweep_interval: how often an idle conductor looks for claimable jobs that no
            notification announced; at most ``min(lease, 5)`` seconds.
        claim_batch_size: the most jobs one claim call takes when several slots are free.
        notifier: where events go; a private ``Notifier`` when None.
        isolate_last_attempts: run a job alone when it is on its last attempt after earlier
            ones ended unfinished (see :meth:`runs_alone`): a neighbour that crashes the
            process cannot spend it, and if it is the one that crashes, it harms no other.
        retention: how long finished jobs are kept before they (and their logbooks in
            ``store``) are purged; one conductor of the fleet purges at a time. By default
            COMPLETE jobs for 7 days and TRASHED ones for 30; None keeps everything.
        schedules: periodic jobs this conductor posts at each tick; every conductor of a
            fleet may be handed the same ones (the board posts each tick once). Their flows
            must be registered in ``flows``, and their args fit the flows' args models.
        clock: the wall clock the schedules tick by; tests pass a fake one
            (:class:`aioconductor.testing.FakeClock`).

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
        retention: Retention | None = Retention(),  # noqa: B008 - frozen, shared safely
        schedules: Sequence[Schedule] = (),
        clock: Clock | None = None,
    ) -> None:
        self.name = check_name(name)
        self.owner = f"{name}-{uuid.uuid4().hex}"
        check_count("max_concurrency", max_concurrency)
        check_count("claim_batch_size", claim_batch_size)
        if sweep_interval is not None:
            sweep_interval = check_lease(sweep_interval, "sweep_interval")
        self.board = board
        self.store: Store = store if store is not None else MemoryStore()
        self._private_store = store is None
        self.flows = flows
        self.max_concurrency = max_concurrency
        self.lease = check_lease(lease)
        self.drain_timeout = check_drain_timeout(drain_timeout)
        self.claim_batch_size = claim_batch_size
        ceiling = min(self.lease, 5.0)
        self.sweep_interval = min(sweep_interval, ceiling) if sweep_interval else ceiling
        self.isolate_last_attempts = isolate_last_attempts
        if retention is not None and not isinstance(retention, Retention):
            raise ConfigurationError(f"retention must be a Retention or None, got {retention!r}")
        self.retention = retention
        self.schedules = check_schedules(schedules, flows)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._scheduler: Scheduler | None = None
        #: Jobs run under a shared hold of this gate, or alone (:meth:`runs_alone`).
        self.gate = SoloGate()
        #: Register listeners here (``conductor.notifier.register("job_consumed", fn)``).
        self.notifier = notifier if notifier is not None else Notifier()
        self.stats = ConductorStats()
        #: The jobs running now, by id.
        self.running: dict[str, JobRun] = {}
        #: How jobs end: the flow's end and the consume in one call where board and store can.
        self._endings = Endings.of(self.board, self.store, self.notifier)
        #: How jobs are claimed: with their runs created in the same call where board and store
        #: can (made again by each run, for the flows registered by then).
        self._starts = Starts(self.board)
        self._opened: list[JobBoard | Store] = []
        self._stop_requested = anyio.Event()
        self._drain = True
        self._stopped = anyio.Event()
        self._stopped.set()
        #: The dispatcher of the latest run (None before the first).
        self._dispatcher: Dispatcher | None = None
        #: The wait for running jobs to end, while :meth:`run` drains them.
        self._drain_scope: anyio.CancelScope | None = None

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

    async def __aexit__(self, *exc_info: object) -> None:
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
        past it) they are suspended, their progress saved, and their claims released (their
        attempts given back). A ``stop(drain=False)`` during a drain ends the drain at once.
        """
        self._drain = self._drain and drain
        self._stop_requested.set()
        if self._dispatcher is not None:
            self._dispatcher.interrupt()
        if not drain and self._drain_scope is not None:
            self._drain_scope.cancel()

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
        dispatcher = self._dispatcher = Dispatcher(
            self._run_context(),
            owner=self.owner,
            max_concurrency=self.max_concurrency,
            claim_batch_size=self.claim_batch_size,
            sweep_interval=self.sweep_interval,
            stop_requested=self._stop_requested,
        )
        try:
            await self._open_resources()
            async with JobTasks() as jobs:
                async with anyio.create_task_group() as services:
                    services.start_soon(dispatcher.listen)
                    services.start_soon(self._keep_leases)
                    services.start_soon(self._heartbeat)
                    if self.retention is not None:
                        services.start_soon(self._purger(self.retention).run)
                    if self.schedules:
                        self._scheduler = self._new_scheduler()
                        services.start_soon(self._scheduler.run)
                    task_status.started()
                    await dispatcher.run(jobs, max_dispatches)
                    services.cancel_scope.cancel()
                await self._finish_jobs(jobs)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
                # Bounded: a dead board must not hold up shutdown.
                with contextlib.suppress(Exception):
                    await self.board.unregister_conductor(self.owner)
            self._stopped.set()

    def _new_scheduler(self) -> Scheduler:
        return Scheduler(
            self.schedules,
            board=self.board,
            clock=self.clock,
            conductor=self.name,
            owner=self.owner,
            notifier=self.notifier,
            stats=self.stats,
        )

    def _purger(self, retention: Retention) -> Purger:
        return Purger(
            retention,
            board=self.board,
            # A private store drops each logbook when its job ends: nothing to purge there.
            store=None if self._private_store else self.store,
            owner=self.owner,
            conductor=self.name,
            notifier=self.notifier,
            stats=self.stats,
        )

    def _run_context(self) -> RunContext:
        """What this run's jobs share, read from the conductor's options as they are now."""
        # Fused only with this class's engines: an engine made otherwise (a subclass's own
        # make_engine) would not start from the run its claim created.
        ours = type(self).make_engine is Conductor.make_engine
        self._starts = Starts.of(self.board, self.store if ours else None, self.flows)
        return RunContext(
            conductor=self.name,
            board=self.board,
            lease=self.lease,
            flows=self.flows,
            notifier=self.notifier,
            stats=self.stats,
            gate=self.gate,
            make_engine=self.make_engine,
            running=self.running,
            isolate_last_attempts=self.isolate_last_attempts,
            private_store=self.store if self._private_store else None,
            endings=self._endings,
            starts=self._starts,
        )

    async def _finish_jobs(self, jobs: JobTasks) -> None:
        """Let running jobs end: all of them after ``max_dispatches``; within
        ``drain_timeout`` after ``stop()``; none after ``stop(drain=False)``."""
        stopping = self._stop_requested.is_set()
        if len(jobs) and (self._drain or not stopping):
            with anyio.move_on_after(self.drain_timeout if stopping else math.inf) as waiting:
                self._drain_scope = waiting
                try:
                    await jobs.all_ended()
                finally:
                    self._drain_scope = None
        if len(jobs):
            logger.info("conductor %s: suspending %d running jobs", self.name, len(jobs))
        jobs.cancel()

    def runs_alone(self, job: Job) -> bool:
        """Whether ``job`` runs with no other job of this conductor beside it: it is on its
        last attempt, and an earlier one ended unfinished (the process may have crashed).

        Jobs running when it is claimed finish first, and jobs claimed while it waits or
        runs wait for it. A job posted with ``max_attempts=1`` never waits: its first attempt
        says nothing against it.
        """
        return self.isolate_last_attempts and last_attempt_after_unfinished(job)

    def make_engine(self, job: Job, claim: Claim, flow: Flow) -> Engine:
        """The engine that runs ``job``'s flow, saving progress under the claim's token.

        Every job run makes its engine here: a subclass may wrap or replace it.
        """
        return Engine(
            flow,
            store=self._endings.store_for(job.id),
            book_id=job.id,
            book_name=job.name,
            token=claim.token,
            inputs=job.args,
            notifier=self._endings.notifier_for(job.id, claim.token),
            # The first claim (token 1): no earlier run can have saved progress, as every
            # write carries a token. Counting attempts would not do: a release gives one back.
            fresh=claim.token == 1,
            # Each retry is a fresh run of the flow, under a detail of its own.
            detail_name=None if job.retries == 0 else f"{flow.name} (retry {job.retries})",
            # Created with the claim, where the store did (a flow registered as it is).
            created_run=self._starts.take(job.id, claim.token),
        )

    # -- services ------------------------------------------------------------------------------

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
                    renewals.start_soon(run.renew_lease)

    def _published_schedules(self) -> dict[str, object]:
        scheduler = self._scheduler
        return {"schedules": scheduler.published()} if scheduler is not None else {}

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
                        **self._published_schedules(),
                    },
                )
            except AioconductorError as exc:
                logger.warning("conductor %s: heartbeat failed (%r)", self.name, exc)
            await anyio.sleep(interval)
