"""What the Kafka board writes: a posted job's state, each transition of it, and the records of
the jobs and dead-letter topics.

A job's state is a plain dict (the value the state topic carries, see
:mod:`~aioconductor._backends.kafka.view`). Each transition here is a pure function of the job's
current state and the time ``now`` (epoch seconds); the log bumps the version and writes it
(:meth:`~aioconductor._backends.kafka.log.StateLog.change`). Counters default for state records
written before the board kept them (``releases``, ``abandons``, ``retries``, ``failures``).
"""

from __future__ import annotations

import json
import uuid
import zlib
from typing import Any

from aioconductor.boards._support import PostSpec
from aioconductor.models import MAX_KEPT_FAILURES
from aioconductor.models import Claim
from aioconductor.models import Outcome

__all__ = [
    "conductor_info",
    "consumed",
    "dead_letter_record",
    "encode",
    "given_back",
    "holds",
    "jobs_record",
    "new_job",
    "released",
    "renewed",
    "retried",
    "taken",
    "trashed",
]

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
)
#: The longest heartbeat a conductor registration keeps (a float of years would not do).
_MAX_TTL = 10 * 365 * 86400.0


def encode(value: dict[str, Any]) -> bytes:
    """A record's value: compact JSON."""
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def new_job(spec: PostSpec, now: float, partitions: int) -> dict[str, Any]:
    """The state of the job ``spec`` posts at ``now``, on one of the jobs topic's
    ``partitions`` (by its id's hash)."""
    not_before = spec.not_before
    if spec.delay:
        not_before = now + spec.delay
    scheduled = not_before is not None and not_before > now
    job_id = str(uuid.uuid4())
    return {
        "id": job_id,
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
        "version": 1,
        "partition": zlib.crc32(job_id.encode()) % partitions,
    }


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
    """``data`` with its claim's lease renewed at ``now``."""
    return {**data, "expires_at": now + lease, "updated_at": now}


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
    ``failure`` kept (the last ``MAX_KEPT_FAILURES``)."""
    failures = data.get("failures", [])
    if failure is not None:
        failures = [*failures, failure][-MAX_KEPT_FAILURES:]
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
