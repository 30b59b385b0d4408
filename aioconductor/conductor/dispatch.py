"""`Dispatcher`: notifications in, claims out, one task per claimed job.

Capacity before claim: the dispatcher takes a free slot of ``max_concurrency`` (and every other
slot free at that moment, up to ``claim_batch_size``), then claims as many jobs in one call, so a
claimed job never waits for a slot; each job's task gives its slot back in its ``finally``.
Claiming and starting are two steps: :meth:`Dispatcher._claim` ends with jobs held (or none),
:meth:`Dispatcher._start` turns each into a task running a :class:`JobRun`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import KW_ONLY
from dataclasses import InitVar
from dataclasses import dataclass
from dataclasses import field

import anyio
import anyio.abc
import anyio.lowlevel

from aioconductor.conductor.jobrun import JobRun
from aioconductor.conductor.jobrun import RunContext
from aioconductor.conductor.jobtasks import JobTasks
from aioconductor.errors import AioconductorError
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.models import NotificationKind

__all__ = ["CLAIM_TIMEOUT", "Dispatcher"]

logger = logging.getLogger("aioconductor.conductor")

#: The longest a claim call may take (it is shielded from cancellation while it runs).
CLAIM_TIMEOUT = 60.0

#: The first pause after a failed claim call; it doubles up to the sweep interval.
_FIRST_BACKOFF = 0.05


@dataclass(eq=False)
class Dispatcher:
    """Claims jobs for one run of a conductor and starts a task for each.

    Args:
        context: what the job runs share (the board and the lease come from it too).
        owner: the owner id claims are made under.
        max_concurrency: how many jobs run at once.
        claim_batch_size: the most jobs one claim call takes.
        sweep_interval: the longest wait for a notification before claiming again.
        stop_requested: set when the conductor is asked to stop: claiming ends.
    """

    context: RunContext
    _: KW_ONLY
    owner: str
    max_concurrency: InitVar[int]
    claim_batch_size: int
    sweep_interval: float
    stop_requested: anyio.Event
    _slots: anyio.Semaphore = field(init=False)
    _wakeup: anyio.Event = field(init=False, default_factory=anyio.Event)
    #: Whether the last wait for work ended with a notification (not the sweep interval).
    _announced: bool = field(init=False, default=False)
    _backoff: float = field(init=False, default=_FIRST_BACKOFF)
    _wait_scope: anyio.CancelScope | None = field(init=False, default=None)

    def __post_init__(self, max_concurrency: int) -> None:
        self._slots = anyio.Semaphore(max_concurrency)

    def interrupt(self) -> None:
        """Cut short the wait under way, if any (for a slot, for work, after a failure), so
        that a stop is seen at once; never a claim call."""
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def listen(self) -> None:
        """Turn the board's notifications into wake-ups of the dispatcher, and its cancels
        into cancels of the runs they name, until cancelled."""
        board, running = self.context.board, self.context.running
        while True:
            try:
                async with contextlib.aclosing(board.stream()) as notes:
                    async for note in notes:
                        if note.kind is NotificationKind.CANCEL:
                            run = running.get(note.job_id)
                            if run is not None:
                                run.request_cancel()
                        else:
                            self._wakeup.set()
                return
            except AioconductorError as exc:
                logger.warning(
                    "conductor %s: notifications failed (%r)", self.context.conductor, exc
                )
                await anyio.sleep(self.sweep_interval)

    async def run(self, jobs: JobTasks, max_dispatches: int | None) -> None:
        """Claim jobs and start each in ``jobs`` until a stop is requested, or
        ``max_dispatches`` jobs were claimed."""
        dispatched = 0
        while not self.stop_requested.is_set():
            wanted = self.claim_batch_size
            if max_dispatches is not None:
                if dispatched >= max_dispatches:
                    return
                wanted = min(wanted, max_dispatches - dispatched)
            held = await self._take_slots(wanted)
            if held is None:
                return
            claimed = await self._claim(held)
            if claimed is None:
                continue
            if not claimed:
                await self._wait_for_work()
                continue
            self._announced = False
            dispatched += len(claimed)
            self._start(jobs, claimed)

    # -- claiming ------------------------------------------------------------------------------

    async def _take_slots(self, most: int) -> int | None:
        """Wait for a free slot, then take every other one free now, up to ``most`` in all;
        None if a stop came first (no slot held)."""
        # Capacity before claim: a claimed job never waits for a slot.
        if self._slots.value > 0 and not self.stop_requested.is_set():
            # Free now: taken without a pause, so the claim is sent before the jobs started
            # just now run (they run while it is on its way, not before it leaves). But not
            # once cancelled: the claim is shielded, and the jobs a cancelled conductor gives
            # back free their slots at once, so without this check it would claim them again.
            await anyio.lowlevel.checkpoint_if_cancelled()
            self._slots.acquire_nowait()
        else:
            with self._stoppable() as wait:
                await self._slots.acquire()
            if wait.cancelled_caught or self.stop_requested.is_set():
                if not wait.cancelled_caught:
                    self._slots.release()
                return None
        taken = 1
        while taken < most and self._slots.value > 0:
            self._slots.acquire_nowait()
            taken += 1
        return taken

    async def _claim(self, held: int) -> list[tuple[Job, Claim]] | None:
        """Claim up to ``held`` jobs in one call, and give back the slots left unused; None
        if the call failed (after a pause that grows while failures go on)."""
        context = self.context
        self._wakeup = anyio.Event()
        try:
            # Shielded (and bounded): jobs claimed must reach a task, which abandons them if
            # the conductor is being cancelled, rather than sit claimed until their lease
            # runs out with an attempt spent.
            with anyio.CancelScope(shield=True), anyio.fail_after(CLAIM_TIMEOUT):
                claimed = await context.starts.claim_batch(self.owner, held, context.lease)
        except TimeoutError as exc:
            self._give_back(held)
            logger.warning("conductor %s: claim timed out (%r); retrying", context.conductor, exc)
            return None
        except AioconductorError as exc:
            self._give_back(held)
            logger.warning("conductor %s: claim failed (%r); retrying", context.conductor, exc)
            with self._stoppable():
                await anyio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, self.sweep_interval)
            return None
        except BaseException:
            self._give_back(held)
            raise
        self._backoff = _FIRST_BACKOFF
        self._give_back(held - len(claimed))
        return claimed

    async def _wait_for_work(self) -> None:
        """After a claim that came back empty: wait for a notification, or for the sweep."""
        if self._announced:
            self.context.stats.claim_conflicts += 1
        with self._stoppable(), anyio.move_on_after(self.sweep_interval):
            await self._wakeup.wait()
        self._announced = self._wakeup.is_set()

    def _give_back(self, slots: int) -> None:
        for _ in range(slots):
            self._slots.release()

    @contextlib.contextmanager
    def _stoppable(self) -> Iterator[anyio.CancelScope]:
        """A scope for the dispatcher's waits, which :meth:`interrupt` cancels."""
        with anyio.CancelScope() as scope:
            self._wait_scope = scope
            if self.stop_requested.is_set():
                scope.cancel()
            try:
                yield scope
            finally:
                self._wait_scope = None

    # -- starting ------------------------------------------------------------------------------

    def _start(self, jobs: JobTasks, claimed: list[tuple[Job, Claim]]) -> None:
        """Start a task in ``jobs`` for each claimed job (each holds one slot already)."""
        stats = self.context.stats
        stats.claimed += len(claimed)
        for job, claim in claimed:
            jobs.start(self._run_job, job, claim, name=f"job {job.id}")
        # Counted once started (``jobs`` counts a task from its start, before it first runs):
        # a claimed job is waited for from the moment it is claimed.
        stats.peak_running = max(stats.peak_running, len(jobs))

    async def _run_job(self, job: Job, claim: Claim) -> None:
        try:
            await JobRun(self.context, job, claim, stopping=self.stop_requested).run()
        finally:
            self._slots.release()
