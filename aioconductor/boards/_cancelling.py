"""Cancelling a job, written once for every board: ``cancel``.

A backend gives one primitive, ``_cancel``, which makes the change in one atomic step:

- an ``UNCLAIMED`` or ``SCHEDULED`` job that is not flagged ends at once: ``COMPLETE`` with
  outcome ``CANCELLED``, ``cancel_reason`` set, result ``{}``, its claim (if any) cleared;
- a ``CLAIMED`` job (live or expired lease) is *flagged*: ``cancel_reason`` is set, nothing
  else changes, and its owner is told with a ``CANCEL`` notification (pushed where the
  backend pushes; every board also reports it on the claims ``renew`` hands out, as
  ``Claim.cancel_requested``);
- a job already flagged, or final, is left as it is.

A flag stays until the job ends. The ending verbs keep it in mind: ``retry`` of a flagged job
ends it ``COMPLETE``/``CANCELLED`` instead of scheduling it (a cancelled job never runs again),
with the run's failure kept in ``failures``; ``release`` and ``abandon`` leave it flagged and
claimable, and whoever claims it next gets a claim with ``cancel_requested`` set, reverts what
the earlier runs saved and consumes it ``CANCELLED``. ``consume`` of a flagged job keeps the
outcome its owner gives (a run that finished before its owner saw the flag stands).
"""

from __future__ import annotations

from aioconductor.boards._part import BoardPart
from aioconductor.errors import PayloadError
from aioconductor.models import Job

__all__ = ["DEFAULT_CANCEL_REASON", "MAX_REASON", "Cancels", "clean_reason"]

#: The reason ``cancel`` records when given none.
DEFAULT_CANCEL_REASON = "cancelled"
#: The longest reason kept (a trash reason or a cancel reason), in characters.
MAX_REASON = 4000


def clean_reason(what: str, reason: object) -> str:
    """``reason`` made safe for every backend: a string, cut to :data:`MAX_REASON`
    characters, without NUL or lone surrogates (reasons often quote an exception's text)."""
    if not isinstance(reason, str):
        raise PayloadError(f"the {what} reason must be a string, got {type(reason).__name__}")
    reason = reason.replace("\x00", "\\x00")[:MAX_REASON]
    return reason.encode("utf-8", "backslashreplace").decode("utf-8")


class Cancels(BoardPart):
    """The cancel verb of :class:`~aioconductor.boards.base.JobBoard`."""

    async def cancel(self, job_id: str, *, reason: str = DEFAULT_CANCEL_REASON) -> Job:
        """Cancel a job: end it now if nobody runs it, else ask its owner to stop it.

        An ``UNCLAIMED`` or ``SCHEDULED`` job ends at once, ``COMPLETE`` with outcome
        ``CANCELLED`` (a job given back mid-run ends without a revert of what that run did:
        its logbook tells). A ``CLAIMED`` job is flagged and its owner told: the owner stops
        the flow, reverts the tasks that ran and consumes the job ``CANCELLED``; it is never
        retried, and never trashed for its attempts. If its owner died, the next conductor
        to claim it reverts it from the store without running more tasks. A final job, or
        one already flagged, is left as it is. Use ``trash`` to drop a job at once without a
        revert.

        Args:
            job_id: the job.
            reason: why, kept on the job as ``cancel_reason``.

        Returns:
            The job after the call: ended ``CANCELLED``, flagged (``cancel_requested``), or
            as it was.

        Raises:
            JobNotFound: no such job.
            PayloadError: ``reason`` is not a string.
        """
        self._check_open()
        job = await self._cancel(str(job_id), clean_reason("cancel", reason))
        if job.state.is_final:
            self._finished(job.id)
        return job

    # -- what the board gives ------------------------------------------------------------------

    async def _cancel(self, job_id: str, reason: str) -> Job:
        """End or flag the job as the module says, in one atomic step; the job after it."""
        raise NotImplementedError(f"{type(self).__name__} cannot cancel jobs yet")
