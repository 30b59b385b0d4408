"""The verbs that end a claim, written once for every board: ``consume`` (the flow ran to an
end), ``retry`` (it failed, and runs again later), ``release`` (its owner let go on purpose),
``abandon`` (a storage or internal failure) and ``trash`` (it can never succeed)."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

from aioconductor._payload import encode_object
from aioconductor._payload import finite_seconds
from aioconductor.boards._cancelling import clean_reason
from aioconductor.boards._part import BoardPart
from aioconductor.boards._support import EncodedObject
from aioconductor.errors import PayloadError
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.models import Outcome

__all__ = ["ClaimEndings"]


class ClaimEndings(BoardPart):
    """The verbs of :class:`~aioconductor.boards.base.JobBoard` that end a claim."""

    max_payload_bytes: int

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
        fenced step. A job cancelled meanwhile (``cancel_requested``) is not scheduled: it
        ends ``COMPLETE`` with outcome ``CANCELLED`` (the failure kept all the same).

        Raises:
            ClaimLost: the claim is not the job's current one (nothing changed).
            PayloadError: a bad delay, or a failure that is not a JSON object within
                ``max_payload_bytes``; nothing changed.
        """
        self._check_open()
        seconds = finite_seconds("delay", delay)
        if failure is None:
            job = await self._retry(claim, seconds, None)
        else:
            data, decoded = encode_object("the run's failure", failure, self.max_payload_bytes)
            job = await self._retry(claim, seconds, EncodedObject(decoded, data))
        if job.state.is_final:  # a cancelled job's retry ended it
            self._finished(job.id)
        return job

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
        reason = clean_reason("trash", reason)
        if isinstance(claim_or_id, Claim):
            job = await self._trash(claim_or_id.job_id, claim_or_id, reason)
        else:
            job = await self._trash(str(claim_or_id), None, reason)
        self._finished(job.id)
        return job

    # -- what the board gives ------------------------------------------------------------------

    @abc.abstractmethod
    async def _consume(
        self, claim: Claim, outcome: Outcome, result: dict[str, Any], result_json: bytes
    ) -> Job: ...

    @abc.abstractmethod
    async def _abandon(self, claim: Claim) -> Job: ...

    @abc.abstractmethod
    async def _release(self, claim: Claim) -> Job: ...

    @abc.abstractmethod
    async def _retry(self, claim: Claim, delay: float, failure: EncodedObject | None) -> Job: ...

    @abc.abstractmethod
    async def _trash(self, job_id: str, claim: Claim | None, reason: str) -> Job: ...
