"""Running one claimed job: build its flow, run its engine under a lease keeper, finish it.

A :class:`JobRun` reads what it needs from a :class:`RunContext`, which names each thing one
by one (the board, the lease, the flows, the notifier, the stats, the gate, the engine
factory, ...): it never sees the conductor, and a test can run one without a conductor.

Every way a job can end maps to one board verb:

=================================================  =====================================
what happened                                      what the board is told
=================================================  =====================================
the flow succeeded                                 ``consume`` (``SUCCESS``, provided values)
a task failed and the flow was reverted            ``consume`` (``REVERTED``/``FAILURE``)
... and the job's retry policy has retries left    ``retry`` (scheduled after the backoff)
claimed more than ``max_attempts`` times           ``trash`` without running
unknown flow, args do not fit (its args model, or  ``trash`` (it can never succeed)
the factory's signature), the factory raised
storage failure, internal error                    ``abandon`` (the attempt is spent)
shutdown, cancellation, claimed as the conductor   ``release`` (the attempt is given back)
stops (its flow not begun)
the claim was lost (stolen, fenced out)            nothing: the new owner has it
the job was cancelled (``board.cancel``)           ``consume`` (``CANCELLED``) once the flow
                                                   stopped and its tasks were reverted
=================================================  =====================================

A cancel reaches a run three ways: the job was flagged when it was claimed (its last owner died
or gave it back), a ``CANCEL`` notification (:meth:`JobRun.request_cancel`), or a renewal that
returns a flagged claim. The flow is stopped (suspended, its progress saved), then reverted from
the store (:meth:`Engine.revert`); a flagged job is never retried and never trashed for its
attempts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import anyio
import anyio.lowlevel

from aioconductor.conductor.context import EngineFactory
from aioconductor.conductor.context import RunContext
from aioconductor.conductor.failures import kept_failure
from aioconductor.conductor.failures import log_failure
from aioconductor.conductor.solo import last_attempt_after_unfinished
from aioconductor.conductor.unrunnable import Unrunnable
from aioconductor.conductor.unrunnable import build_flow
from aioconductor.conductor.unrunnable import checked_args
from aioconductor.conductor.unrunnable import exhausted_reason
from aioconductor.engine import Engine
from aioconductor.engine import EngineResult
from aioconductor.errors import AioconductorError
from aioconductor.errors import BackendUnavailable
from aioconductor.errors import ClaimLost
from aioconductor.errors import CompilationError
from aioconductor.errors import LogBookNotFound
from aioconductor.events import Event
from aioconductor.failure import Failure
from aioconductor.logs import job_context
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.models import Outcome
from aioconductor.models import RetryPolicy
from aioconductor.persistence.models import FlowState

__all__ = ["CLEANUP_TIMEOUT", "EngineFactory", "JobRun", "RunContext"]

logger = logging.getLogger("aioconductor.conductor")

#: How long cleanup may take when a job is cancelled (abandon under a shield).
CLEANUP_TIMEOUT = 5.0

_OUTCOMES = {
    FlowState.SUCCESS: Outcome.SUCCESS,
    FlowState.REVERTED: Outcome.REVERTED,
    FlowState.FAILURE: Outcome.FAILURE,
}


@dataclass(slots=True)
class JobRun:
    """One claimed job on its way through a conductor."""

    context: RunContext
    job: Job
    claim: Claim
    started: float = field(default_factory=time.monotonic)
    lease_lost: bool = False
    #: The engine runs in this scope; only a lost claim cancels it.
    engine_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    #: Whether the engine's run is over (the claim is being, or was, given its end).
    ended: bool = False
    #: Whether the board took the job's end (consumed or trashed).
    final: bool = False
    #: Why the job is being cancelled, once its run knows it was (see :meth:`request_cancel`).
    cancelling: str | None = None
    #: Set when the conductor is asked to stop: a run whose flow has not begun by then gives
    #: its claim back (its attempt unspent) instead of starting it.
    stopping: anyio.Event | None = None
    #: Whether the job's run (its logbook) was created with its claim (a fused claim).
    created_run: bool = False

    @property
    def details(self) -> dict[str, Any]:
        """What every event of this run says about it (a fresh dict each time)."""
        return {
            "job_id": self.job.id,
            "job_name": self.job.name,
            "flow": self.job.flow,
            "owner": self.claim.owner,
            "token": self.claim.token,
            "attempt": self.job.attempts,
            "conductor": self.context.conductor,
            "headers": self.job.headers,
        }

    async def _emit(self, event: Event, **extra: Any) -> None:
        notifier = self.context.notifier
        if notifier.has_listeners(event):
            details = self.details
            details["duration"] = time.monotonic() - self.started
            details.update(extra)
            await notifier.notify(event, details)

    # -- the run -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the job to one of its ends. Never raises but for cancellation."""
        job, owner, running = self.job, self.claim.owner, self.context.running
        # Every log record of this run (and of the tasks it starts) names the job.
        with job_context(job.id, job.flow, owner, job_name=job.name, attempt=job.attempts):
            earlier = running.get(job.id)
            if earlier is not None:
                # This conductor claimed the job again while a run of its own (whose lease ran
                # out) still winds down: that run is a zombie; stop it.
                earlier.halt()
            # Listed from the start, before any await: a cancel pushed meanwhile finds the run.
            running[job.id] = self
            token = self.claim.token
            self.created_run = self.context.starts.was_created(job.id, token)
            try:
                await self._run_listed()
            finally:
                self.context.endings.forget(job.id, token)
                self.context.starts.forget(job.id, token)
                if running.get(job.id) is self:
                    del running[job.id]
            if self.final or self.lease_lost:
                # Its progress is of use to nobody now (a lost job's new owner reads its own).
                await self._forget_progress()

    async def _run_listed(self) -> None:
        context, job = self.context, self.job
        try:
            await self._emit(Event.JOB_CLAIMED)
            if self.claim.cancel_requested:
                self.cancelling = job.cancel_reason or "cancelled"
                if job.attempts > 2 * job.max_attempts:
                    # Its reverts keep failing without a word (a crash, a lost lease): stop.
                    raise Unrunnable(f"gave up reverting it after {job.attempts} claims")
            elif job.attempts > job.max_attempts:
                raise Unrunnable(exhausted_reason(job))
            job = self.job = checked_args(context.flows, job)
            flow = build_flow(context.flows, job)
            engine = context.make_engine(job, self.claim, flow)
            if not await self._enough_lease():
                return  # lost before it started: the next owner runs it
            if self.stopping is not None and self.stopping.is_set():
                # Claimed as the conductor stops (a claim call under way, a renewal before the
                # start): starting it now would only suspend it; another owner runs it.
                with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
                    await self._release("stopping")
                return
            # Cancelled already (the conductor's jobs were, as this one was claimed): give it
            # back before any of its flow runs (with a run created by its claim, nothing
            # else would pause before its first task's execute).
            await anyio.lowlevel.checkpoint_if_cancelled()
            try:
                result = await self._run_engine(engine)
            finally:
                self.ended = True
            if result is None:
                # The lease keeper cancelled the engine: the claim is gone, the flow was
                # suspended with its progress saved, and the new owner finishes the job.
                return
            if self.cancelling is not None and result.state is not FlowState.SUCCESS:
                await self._consume(result.state, {}, None, cancelled=True)
            else:
                if result.failure is not None:
                    log_failure(self.job, result)
                await self._consume_or_retry(result.state, result.provided, result.failure)
        except Unrunnable as exc:
            if self.cancelling is not None:
                # Nothing of it can run or be reverted here: it ends as its cancel asked.
                logger.warning("job %s (%s): cancelled, not reverted: %s", job.id, job.flow, exc)
                await self._unheld(
                    self._consume(None, {"not_reverted": str(exc)}, None, cancelled=True)
                )
            else:
                await self._unheld(self._trash(str(exc)))
        except CompilationError as exc:
            reason = f"the flow {job.flow!r} is not valid for this job: {exc}"
            if self.cancelling is not None:
                await self._unheld(
                    self._consume(None, {"not_reverted": reason}, None, cancelled=True)
                )
            else:
                await self._unheld(self._trash(reason))
        except ClaimLost as exc:
            await self._report_lost_claim(exc)
        except Exception as exc:
            # A storage failure or an internal error: the job may well succeed later.
            if isinstance(exc, AioconductorError):
                logger.warning("job %s (%s): %r; abandoning it", job.id, job.flow, exc)
            else:
                logger.exception("job %s (%s): internal error; abandoning it", job.id, job.flow)
            await self._abandon(reason=repr(exc))
        except BaseException:
            # Cancelled from outside (shutdown past its drain, or the app cancelled us): the
            # engine saved its progress; give the claim back, its attempt unspent, so another
            # owner starts at once.
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
                await self._release("cancelled")
            raise

    async def _unheld(self, ending: Awaitable[None]) -> None:
        """Await ``ending`` (a trash, or a cancelled job's consume) where no handler is left
        to give the job back: a failure of the board (an outage) is logged, and the claim left
        to expire, so that the next owner ends the job; it must not end the conductor."""
        try:
            await ending
        except Exception as exc:
            logger.warning(
                "job %s (%s): ending it failed (%r); its lease will expire",
                self.job.id,
                self.job.flow,
                exc,
            )

    async def _enough_lease(self) -> bool:
        """Whether the claim still holds enough lease to start the flow, renewing it first
        when it does not: a claim may reach its owner late (a slow claim call, a stalled
        broker), and a run begun past its lease would overlap the next owner's."""
        margin = min(self.context.lease / 6, 2.0)
        if self.claim.expires_at - time.time() > margin:
            return True
        try:
            with anyio.fail_after(self.context.lease / 3):
                claim = await self.context.board.renew(self.claim, lease=self.context.lease)
        except (ClaimLost, TimeoutError, BackendUnavailable, OSError) as exc:
            await self._report_lost_claim(exc)
            return False
        self.claim = claim
        if claim.expires_at - time.time() > margin:
            if claim.cancel_requested and self.cancelling is None:
                self.cancelling = self.job.cancel_reason or "cancelled"
            return True
        await self._report_lost_claim(TimeoutError("the claim's lease ran out before its run"))
        return False

    async def _run_engine(self, engine: Engine) -> EngineResult | None:
        """Run the flow; or, once the job is cancelled, stop it and revert it. None if the
        claim was lost on the way."""
        began = False
        if self.cancelling is None:
            alone = self.context.isolate_last_attempts and last_attempt_after_unfinished(self.job)
            # Inside the engine's scope, and listed as running, while it waits for the gate:
            # its lease is renewed meanwhile, and a lost claim (or a cancel) stops the wait.
            with self.engine_scope:
                async with self.context.gate.hold(alone):
                    began = True
                    return await engine.run()
            if self.cancelling is None or self.lease_lost:
                return None  # the claim was lost (a cancel heard since is the new owner's)
            await self._emit(Event.JOB_CANCELLING, reason=self.cancelling, seen="running")
        else:
            await self._emit(Event.JOB_CANCELLING, reason=self.cancelling, seen="claimed")
        if self.lease_lost:
            return None
        if self.created_run and not began:
            # Its run, created with its claim, never began: its first task, saved RUNNING,
            # never ran, so there is nothing to revert (dropped, the revert finds no progress).
            await self._drop_created_run()
        # A lost claim stops the revert too: the next owner reverts what is left.
        self.engine_scope = anyio.CancelScope()
        with self.engine_scope:
            return await engine.revert()
        return None

    def halt(self) -> None:
        """Stop this run for good: its claim was taken over (by a newer run of this same
        conductor); it neither runs nor reverts any more of the flow."""
        self.lease_lost = True
        self.engine_scope.cancel()

    def request_cancel(self, reason: str | None = None) -> None:
        """The job was cancelled (``board.cancel``): stop its flow, then revert it and consume
        the job ``CANCELLED``. Nothing happens once the run is over or already cancelling."""
        if self.ended or self.cancelling is not None or self.lease_lost:
            return  # over, cancelling already, or no longer ours to stop
        self.cancelling = reason or self.job.cancel_reason or "cancelled"
        self.engine_scope.cancel()

    async def _forget_progress(self) -> None:
        """Drop the job's logbook from the private store, unless a newer run of it here
        (which claimed it again) still needs it."""
        store = self.context.private_store
        if store is not None and self.job.id not in self.context.running:
            with contextlib.suppress(LogBookNotFound):
                await store.destroy_logbook(self.job.id)

    async def renew_lease(self) -> None:
        """Extend the claim's lease (the conductor's lease keeper calls this); if the claim
        is lost, stop the engine so that no two owners ever run the job at once."""
        context, job = self.context, self.job
        # Stop before the lease ends, with a margin for clocks and for the stop itself: past
        # it, another owner may hold the job, and it must never run twice at once.
        margin = min(context.lease / 6, 2.0)
        # The lease keeper is a task of the conductor's: name the job in what it logs here.
        with job_context(
            job.id, job.flow, self.claim.owner, job_name=job.name, attempt=job.attempts
        ):
            try:
                with anyio.fail_after(max(0.0, self.claim.expires_at - time.time() - margin)):
                    claim = await context.board.renew(self.claim, lease=context.lease)
            except ClaimLost as exc:
                if not self.ended:  # else consumed (or given up) meanwhile: nothing was lost
                    await self._stop_for_lost_claim(exc)
            except TimeoutError as exc:
                if not self.ended:
                    logger.warning("job %s: renewing its lease got no answer in time", job.id)
                    await self._stop_for_lost_claim(exc)
            except (BackendUnavailable, OSError) as exc:
                left = self.claim.expires_at - time.time()
                logger.warning(
                    "job %s: renewing its lease failed (%r), %.1f s left", job.id, exc, left
                )
                if left < context.lease / 3 and not self.ended:
                    # We cannot prove we hold it by the time another owner may take it: stop.
                    await self._stop_for_lost_claim(exc)
            else:
                self.claim = claim
                if claim.cancel_requested:
                    self.request_cancel()

    async def _stop_for_lost_claim(self, exc: BaseException) -> None:
        """Cancel the engine (it suspends, its progress saved), then report the lost claim."""
        self.engine_scope.cancel()
        await self._report_lost_claim(exc)

    # -- the ends ------------------------------------------------------------------------------

    async def _consume_or_retry(
        self, state: FlowState, provided: dict[str, Any], failure: Failure | None
    ) -> None:
        """Consume the job, or schedule it again if it failed and has retries left."""
        if state is not FlowState.SUCCESS:
            job = self.job
            policy = job.retry or self.context.flows.retry_policy(job.flow)
            if policy is not None and job.retries < policy.retries:
                await self._retry(policy, state, failure)
                return
        await self._consume(state, provided, failure)

    async def _retry(self, policy: RetryPolicy, state: FlowState, failure: Failure | None) -> None:
        number = self.job.retries + 1
        delay = policy.delay(number)
        saved = None if failure is None else kept_failure(failure)
        try:
            await self.context.endings.retry(self.claim, delay=delay, failure=saved)
        except ClaimLost as exc:
            await self._report_lost_claim(exc)
            return
        self.final = True  # this run's progress is of no use: a retry runs afresh
        self.context.stats.retried += 1
        outcome = _OUTCOMES.get(state, Outcome.FAILURE)
        await self._emit(Event.JOB_RETRIED, retry=number, delay=delay, outcome=str(outcome))

    async def _consume(
        self,
        state: FlowState | None,
        provided: dict[str, Any],
        failure: Failure | None,
        *,
        cancelled: bool = False,
    ) -> None:
        """Consume the job with the outcome of ``state``; with ``cancelled``, ``CANCELLED``
        with the state its flow was left in (``REVERTED``, or ``FAILURE`` if a revert failed)."""
        result: dict[str, Any] = provided
        if cancelled:
            outcome = Outcome.CANCELLED
            result = {"flow_state": None if state is None else str(state), **provided}
        else:
            assert state is not None
            outcome = _OUTCOMES.get(state, Outcome.FAILURE)
            if failure is not None and outcome is not Outcome.SUCCESS:
                result = {"failure": failure.model_dump(mode="json")}
        try:
            await self.context.endings.consume(self.claim, outcome, result)
        except ClaimLost as exc:
            await self._report_lost_claim(exc)
            return
        self.final = True
        self.context.stats.count_outcome(outcome)
        if state is None and self.created_run:
            await self._drop_created_run()  # its flow could not even be built
        await self._emit(Event.JOB_CONSUMED, outcome=str(outcome))

    async def _trash(self, reason: str) -> None:
        logger.warning("job %s (%s): trashed: %s", self.job.id, self.job.flow, reason)
        try:
            await self.context.board.trash(self.claim, reason=reason)
        except ClaimLost as exc:
            await self._report_lost_claim(exc)
            return
        self.final = True
        self.context.stats.trashed += 1
        if self.created_run:
            await self._drop_created_run()
        await self._emit(Event.JOB_TRASHED, reason=reason)

    async def _drop_created_run(self) -> None:
        """Drop the logbook created with the claim of a job whose run never began (it was
        trashed, or cancelled first): a job that cannot run leaves no logbook behind, and a
        revert finds no progress of a run that did nothing. A failure is only logged."""
        store = self.context.endings.store
        if store is None:
            return
        try:
            await store.destroy_logbook(self.job.id)
        except LogBookNotFound:
            pass
        except Exception as exc:
            logger.warning("job %s: dropping its unused logbook failed (%r)", self.job.id, exc)

    async def _release(self, reason: str) -> None:
        if await self._give_back("release", self.context.endings.release):
            self.context.stats.released += 1
            await self._emit(Event.JOB_RELEASED, reason=reason)

    async def _abandon(self, reason: str) -> None:
        if await self._give_back("abandon", self.context.endings.abandon):
            self.context.stats.abandoned += 1
            await self._emit(Event.JOB_ABANDONED, reason=reason)

    async def _give_back(self, verb: str, give_back: Callable[[Claim], Awaitable[Job]]) -> bool:
        """Give the claim back with the board's ``release`` or ``abandon``; whether it did."""
        try:
            await give_back(self.claim)
        except ClaimLost as exc:
            await self._report_lost_claim(exc)
            return False
        except Exception as exc:
            # The claim will expire on its own; say so rather than hide it.
            logger.warning("job %s: %s failed (%r); its lease will expire", self.job.id, verb, exc)
            return False
        return True

    async def _report_lost_claim(self, exc: BaseException) -> None:
        """Count, log and announce (``lease_lost``) the lost claim, once per run."""
        if self.lease_lost:
            return
        self.lease_lost = True
        self.context.stats.lease_lost += 1
        logger.warning("job %s: claim lost (%s)", self.job.id, exc)
        await self._emit(Event.LEASE_LOST, reason=str(exc))
