"""The SQLite board's sweeps: what another process did, found by reading the file.

A process cannot hear another's writes, so a stream sweeps every ``poll_interval``. A sweep's
cursor is ``(rev, time)``: it reads, from one snapshot, the jobs claimable now that were written
since ``rev`` (by anyone) or whose ``ready_at`` fell in ``(time, now]`` (delays passed, leases
expired), and the writes since ``rev`` that made nothing claimable but are to be told: a
CLAIMED job flagged by ``cancel`` since ``rev`` (its ``cancel_rev``; ``CANCEL``, so its owner
stops it), and the end of a limited claim (``SLOT_FREED``, so the jobs its key held back are
claimed). Writers are serialised and every write moves the namespace's counter, so a sweep
never misses a write committed after its snapshot.

What this board object pushed to its own streams already (its writes' ``rev``) is skipped.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from aioconductor._backends.sqlite import board_schema as sql
from aioconductor._models import build
from aioconductor.models import JobNotification
from aioconductor.models import NotificationKind

__all__ = ["PushedRevs", "Swept", "read_sweep"]

#: How long a local push is remembered so that sweeps skip it; afterwards a stream that had not
#: swept since may get the job twice, which is harmless.
_PUSHED_TTL = 60.0

#: What a sweep read: its rows, the counter and board time of its snapshot, the next deadline.
Swept = tuple[list[Any], int, float, float | None]


def read_sweep(conn: sqlite3.Connection, namespace: str, cursor: Any) -> Swept:
    """In a read transaction: the rows a sweep from ``cursor`` reports (every claimable job
    for None), the namespace's counter and the board time now, and the next ``ready_at``."""
    now = time.time()
    params: dict[str, Any] = {"ns": namespace, "now": now}
    (rev,) = conn.execute(sql.REV, params).fetchone()
    if cursor is None:
        rows = conn.execute(sql.SWEEP_ALL, params).fetchall()
    else:
        since_rev, since = cursor
        since_params = {**params, "rev": since_rev, "since": since}
        rows = conn.execute(sql.SWEEP_SINCE, since_params).fetchall()
    (next_due,) = conn.execute(sql.NEXT_DUE, params).fetchone()
    return rows, rev, now, next_due


def _told(kind: NotificationKind) -> NotificationKind | None:
    """What a push of ``kind`` told: that a job is claimable (None), or a ``CANCEL`` or
    ``SLOT_FREED`` (which leave a later sweep to announce the job once it is claimable)."""
    return kind if kind in (NotificationKind.CANCEL, NotificationKind.SLOT_FREED) else None


class PushedRevs:
    """The writes (by ``rev``) this board object pushed to its streams, so sweeps skip them."""

    def __init__(self) -> None:
        #: (rev, what it told) -> monotonic time of the push.
        self._pushed: dict[tuple[int, NotificationKind | None], float] = {}

    def add(self, rev: int, kind: NotificationKind) -> None:
        """Note that the write ``rev`` was pushed as ``kind``."""
        self._pushed[rev, _told(kind)] = time.monotonic()

    def pushed(self, rev: int, kind: NotificationKind) -> bool:
        """Whether the write ``rev`` was pushed as ``kind`` (or, for a claimable job, as any
        kind that announces it claimable)."""
        return (rev, _told(kind)) in self._pushed

    def forget(self, poll_interval: float) -> None:
        """Forget the pushes older than any sweep still to come would read."""
        horizon = time.monotonic() - max(_PUSHED_TTL, 10 * poll_interval)
        pushed = self._pushed
        # Entries are in push order, so the old ones are at the front.
        while pushed:
            entry = next(iter(pushed))
            if pushed[entry] > horizon:
                break
            del pushed[entry]

    def notes(self, rows: list[Any], cursor: Any) -> list[JobNotification]:
        """The notifications of a sweep's ``rows`` from ``cursor`` (:func:`read_sweep`)."""
        notes: list[JobNotification] = []
        for job_id, priority, state, token, job_rev, _, claimable, cancel_rev, freed in rows:
            told: list[tuple[int, NotificationKind]] = []
            if cursor is None:
                told.append((job_rev, NotificationKind.WAITING))
            else:
                if state == "CLAIMED" and cancel_rev is not None and cancel_rev > cursor[0]:
                    told.append((cancel_rev, NotificationKind.CANCEL))
                if claimable:
                    told.append((job_rev, sql.sweep_kind(state, token)))
                elif freed:
                    told.append((job_rev, NotificationKind.SLOT_FREED))
            # What this object pushed is skipped (a claim since would give the row a new rev).
            notes.extend(
                build(JobNotification, job_id=job_id, kind=kind, priority=priority)
                for rev, kind in told
                if cursor is None or not self.pushed(rev, kind)
            )
        return notes
