"""The Kafka board's fold: every board instance replays the state topic into this view.

The state topic is one partition, so every instance reads the same records in the same order.
Each record names a job (its key), the version of the job it was computed from (``base``) and
the job's full resulting state. The fold accepts a record only when its base is the version the
view holds (first writer wins in log order; a claim must also find the job claimable at the
record's timestamp; a post must find its idempotency key free), so every instance accepts and
rejects the same records and holds the same jobs. Nothing here does I/O: ``apply`` is a pure
function of the records seen, plus the indexes (ready heaps, timers, keys, finished jobs by end
time) that make ``claim_next``, keyed posts and ``purge`` cheap.

A tombstone (a record without a value) purges a *finished* job: the fold forgets it completely
(a finished job never changes, so that is always right). It changes nothing for another job.

Compaction keeps only the last record of a key (and drops tombstones a day later). A record
holding the job's whole state is a correct start on its own, so the fold accepts a record for a
job it does not know if that job's post record (offset ``seq - 1``) lies in a gap this view
skipped (the exact ranges: see ``Gaps``): compaction removed it. If the view read the post, or
held the job since, the job was purged (or its post lost to a held key) and the record is
rejected: a stale claim landing after a tombstone must not bring the job back. That is only right
if the last record of every key was *accepted*: the view marks a job ``dirty`` when its newest
record was rejected, and the board re-publishes its state (a ``restate`` record, which changes
nothing) until it is clean; a rejected record of a job the view does not know makes it a
``ghost``, and the board writes a tombstone, so compaction drops it. The cleaner may keep a
rejected post whose tombstone lies beyond the segments it cleaned, and drop the post of the job
that held the key: so the lowest ``seq`` holds a key, and a job started from a compacted record
forgets an unchanged holder of its key posted after it (a post that lost the key: a ghost).

Schedule ticks are decided here too. A ``tick`` record, keyed by the schedule
(``~schedule:<name>``), carries the tick and the new job's whole state: it is accepted only if
the tick is after the schedule's last one, which it advances, and then posts the job as a keyed
post would (or hands back the key's holder); the tick record is the job's post record (``seq``).
Compaction must keep neither too little nor too much: the job is marked ``dirty`` (the board
restates it under its own key, so it outlives the tick record), and the schedule ``stale`` until
its newest record is an accepted ``last`` record (the tick alone), so a compacted log never
holds a tick record that would post its job again after it was purged.

A ``cancel`` record is a transition like the others (computed from the version it names): it
ends a job nobody runs, or flags a claimed one, and the fold then pushes ``CANCEL`` to the
streams of every instance, the owner's among them. A claim record, or a renew of a lapsed claim,
loses if the job's limit key has no slot at that point of the log, and every end of a limited
claim is pushed as ``SLOT_FREED`` (:mod:`~aioconductor._backends.kafka.limits`).

Time: each producer stamps its records, so the log is not in timestamp order, and the fold reads
no clock of its own, only what the records carry. A claim is judged at its record's timestamp:
whether the job is claimable (due, or its lease over) and how many other leases of its limit key
are live. One job's records are ordered by their versions, so no later clock is needed there.
Whether a renewed lease is still live, which decides whether a renew of a limited job needs a
slot, is judged at its limit key's clock: the greatest of the record's timestamp and the
``updated_at`` of the key's claimed jobs, so a renew landing after a claim that counted its lease
as over needs a slot. Both come from the records and the jobs' states, never from the greatest
timestamp folded so far (compaction may remove that record), so a replay of a compacted log
judges each record as the live fold did.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable, Collection
from typing import Any

from aioconductor._backends.kafka.indexes import Ended
from aioconductor._backends.kafka.indexes import Gaps
from aioconductor._backends.kafka.indexes import Ready
from aioconductor._backends.kafka.indexes import best_ready
from aioconductor._backends.kafka.indexes import trim
from aioconductor._backends.kafka.limits import LIMIT_PREFIX
from aioconductor._backends.kafka.limits import Slots
from aioconductor._backends.kafka.reads import ViewReads
from aioconductor._backends.kafka.records import FINAL
from aioconductor._backends.kafka.records import TIMED
from aioconductor._backends.kafka.records import claimable
from aioconductor._backends.kafka.records import postable
from aioconductor._models import build
from aioconductor.models import JobNotification
from aioconductor.models import JobState
from aioconductor.models import NotificationKind

__all__ = ["CONDUCTOR_PREFIX", "SCHEDULE_PREFIX", "SYNC_KEY", "Applied", "JobView"]

#: The key of barrier records (``sync``): compacted to one, never a job.
SYNC_KEY = "~sync"
#: Keys of conductor registrations start with this (a job id is a uuid, never this).
CONDUCTOR_PREFIX = "~conductor:"
#: Keys of schedules' tick records start with this.
SCHEDULE_PREFIX = "~schedule:"


class Applied:
    """What the fold made of one of this instance's own records."""

    __slots__ = ("accepted", "data")

    def __init__(self, accepted: bool, data: dict[str, Any] | None) -> None:
        self.accepted = accepted
        #: The job's state after the record (the winner's state when it was rejected; for a
        #: post whose key was held, the holder's; for a tick, its job's or the key holder's).
        self.data = data


class JobView(ViewReads):
    """The jobs, conductors and limits of one namespace, folded from its state topic.

    Args:
        notify: called with a notification when a job becomes claimable.
    """

    def __init__(self, notify: Callable[[JobNotification], None]) -> None:
        self._notify = notify
        #: job id -> state dict (with ``version`` and ``partition``).
        self.jobs: dict[str, dict[str, Any]] = {}
        self.conductors: dict[str, dict[str, Any]] = {}
        #: idempotency key -> id of the job holding it.
        self.keys: dict[str, str] = {}
        #: The offset the next record will have (everything before it is applied).
        self.next_offset = 0
        #: rids of records this instance produced and waits for -> what the fold made of them.
        self.mine: dict[str, Applied | None] = {}
        #: job id -> (monotonic time it turned dirty, whether our own record was rejected).
        self.dirty: dict[str, tuple[float, bool]] = {}
        #: id of a job the view does not know whose newest record was rejected -> as ``dirty``.
        self.ghosts: dict[str, tuple[float, bool]] = {}
        #: schedule name -> its last posted tick.
        self.ticks: dict[str, float] = {}
        #: schedule -> as ``dirty``, while its newest record is not an accepted ``last``.
        self.stale_ticks: dict[str, tuple[float, bool]] = {}
        #: job id -> offset of the tombstone that purged it, for ids a purge waits for.
        self.purged: dict[str, int] = {}
        self._watched: dict[str, int] = {}
        #: The offsets this view skipped (compaction leaves gaps).
        self._gaps = Gaps()
        #: partition -> heap of (-priority, seq, ready version, id) of claimable jobs.
        self._ready: dict[int, list[Ready]] = {}
        self._ready_version: dict[str, int] = {}
        #: (time, id): when a scheduled job falls due or a lease expires.
        self._timers: list[tuple[float, str]] = []
        self._ended = {state: Ended() for state in FINAL}
        #: The concurrency limits and the claimed jobs of each limit key.
        self.slots = Slots()

    # -- the fold ------------------------------------------------------------------------------

    def apply(self, offset: int, key: bytes | None, value: bytes | None, ts_ms: int) -> None:
        """Fold one record of the state topic (a malformed one is skipped, on every instance)."""
        if offset > self.next_offset:
            self._gaps.skip(self.next_offset, offset)
        self.next_offset = offset + 1
        if key is None:
            return
        try:
            job_key = key.decode("utf-8")
            record = {"op": None} if value is None else json.loads(value)
            op = record["op"]
        except (ValueError, KeyError, TypeError):
            return
        if op in ("post", "tick"):
            self._gaps.read_post()
        if job_key.startswith(CONDUCTOR_PREFIX):
            self._apply_conductor(job_key[len(CONDUCTOR_PREFIX) :], op, record)
            return
        rid = str(record.get("rid"))  # "None" is no rid of ours
        mine = rid in self.mine
        if job_key.startswith(LIMIT_PREFIX):
            data = None
            accepted = self.slots.apply(
                job_key[len(LIMIT_PREFIX) :], None if value is None else record
            )
        elif job_key.startswith(SCHEDULE_PREFIX):
            name = job_key[len(SCHEDULE_PREFIX) :]
            accepted, data = self._apply_tick(name, op, record, offset, mine)
            if accepted and op == "last":
                self.stale_ticks.pop(name, None)
            elif name in self.ticks:
                # Its newest record holds a job (or lost): restate the last tick alone.
                self._mark(self.stale_ticks, name, mine)
        elif not isinstance(op, str) or op == "sync" or job_key == SYNC_KEY:
            if value is None and job_key != SYNC_KEY:
                self._apply_tombstone(job_key, offset)
            return
        else:
            accepted, data = self._apply_job(job_key, op, record, offset, ts_ms / 1000)
            if accepted:
                self.dirty.pop(job_key, None)
            else:
                # The newest record of this key lost: after compaction it would be the only one
                # left, so the job must be restated, or the record tombstoned (see the docstring).
                self._mark(self.dirty if job_key in self.jobs else self.ghosts, job_key, mine)
        if mine and self.mine[rid] is None:
            # The first copy counts: a producer retry (without idempotence) can append a
            # record twice, and the copy is rejected because the first one was applied.
            self.mine[rid] = Applied(accepted, data)

    @staticmethod
    def _mark(marks: dict[str, tuple[float, bool]], key: str, mine: bool) -> None:
        previous = marks.get(key)
        since = previous[0] if previous else time.monotonic()
        marks[key] = (since, mine or bool(previous and previous[1]))

    def _apply_tick(
        self, name: str, op: object, record: dict[str, Any], offset: int, mine: bool
    ) -> tuple[bool, dict[str, Any] | None]:
        tick, last, new = record.get("tick"), self.ticks.get(name), record.get("job")
        if isinstance(tick, bool) or not isinstance(tick, (int, float)):
            return False, None
        if op == "last":
            # A restate of the last tick: later than the view's only where compaction
            # removed the tick record itself.
            if last is not None and last > tick:
                return False, None
            self.ticks[name] = float(tick)
            return True, None
        if op != "tick" or (last is not None and last >= tick) or not postable(new):
            return False, None
        self.ticks[name] = float(tick)
        holder = self.jobs.get(new["id"]) or self.jobs.get(self.keys.get(new.get("key") or "", ""))
        if holder is not None:
            return True, holder
        new["seq"] = offset + 1
        self._store(new, "post", None)
        # Its only record is the schedule's, which the next tick or restate replaces.
        self._mark(self.dirty, new["id"], mine)
        return True, new

    def _apply_job(
        self, job_id: str, op: str, record: dict[str, Any], offset: int, now: float
    ) -> tuple[bool, dict[str, Any] | None]:
        new, current = record.get("job"), self.jobs.get(job_id)
        if not postable(new) or new["id"] != job_id:
            return False, current
        if op == "post":
            if current is not None:
                return False, current
            holder = self.keys.get(new.get("key") or "")
            if holder is not None:
                return False, self.jobs[holder]
            # Post order is the post record's place in the one-partition log.
            new["seq"] = offset + 1
        elif current is not None:
            base = record.get("base")
            if base == current["version"]:
                if op == "restate":
                    return True, current
                if op == "claim" and not claimable(current, now):
                    return False, current
                if self.slots.refuses(op, current, self.jobs, now):
                    return False, current  # its limit key has no slot for it here
            elif not (
                isinstance(base, int) and base > current["version"] >= 1
                and current["seq"] <= self._gaps.end
            ):  # fmt: skip
                return False, current
            # Else the versions between lie in a gap compaction left (a job started from its
            # tick record, whose own records were compacted to the last): this one holds all.
        else:
            seq = new.get("seq")
            if not isinstance(seq, int) or not self._gaps.skipped(seq - 1):
                # This view read the job's post record (offset seq - 1), or held the job since:
                # it was purged, or its post lost to a held key.
                return False, None
            # A compacted log starts with this record, which holds the whole state.
        self._store(new, op, current)
        return True, new

    def _apply_tombstone(self, job_id: str, offset: int) -> None:
        self.ghosts.pop(job_id, None)
        data = self.jobs.get(job_id)
        if data is None:
            return
        if data["state"] not in FINAL:
            # Never written for a live job; if one was, it must not be the job's last record.
            self.dirty.setdefault(job_id, (time.monotonic(), False))
            return
        self._forget(data)
        if job_id in self._watched:
            self.purged[job_id] = offset

    def _forget(self, data: dict[str, Any]) -> None:
        job_id = data["id"]
        del self.jobs[job_id]
        if data.get("key") is not None and self.keys.get(data["key"]) == job_id:
            del self.keys[data["key"]]
        if data["state"] in FINAL:
            self._ended[data["state"]].remove(job_id)
        self._ready_version.pop(job_id, None)
        self.dirty.pop(job_id, None)
        self.slots.note(job_id, data, None)
        self._gaps.forget(data["seq"] - 1)
        self._timers = trim(self._ready, self._ready_version, self._timers, self.jobs)

    def _store(self, new: dict[str, Any], op: str, current: dict[str, Any] | None) -> None:
        job_id = new["id"]
        self.jobs[job_id] = new
        if current is None and new.get("key") is not None:
            holder = self.jobs.get(self.keys.get(new["key"], ""))
            if holder is not None and holder["seq"] > new["seq"] and holder["version"] == 1:
                # A record that starts a job from a compacted log (its post lay in a gap) and
                # an unchanged holder posted after it: that post lost the key to this job, and
                # the cleaner kept it while its tombstone lay beyond (see the docstring).
                self._forget(holder)
                self._mark(self.ghosts, holder["id"], False)
            self.keys.setdefault(new["key"], job_id)
        if current is not None and current["state"] in FINAL:
            self._ended[current["state"]].remove(job_id)
        if new["state"] in FINAL:
            self._ended[new["state"]].add(job_id, new["updated_at"])
        freed = self.slots.note(job_id, current, new)
        self._index(new, op, current)
        if freed and new["state"] != "UNCLAIMED":  # a give-back is announced ABANDONED
            self._announce(new, NotificationKind.SLOT_FREED)
        elif op == "cancel" and new["state"] == "CLAIMED":
            self._announce(new, NotificationKind.CANCEL)

    def _apply_conductor(self, owner: str, op: object, record: dict[str, Any]) -> None:
        if op == "unregister":
            self.conductors.pop(owner, None)
        elif op == "register" and isinstance(record.get("info"), dict):
            self.conductors[owner] = record["info"]

    # -- purges --------------------------------------------------------------------------------

    def watch(self, job_ids: Collection[str], on: bool) -> None:
        """Start (``on``) or stop noting the offset of the tombstone that purges each of
        ``job_ids`` in :attr:`purged` (a purge counts the jobs its own tombstones purged)."""
        for job_id in job_ids:
            count = self._watched.get(job_id, 0) + (1 if on else -1)
            if count > 0:
                self._watched[job_id] = count
            else:
                self._watched.pop(job_id, None)
                self.purged.pop(job_id, None)

    def ended_before(self, cutoff: float, states: Collection[JobState], limit: int) -> list[str]:
        """The ids of up to ``limit`` jobs in the final ``states`` that ended (``updated_at``)
        at or before ``cutoff``, oldest first."""
        found = [e for state in states for e in self._ended[state.value].before(cutoff, limit)]
        return [job_id for _, job_id in sorted(found)[:limit]]

    def sizes(self) -> dict[str, int]:
        """How many entries each map and index of the view holds (for tests and metrics)."""
        return {
            "jobs": len(self.jobs),
            "keys": len(self.keys),
            "ready_version": len(self._ready_version),
            "ready": sum(len(heap) for heap in self._ready.values()),
            "timers": len(self._timers),
            "ended": sum(len(e.live) + len(e.heap) for e in self._ended.values()),
            "dirty": len(self.dirty),
            "ghosts": len(self.ghosts),
            "gaps": self._gaps.sizes()[0],
            "forgotten": self._gaps.sizes()[1],
        }

    # -- indexes -------------------------------------------------------------------------------

    def _index(self, data: dict[str, Any], op: str, current: dict[str, Any] | None) -> None:
        state = data["state"]
        if state == "UNCLAIMED":
            self._make_ready(data)
            if op in ("post", "abandon", "release"):
                posted = op == "post"
                self._announce(
                    data, NotificationKind.POSTED if posted else NotificationKind.ABANDONED
                )
        elif state == "SCHEDULED" and data["not_before"] is not None:
            heapq.heappush(self._timers, (data["not_before"], data["id"]))
        elif state == "CLAIMED" and (
            current is None or current["expires_at"] != data["expires_at"]
        ):
            # (A cancel flags a claim and keeps its lease: its timer is there already.)
            heapq.heappush(self._timers, (data["expires_at"], data["id"]))

    def _announce(self, data: dict[str, Any], kind: NotificationKind) -> None:
        self._notify(
            build(JobNotification, job_id=data["id"], kind=kind, priority=data["priority"])
        )

    def _make_ready(self, data: dict[str, Any]) -> None:
        job_id = data["id"]
        version = self._ready_version.get(job_id, 0) + 1
        self._ready_version[job_id] = version
        heap = self._ready.setdefault(data["partition"], [])
        heapq.heappush(heap, (-data["priority"], data["seq"], version, job_id))

    def promote(self, now: float) -> None:
        """Make jobs whose delay passed or lease expired ready, and announce them."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, job_id = heapq.heappop(timers)
            data = self.jobs.get(job_id)
            if data is None or data["state"] not in TIMED or not claimable(data, now):
                continue
            deadline = data["expires_at"] if data["state"] == "CLAIMED" else data["not_before"]
            if when != deadline:
                # A timer of an earlier state (the lease of a claim that was retried): the
                # current deadline has a timer of its own, which announces the job once.
                continue
            self._make_ready(data)
            expired = data["state"] == "CLAIMED"
            self._announce(data, NotificationKind.EXPIRED if expired else NotificationKind.DUE)

    def next_timer(self) -> float | None:
        """When the earliest delay or lease falls due (epoch seconds), if any."""
        return self._timers[0][0] if self._timers else None

    def candidates(
        self,
        now: float,
        limit: int,
        prefer: Collection[int],
        skip: Collection[str],
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` claimable jobs in claim order, from the ``prefer`` partitions first
        (the ones this instance's consumer-group member holds), then from any partition,
        passing over ``skip`` (jobs this instance is claiming now) and the jobs of limit keys
        without a free slot (no more of a key than its free slots)."""
        self.promote(now)
        picked: list[dict[str, Any]] = []
        taken: set[str] = set()
        # Jobs of a limit key without a free slot are passed over (a batch takes no more).
        quota = self.slots.quota(self.jobs, now, skip)
        for partitions in (prefer, None):
            heaps = [h for p, h in self._ready.items() if partitions is None or p in partitions]
            ready, left = self._ready_version, limit - len(picked)
            picked.extend(best_ready(heaps, self.jobs, ready, now, left, skip, taken, quota))
            if len(picked) >= limit:
                break
        return picked
