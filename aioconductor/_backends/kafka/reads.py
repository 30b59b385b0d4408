"""The reads of the Kafka board's view: a job's state (by id, by key, held by a claim), whether
a job is finished (for the group's offset commits), the limits with their live claims, and what
a claim or a renew must not take (a claim's limit key is full). The fold that keeps the state is
:class:`~aioconductor._backends.kafka.view.JobView`, which extends :class:`ViewReads`."""

from __future__ import annotations

from typing import Any

from aioconductor._backends.kafka.limits import Slots
from aioconductor._backends.kafka.records import FINAL
from aioconductor._backends.kafka.records import claimable
from aioconductor._backends.kafka.records import holds
from aioconductor._backends.kafka.records import to_job
from aioconductor.boards._support import lost_message
from aioconductor.boards._support import unclaimable_message
from aioconductor.errors import ClaimLost
from aioconductor.errors import JobNotFound
from aioconductor.errors import UnclaimableJob
from aioconductor.models import Claim
from aioconductor.models import LimitInfo

__all__ = ["ViewReads"]


class ViewReads:
    """What a board reads from its view (every read is of the view as folded so far)."""

    #: job id -> state dict (with ``version`` and ``partition``).
    jobs: dict[str, dict[str, Any]]
    #: idempotency key -> id of the job holding it.
    keys: dict[str, str]
    #: The offset the next record will have (everything before it is applied).
    next_offset: int
    #: The concurrency limits and the claimed jobs of each limit key.
    slots: Slots

    def job(self, job_id: str) -> dict[str, Any]:
        """The job's state.

        Raises:
            JobNotFound: the view does not know it.
        """
        data = self.jobs.get(job_id)
        if data is None:
            raise JobNotFound(f"no job {job_id!r} on this board")
        return data

    def held(self, claim: Claim, verb: str) -> dict[str, Any]:
        """The state of the job ``claim`` holds, for ``verb`` to change.

        Raises:
            JobNotFound: the view does not know the job.
            ClaimLost: ``claim`` is not the job's current claim.
        """
        data = self.job(claim.job_id)
        if not holds(data, claim):
            job = to_job(data)
            raise ClaimLost(lost_message(claim, verb, job.state, job.claim))
        return data

    def by_key(self, key: str) -> dict[str, Any]:
        """The state of the job holding ``key``.

        Raises:
            JobNotFound: no job the view knows holds it.
        """
        job_id = self.keys.get(key)
        if job_id is None:
            raise JobNotFound(f"no job holds the key {key!r} on this board")
        return self.jobs[job_id]

    def finished(self, job_id: str, seq: int | None) -> bool | None:
        """Whether the job whose post record is at offset ``seq - 1`` is finished: final, or
        purged (the view read its post and no longer knows it). None if the view does not
        know the job and ``seq`` is not given."""
        data = self.jobs.get(job_id)
        if data is not None:
            return data["state"] in FINAL
        if seq is None:
            return None
        return seq <= self.next_offset

    def full(self, data: dict[str, Any] | None, op: str, now: float) -> bool:
        """Whether the transition ``op`` (``claim``, or ``renew`` of a lapsed claim) of the job
        ``data`` at ``now`` would be refused for want of a slot of its limit key."""
        return data is not None and self.slots.refuses(op, data, self.jobs, now)

    def to_claim(self, job_id: str, now: float) -> dict[str, Any]:
        """The state of the job ``job_id``, claimable at ``now`` with a slot of its limit key.

        Raises:
            JobNotFound: the view does not know it.
            UnclaimableJob: it is not claimable, or its limit key is full.
        """
        data = self.job(job_id)
        if not claimable(data, now):
            raise UnclaimableJob(unclaimable_message(to_job(data, now), now))
        if self.full(data, "claim", now):
            key = data.get("limit_key")
            raise UnclaimableJob(f"job {job_id} waits for a slot: limit key {key!r} is full")
        return data

    def to_renew(self, claim: Claim, now: float) -> dict[str, Any]:
        """The state of the job ``claim`` holds, for a renew at ``now``.

        Raises:
            JobNotFound: the view does not know the job.
            ClaimLost: ``claim`` is not the job's current claim, or its lease ran out and its
                limit key is full without it.
        """
        data = self.held(claim, "renew")
        if self.full(data, "renew", now):
            raise ClaimLost(
                f"renew of job {claim.job_id} by {claim.owner!r} refused: its lease ran out "
                f"and its limit key {data.get('limit_key')!r} is full"
            )
        return data

    def limits(self, now: float) -> list[LimitInfo]:
        """Every limit set, with the live claims of its key at ``now``."""
        return self.slots.info(self.jobs, now)
