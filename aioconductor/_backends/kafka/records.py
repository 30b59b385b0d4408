"""What the Kafka board writes and how it reads it: a posted job's state, each transition of it
(a :class:`Write` of the state topic), the records of the jobs and dead-letter topics, a
state's reading (claimable, as readers see it, as a ``Job``, in claim order), and the clock
that stamps them all (:func:`clock_ms`).

A job's state is a plain dict (the value the state topic carries, see
:mod:`~aioconductor._backends.kafka.view`). Each transition here is a pure function of the job's
current state and the time ``now`` (epoch seconds); the log bumps the version and writes it
(:meth:`~aioconductor._backends.kafka.log.StateLog.change`). Counters default for state records
written before the board kept them (``releases``, ``abandons``, ``retries``, ``failures``), and
so do the idempotency ``key``, the ``cancel_reason`` and the ``limit_key`` (None). A claim and a
renew stamp ``updated_at`` with their record's timestamp, and while a job stays claimed its
``updated_at`` never goes back (a renew or a cancel's flag stamped earlier keeps it): the fold's
limit decisions read it (:mod:`~aioconductor._backends.kafka.limits`).

A cancel is a transition too (:func:`cancelled`): it ends a job nobody runs, or flags a claimed
one (``cancel_reason`` set, nothing else), and a flagged job's :func:`retried` ends it
``CANCELLED`` instead of scheduling it. Every claim of a flagged job says so
(``Claim.cancel_requested``).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterable
from typing import Any, TypeGuard

from aioconductor._models import build
from aioconductor.boards._support import PostSpec
from aioconductor.models import MAX_KEPT_FAILURES
from aioconductor.models import Claim
from aioconductor.models import ConductorInfo
from aioconductor.models import Job
from aioconductor.models import JobNotification
from aioconductor.models import JobState
from aioconductor.models import NotificationKind
from aioconductor.models import Outcome
from aioconductor.models import RetryPolicy

__all__ = [
    "FINAL",
    "TIMED",
    "Write",
    "alive_conductors",
    "cancelled",
    "claimable",
    "clock",
    "clock_ms",
    "conductor_info",
    "consumed",
    "dead_letter_record",
    "encode",
    "given_back",
    "holds",
    "in_claim_order",
    "jobs_record",
    "new_job",
    "postable",
    "released",
    "renewed",
    "retried",
    "taken",
    "to_job",
    "transition",
    "trashed",
    "visible_state",
    "waiting",
]

#: The states a job never leaves.
FINAL = ("COMPLETE", "TRASHED")
#: The states with a deadline: a due delay, a lease's expiry.
TIMED = ("SCHEDULED", "CLAIMED")

#: The fields of a posted job that its jobs-topic record carries.
_JOBS_FIELDS = (
    "id",
    "name",
    "flow",
    "args",
    "priority",
    "max_attempts",
    "retry",
    "not_before",
    "created_at",
    # The post record's offset in the state topic plus one: a group member that meets a job its
    # view no longer knows tells a purged job (seq folded) from one not yet folded.
    "seq",
)
#: The longest heartbeat a conductor registration keeps (a float of years would not do).
_MAX_TTL = 10 * 365 * 86400.0


_latest_ms = 0


def clock_ms() -> int:
    """Now, in whole milliseconds since the epoch (the resolution of Kafka timestamps).

    This is the board's only clock: the fold judges a record by its timestamp, so a job the
    view calls claimable at ``clock()`` is claimable to the fold under a record stamped then (a
    finer clock would see a job due a fraction of a millisecond before its claim record does).
    It never goes back in one process, even if the system clock is stepped back.
    """
    global _latest_ms
    _latest_ms = max(_latest_ms, int(time.time() * 1000))
    return _latest_ms


def clock() -> float:
    """:func:`clock_ms` in epoch seconds."""
    return clock_ms() / 1000


def encode(value: dict[str, Any]) -> bytes:
    """A record's value: compact JSON."""
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def claimable(data: dict[str, Any], now: float) -> bool:
    """Whether the job state ``data`` can be claimed at ``now`` (epoch seconds)."""
    state = data["state"]
    if state == "UNCLAIMED":
        return True
    if state == "SCHEDULED":
        not_before = data["not_before"]
        return not_before is None or not_before <= now
    if state == "CLAIMED":
        return bool(data["expires_at"] <= now)
    return False


def visible_state(data: dict[str, Any], now: float) -> str:
    """The state readers see at ``now``: a scheduled job whose time came is UNCLAIMED."""
    state: str = data["state"]
    if state == "SCHEDULED" and claimable(data, now):
        return "UNCLAIMED"
    return state


def to_job(data: dict[str, Any], now: float | None = None) -> Job:
    """A ``Job`` from a state dict (its state as seen at ``now``, when given)."""
    owner = data["owner"]
    cancel_reason = data.get("cancel_reason")
    claim = None
    if owner is not None:
        claim = build(
            Claim,
            job_id=data["id"],
            owner=owner,
            token=data["token"],
            expires_at=data["expires_at"],
            cancel_requested=cancel_reason is not None and data["state"] not in FINAL,
        )
    outcome = data["outcome"]
    retry = data.get("retry")
    state = data["state"] if now is None else visible_state(data, now)
    return build(
        Job,
        id=data["id"],
        name=data["name"],
        flow=data["flow"],
        args=data["args"],
        key=data.get("key"),
        headers=data.get("headers") or {},
        priority=data["priority"],
        seq=data["seq"],
        created_at=data["created_at"],
        updated_at=data["updated_at"],
        not_before=data["not_before"],
        attempts=data["attempts"],
        max_attempts=data["max_attempts"],
        state=JobState(state),
        claim=claim,
        outcome=None if outcome is None else Outcome(outcome),
        result=data["result"],
        trash_reason=data["trash_reason"],
        releases=data.get("releases", 0),
        abandons=data.get("abandons", 0),
        retries=data.get("retries", 0),
        retry=None if retry is None else RetryPolicy.model_validate(retry),
        failures=list(data.get("failures", ())),
        cancel_reason=cancel_reason,
        limit_key=data.get("limit_key"),
    )


class Write:
    """One record of the state topic: a key, its JSON value (None: a tombstone), its
    timestamp."""

    __slots__ = ("key", "ts_ms", "value")

    def __init__(self, key: str, value: dict[str, Any] | None, ts_ms: int) -> None:
        self.key = key
        self.value = value
        self.ts_ms = ts_ms


def transition(op: str, data: dict[str, Any], new: dict[str, Any], ts_ms: int) -> Write:
    """The record of the transition ``op`` of the job state ``data`` to ``new`` (whose version
    it sets: one past ``data``'s, which is the record's base)."""
    new["version"] = data["version"] + 1
    return Write(data["id"], {"op": op, "base": data["version"], "job": new}, ts_ms)


def new_job(spec: PostSpec, now: float, partitions: int) -> dict[str, Any]:
    """The state of the job ``spec`` posts at ``now``, on one of the jobs topic's
    ``partitions`` (by its id's hash)."""
    not_before = spec.not_before
    if spec.delay:
        not_before = now + spec.delay
    scheduled = not_before is not None and not_before > now
    job_id = spec.id
    return {
        "id": job_id,
        "key": spec.key,
        "limit_key": spec.limit_key,
        "name": spec.name,
        "flow": spec.flow,
        "args": spec.args,
        "headers": spec.headers,
        "priority": spec.priority,
        "seq": 0,  # the fold sets it: the post record's offset
        "created_at": now,
        "updated_at": now,
        "not_before": not_before,
        "attempts": 0,
        "max_attempts": spec.max_attempts,
        "releases": 0,
        "abandons": 0,
        "retries": 0,
        "retry": None if spec.retry_json is None else json.loads(spec.retry_json),
        "failures": [],
        "token": 0,
        "state": "SCHEDULED" if scheduled else "UNCLAIMED",
        "owner": None,
        "expires_at": None,
        "outcome": None,
        "result": None,
        "trash_reason": None,
        "cancel_reason": None,
        "version": 1,
        "partition": zlib.crc32(job_id.encode()) % partitions,
    }


def postable(new: object) -> TypeGuard[dict[str, Any]]:
    """Whether a record's ``job`` is a job's state (a dict with an id and a str or no key)."""
    return (
        isinstance(new, dict)
        and isinstance(new.get("id"), str)
        and isinstance(new.get("key") or "", str)
    )


def holds(data: dict[str, Any] | None, claim: Claim) -> bool:
    """Whether ``claim`` is the current claim of the job state ``data``."""
    return (
        data is not None
        and data["state"] == "CLAIMED"
        and data["owner"] == claim.owner
        and data["token"] == claim.token
    )


def taken(data: dict[str, Any], now: float, owner: str, lease: float) -> dict[str, Any]:
    """``data`` claimed by ``owner`` at ``now`` for ``lease`` seconds: one more attempt, a
    new token."""
    return {
        **data,
        "attempts": data["attempts"] + 1,
        "token": data["token"] + 1,
        "state": "CLAIMED",
        "owner": owner,
        "expires_at": now + lease,
        "updated_at": now,
    }


def renewed(data: dict[str, Any], now: float, lease: float) -> dict[str, Any]:
    """``data`` with its claim's lease renewed at ``now`` (its ``updated_at`` never goes back:
    the fold's limit decisions read it, see :mod:`~aioconductor._backends.kafka.limits`)."""
    return {**data, "expires_at": now + lease, "updated_at": max(now, data["updated_at"])}


def consumed(
    data: dict[str, Any], now: float, outcome: Outcome, result: dict[str, Any]
) -> dict[str, Any]:
    """``data`` complete at ``now`` with ``outcome`` and ``result``."""
    return {
        **data,
        "state": "COMPLETE",
        "outcome": outcome.value,
        "result": result,
        "updated_at": now,
    }


def given_back(data: dict[str, Any], now: float, spent: bool) -> dict[str, Any]:
    """``data`` unclaimed at ``now``; its attempt ``spent`` (counted in ``abandons``, as an
    abandon does) or given back (counted in ``releases``)."""
    new = {**data, "state": "UNCLAIMED", "owner": None, "expires_at": None,
           "updated_at": now}  # fmt: skip
    if spent:
        new["abandons"] = data.get("abandons", 0) + 1
    else:
        new["releases"] = data.get("releases", 0) + 1
        new["attempts"] = data["attempts"] - 1
    return new


def released(data: dict[str, Any], now: float) -> dict[str, Any]:
    """``data`` released by its owner at ``now``: the attempt given back, unless the job was
    given back ``max_attempts`` times already (then it is spent, as by an abandon)."""
    # Decided from the state the record is based on: the fold accepts it only if that is still
    # the job's state, so racing give-backs cannot pass the cap.
    return given_back(data, now, spent=data.get("releases", 0) >= data["max_attempts"])


def retried(
    data: dict[str, Any], now: float, delay: float, failure: dict[str, Any] | None
) -> dict[str, Any]:
    """``data`` scheduled again at ``now`` + ``delay``: the attempt given back, one more retry,
    ``failure`` kept (the last ``MAX_KEPT_FAILURES``). A flagged job (cancelled while claimed)
    ends ``COMPLETE``/``CANCELLED`` instead, its failure kept, its retries as they were."""
    failures = data.get("failures", [])
    if failure is not None:
        failures = [*failures, failure][-MAX_KEPT_FAILURES:]
    if data.get("cancel_reason") is not None:
        return {**_ended_cancelled(data, now), "failures": failures}
    return {
        **data,
        "state": "SCHEDULED",
        "owner": None,
        "expires_at": None,
        "not_before": now + delay,
        "attempts": data["attempts"] - 1,
        "retries": data.get("retries", 0) + 1,
        "failures": failures,
        "updated_at": now,
    }


def cancelled(data: dict[str, Any], now: float, reason: str) -> dict[str, Any]:
    """``data`` cancelled at ``now`` for ``reason``: flagged if ``CLAIMED`` (its owner is to
    stop it), else ended ``COMPLETE``/``CANCELLED`` with its claim cleared. Only for a job that
    is neither final nor flagged (the board checks; the fold accepts it only on that state)."""
    if data["state"] == "CLAIMED":
        # A flag keeps the claim: its updated_at never goes back (as a renew's).
        return {**data, "cancel_reason": reason, "updated_at": max(now, data["updated_at"])}
    ended = _ended_cancelled({**data, "cancel_reason": reason}, now)
    return {**ended, "owner": None, "expires_at": None}


def _ended_cancelled(data: dict[str, Any], now: float) -> dict[str, Any]:
    return {**data, "state": "COMPLETE", "outcome": "CANCELLED", "result": {},
            "updated_at": now}  # fmt: skip


def trashed(data: dict[str, Any], now: float, reason: str) -> dict[str, Any]:
    """``data`` trashed at ``now`` for ``reason``."""
    return {**data, "state": "TRASHED", "trash_reason": reason, "updated_at": now}


def conductor_info(
    owner: str,
    name: str,
    ttl: float,
    meta: dict[str, Any],
    previous: dict[str, Any] | None,
    now: float,
) -> dict[str, Any]:
    """A conductor's registration at ``now`` (its ``previous`` one keeps its start time)."""
    return {
        "owner": owner,
        "name": name,
        "started_at": previous["started_at"] if previous else now,
        "heartbeat_at": now,
        "expires_at": now + min(ttl, _MAX_TTL),
        "meta": meta,
    }


def jobs_record(data: dict[str, Any]) -> dict[str, Any]:
    """The jobs-topic record of the posted job ``data``, as keyword arguments of
    ``AIOKafkaProducer.send`` (all but the topic and the timestamp)."""
    return {
        "value": encode({key: data[key] for key in _JOBS_FIELDS}),
        "key": data["id"].encode("utf-8"),
        "partition": data["partition"],
        # The job's headers (a trace context, a tenant) ride as Kafka record headers.
        "headers": [(k, v.encode("utf-8")) for k, v in data["headers"].items()] or None,
    }


def dead_letter_record(data: dict[str, Any], reason: str) -> dict[str, Any]:
    """The dead-letter record of the job ``data`` trashed for ``reason``, as keyword arguments
    of ``AIOKafkaProducer.send_and_wait`` (all but the topic)."""
    return {
        "value": encode({"job": data, "reason": reason}),
        "key": data["id"].encode("utf-8"),
        "headers": [("reason", reason.encode("utf-8"))],
    }


def in_claim_order(
    jobs: Iterable[dict[str, Any]], state: JobState | None, now: float
) -> list[dict[str, Any]]:
    """The job states ``jobs`` (those in ``state`` as readers see it at ``now``) in claim
    order."""
    wanted = None if state is None else state.value
    found = [data for data in jobs if wanted is None or visible_state(data, now) == wanted]
    found.sort(key=lambda data: (-data["priority"], data["seq"]))
    return found


def waiting(jobs: Iterable[dict[str, Any]], now: float) -> list[JobNotification]:
    """A ``WAITING`` notification of every job of ``jobs`` claimable at ``now``, in claim
    order."""
    found = [data for data in jobs if claimable(data, now)]
    found.sort(key=lambda data: (-data["priority"], data["seq"]))
    kind = NotificationKind.WAITING
    return [
        build(JobNotification, job_id=data["id"], kind=kind, priority=data["priority"])
        for data in found
    ]


def alive_conductors(conductors: Iterable[dict[str, Any]], now: float) -> list[ConductorInfo]:
    """The conductor registrations ``conductors`` whose heartbeat has not expired at ``now``."""
    return [
        ConductorInfo(
            owner=info["owner"],
            name=info["name"],
            started_at=info["started_at"],
            heartbeat_at=info["heartbeat_at"],
            expires_at=info["expires_at"],
            meta=dict(info["meta"]),
        )
        for info in conductors
        if info["expires_at"] > now
    ]
