"""The Redis board's records read back: a ``CLAIM_BATCH`` reply's jobs, built without
validation, are the jobs pydantic validates from the same hash fields."""

from __future__ import annotations

import json

import pytest

from aioconductor._backends.redis.board_records import claimed_jobs, job_from_hash
from aioconductor.models import Job

BARE = {
    "id": "j1",
    "name": "noop",
    "flow": "noop",
    "args": '{"key":0}',
    "priority": "0",
    "seq": "1",
    "member": "0000000000000001:j1",
    "created_at": "1796506189.322414",
    "updated_at": "1796506189.369357",
    "max_attempts": "3",
    "attempts": "1",
    "token": "1",
    "state": "CLAIMED",
    "owner": "cpu-1",
    "expires_at": "1796506219.369357",
}
FULL = {
    **BARE,
    "id": "j2",
    "member": "0000000000000002:j2",
    "key": "k2",
    "not_before": "1796506190.5",
    "outcome": "FAILURE",
    "result": '{"r":[1,2]}',
    "headers": '{"h":"v"}',
    "releases": "1",
    "abandons": "2",
    "retries": "3",
    "retry": '{"retries":2}',
    "failures": '[{"error":"boom"}]',
    "cancel_reason": "stop",
    "limit_key": "lk",
    "trash_reason": "why",
}


def validated(fields: dict[str, str]) -> Job:
    """The job pydantic validates from ``fields``, as the hash's reader should build it."""
    number = ("priority", "seq", "max_attempts", "attempts", "releases", "abandons", "retries")
    values: dict[str, object] = {
        k: int(v) if k in number else v
        for k, v in fields.items()
        if k not in ("member", "token", "owner", "expires_at")
    }
    for name in ("args", "result", "headers", "retry", "failures"):
        if name in fields:
            values[name] = json.loads(fields[name])
    for name in ("created_at", "updated_at", "not_before"):
        if name in fields:
            values[name] = float(fields[name])
    values["claim"] = {
        "job_id": fields["id"],
        "owner": fields["owner"],
        "token": int(fields["token"]),
        "expires_at": float(fields["expires_at"]),
        "cancel_requested": "cancel_reason" in fields,
    }
    return Job.model_validate(values)


def flat(fields: dict[str, str]) -> list[str | int]:
    return [len(fields) * 2, *(item for pair in fields.items() for item in pair)]


def test_claimed_jobs_are_the_validated_jobs() -> None:
    jobs = claimed_jobs(["ok", "1796506189.4", *flat(BARE), *flat(FULL)])
    assert jobs == [validated(BARE), validated(FULL)]
    assert jobs[1].claim is not None and jobs[1].claim.cancel_requested
    assert job_from_hash(FULL) == jobs[1]


def test_a_claimed_job_of_an_odd_count_is_refused() -> None:
    items = flat(BARE)[1:]  # 30 items: a count of 29 leaves a name without its value
    with pytest.raises(ValueError):
        claimed_jobs(["ok", "1.0", 29, *items[:29]])
