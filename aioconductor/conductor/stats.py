"""`ConductorStats`: the counters a conductor keeps of what it has done."""

from __future__ import annotations

from dataclasses import dataclass

from aioconductor.models import Outcome

__all__ = ["ConductorStats"]


@dataclass
class ConductorStats:
    """What a conductor has done since it was made."""

    claimed: int = 0
    consumed: int = 0
    succeeded: int = 0
    reverted: int = 0
    failed: int = 0
    #: Jobs consumed ``CANCELLED`` (stopped and reverted after ``board.cancel``).
    cancelled: int = 0
    abandoned: int = 0
    #: Claims given back on purpose (a graceful stop): their attempts were not spent.
    released: int = 0
    #: Failed runs scheduled to run again under their job's retry policy.
    retried: int = 0
    trashed: int = 0
    #: Finished jobs this conductor purged under its retention (it purges for its fleet).
    purged: int = 0
    #: Schedule ticks this conductor posted (another conductor may post the others).
    scheduled: int = 0
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
        elif outcome is Outcome.CANCELLED:
            self.cancelled += 1
        else:
            self.failed += 1
