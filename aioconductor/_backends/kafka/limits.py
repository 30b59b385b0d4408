"""Concurrency limits in the Kafka board's fold: the limits set, and the claimed jobs of each
limit key.

A limit is a record of the state topic keyed by the limit key (``~limit:<key>``), holding
``{"op": "limit", "limit": n}``; ``"limit": null`` (or a tombstone) removes it. The newest record
of a key is its limit, so compaction, which keeps it, keeps the limit; a purge writes tombstones
of finished jobs only, never of limits. Every instance folds the records in log order, so all
agree on the limit at each point of the log.

The fold judges each claim record (and each renew of a claim whose lease ran out, which takes
its slot again) against the job's key at that point of the log: if as many other jobs of the key
hold a live claim at the record's timestamp as the limit allows, the record is rejected, on every
instance alike. First writer wins, so racing claims never exceed the limit. The board only picks
jobs that have a slot in its view (:class:`Quota`), so a record loses only a race.

The log is not in timestamp order (each producer stamps its own records), so each decision takes
the time that errs towards refusing. A claim counts the other leases at its own timestamp (the
earliest it can take effect: every lease live then counts). Whether a renew's lease is still live
(a live claim keeps its slot, a lapsed one needs a free one) is judged later: at the key's clock,
the greatest of the renew's timestamp and the ``updated_at`` of every ``CLAIMED`` job of the key
(the times of their claims and renewals, :meth:`Slots.clock`). So a renew stamped before its
lease ran out that lands after a claim which counted that lease as over (stamped after it) needs
a slot, and the claim holds it: a lease the log let go is never taken back for free.

Why that is enough: at every point of the log, for any set of the key's ``CLAIMED`` jobs and any
time ``t`` from the greatest of their ``updated_at`` on, at most the limit of them hold a lease
live at ``t``. A claim keeps this true: it counted the leases live at its timestamp (its
``updated_at``), so at any later ``t`` too. A live renew keeps it: its lease was live at the key's
clock, so it was counted there already. Ends and purges only remove jobs, and a claimed job's
``updated_at`` never goes back (:func:`~aioconductor._backends.kafka.records.renewed`,
:func:`~aioconductor._backends.kafka.records.cancelled`). So no lease a claim counted as over
comes back while that claim holds its slot, and the leases live at the log's own time (its
greatest timestamp so far, past every ``updated_at``) never exceed the limit.

A global clock of the log (the greatest timestamp folded so far) would keep the live fold as
safe, but a replay could not rebuild it: compaction removes records, the greatest timestamps
among them, so a replay would judge some leases at an earlier time than the live fold did. The
key's clock is read from the jobs' states, which compaction keeps: wherever a replay holds the
states the live fold held (every record after the segments the cleaner compacted), it decides
each record alike, whatever else compaction removed.

Claims of lapsed jobs and of due jobs are judged at their record's timestamp, as everywhere in
the fold: the versions order every record of one job (of a renew and a claim of the same job,
the first in the log wins, the other's base is stale), and the writer checked the job claimable
at that timestamp, so a later clock would only accept records the board never writes.

A replay of a compacted log never rejects a claim the live fold accepted: at any offset, every
other job is either in the state it had there, or not known yet (its surviving record lies
later), so the replay counts no more live claims than the live fold did.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from aioconductor.models import LimitInfo

__all__ = ["LIMIT_PREFIX", "Quota", "Slots"]

#: Keys of limit records start with this (a job id is a uuid, never this).
LIMIT_PREFIX = "~limit:"


class Slots:
    """The limits of one namespace and the ``CLAIMED`` jobs (live or lapsed) of each limit
    key, kept by the fold."""

    __slots__ = ("_holders", "limits")

    def __init__(self) -> None:
        #: limit key -> its limit.
        self.limits: dict[str, int] = {}
        #: limit key -> ids of its CLAIMED jobs.
        self._holders: dict[str, set[str]] = {}

    def apply(self, key: str, record: dict[str, Any] | None) -> bool:
        """Fold a limit record of ``key`` (None: a tombstone); whether it was well formed."""
        limit = None if record is None else record.get("limit")
        if limit is None:
            self.limits.pop(key, None)
            return True
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            return False
        self.limits[key] = limit
        return True

    def note(self, job_id: str, current: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
        """Follow the job ``job_id`` from ``current`` to ``new`` (None: unknown, or forgotten);
        whether it let go of a slot of a limit key that has a limit."""
        data = new or current
        key = None if data is None else data.get("limit_key")
        if key is None:
            return False
        was = current is not None and current["state"] == "CLAIMED"
        now = new is not None and new["state"] == "CLAIMED"
        if now and not was:
            self._holders.setdefault(key, set()).add(job_id)
        elif was and not now:
            held = self._holders.get(key)
            if held is not None:
                held.discard(job_id)
                if not held:
                    del self._holders[key]
        return was and not now and key in self.limits

    def live(
        self, key: str, jobs: dict[str, dict[str, Any]], now: float, besides: str | None = None
    ) -> int:
        """How many jobs of ``key`` (other than ``besides``) hold a claim live at ``now``."""
        found = (jobs.get(job_id) for job_id in self._holders.get(key, ()) if job_id != besides)
        return sum(1 for data in found if data is not None and data["expires_at"] > now)

    def clock(self, key: str, jobs: dict[str, dict[str, Any]], now: float) -> float:
        """The key's clock at a record stamped ``now``: the greatest of ``now`` and the
        ``updated_at`` of the ``CLAIMED`` jobs of ``key`` (when their claims and renewals were
        stamped). A renew's lease is judged live or lapsed at it (see the module docstring)."""
        found = (jobs.get(job_id) for job_id in self._holders.get(key, ()))
        stamps = [float(data["updated_at"]) for data in found if data is not None]
        return max([now, *stamps])

    def refuses(self, op: str, data: dict[str, Any], jobs: dict[str, dict[str, Any]],
                now: float) -> bool:  # fmt: skip
        """Whether the transition ``op`` of the job ``data``, stamped ``now``, needs a slot its
        limit key does not have: a claim, or a renew of a claim whose lease ran out by the key's
        :meth:`clock`. The other leases are counted at ``now``."""
        if not self.limits:
            return False
        key = data.get("limit_key")
        limit = None if key is None else self.limits.get(key)
        if key is None or limit is None:
            return False
        if op == "renew":
            if data["expires_at"] > self.clock(key, jobs, now):
                return False  # a live claim keeps its slot, even over a lowered limit
        elif op != "claim":
            return False
        return self.live(key, jobs, now, besides=data["id"]) >= limit

    def info(self, jobs: dict[str, dict[str, Any]], now: float) -> list[LimitInfo]:
        """Every limit, with the live claims of its key at ``now``."""
        return [
            LimitInfo(key=key, limit=limit, claimed=self.live(key, jobs, now))
            for key, limit in self.limits.items()
        ]

    def quota(
        self, jobs: dict[str, dict[str, Any]], now: float, reserved: Collection[str]
    ) -> Quota | None:
        """The free slots of each limited key at ``now``, less the jobs of ``reserved`` (being
        claimed by this instance) that do not hold a live claim yet; None if no key is limited."""
        if not self.limits:
            return None
        quota = Quota(self, jobs, now)
        for job_id in reserved:
            data = jobs.get(job_id)
            if data is not None and not (
                data["state"] == "CLAIMED" and data["expires_at"] > now
            ):  # fmt: skip
                quota.take(data)
        return quota


class Quota:
    """The free slots left to one pick of claimable jobs (``claim_next``, ``claim_batch``)."""

    __slots__ = ("_free", "_jobs", "_now", "_slots")

    def __init__(self, slots: Slots, jobs: dict[str, dict[str, Any]], now: float) -> None:
        self._slots = slots
        self._jobs = jobs
        self._now = now
        #: limit key -> slots free, for the keys met so far.
        self._free: dict[str, int] = {}

    def _left(self, key: str) -> int | None:
        left = self._free.get(key)
        if left is None:
            limit = self._slots.limits.get(key)
            if limit is None:
                return None
            left = self._free[key] = limit - self._slots.live(key, self._jobs, self._now)
        return left

    def admits(self, data: dict[str, Any]) -> bool:
        """Whether the claimable job ``data`` has a slot (a lapsed claim of it held none)."""
        key = data.get("limit_key")
        if key is None:
            return True
        left = self._left(key)
        return left is None or left > 0

    def take(self, data: dict[str, Any]) -> None:
        """Count the job ``data`` as picked: it takes a slot of its key."""
        key = data.get("limit_key")
        if key is not None and self._left(key) is not None:
            self._free[key] -= 1
