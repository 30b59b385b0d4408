"""``aioconductor._models``: building and copying the library's own models without validation."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, PrivateAttr

from aioconductor._models import build, copy_json, evolve
from aioconductor.models import Claim, Job, JobState, RetryPolicy
from aioconductor.persistence.models import AtomDetail, AtomState

_JOB = {
    "id": "j1",
    "name": "j1",
    "flow": "f",
    "args": {"k": [1, {"x": 2}]},
    "priority": 3,
    "seq": 7,
    "created_at": 1.5,
    "updated_at": 2.5,
    "not_before": None,
    "attempts": 1,
    "max_attempts": 3,
    "state": JobState.CLAIMED,
    "claim": Claim(job_id="j1", owner="o", token=4, expires_at=9.0),
    "outcome": None,
    "result": None,
    "trash_reason": None,
    "headers": {"h": "v"},
    "releases": 1,
    "abandons": 0,
    "retries": 2,
    "retry": RetryPolicy(retries=3),
    "failures": [{"message": "boom"}],
    "key": "order-1",
    "cancel_reason": "withdrawn",
    "limit_key": "payments",
}


def test_build_equals_the_validated_model() -> None:
    built = build(Job, **_JOB)
    assert built == Job(**_JOB)
    assert built.model_fields_set == set(_JOB)
    assert built.model_dump() == Job(**_JOB).model_dump()
    with pytest.raises(Exception, match="frozen"):
        built.name = "other"  # type: ignore[misc]


def test_build_refuses_missing_and_unknown_fields() -> None:
    values = dict(_JOB)
    del values["headers"]
    with pytest.raises(TypeError, match=r"missing fields \['headers'\]"):
        build(Job, **values)
    with pytest.raises(TypeError, match=r"unknown fields \['extra'\]"):
        build(Job, **_JOB, extra=1)


def test_build_refuses_models_with_private_state() -> None:
    class Private(BaseModel):
        a: int
        _hidden: int = PrivateAttr(default=0)

    with pytest.raises(TypeError, match="private attributes"):
        build(Private, a=1)


def test_evolve_copies_with_changes_and_leaves_the_original() -> None:
    job = Job(**_JOB)
    changed = evolve(job, state=JobState.UNCLAIMED)
    assert changed.state is JobState.UNCLAIMED
    assert job.state is JobState.CLAIMED
    assert changed.model_dump(exclude={"state"}) == job.model_dump(exclude={"state"})
    with pytest.raises(TypeError, match="unknown fields"):
        evolve(job, nope=1)


def test_copy_json_shares_nothing_mutable() -> None:
    value = {"a": [1, {"b": "c"}], "d": None, "e": 1.5, "f": True}
    copied = copy_json(value)
    assert copied == value
    copied["a"][1]["b"] = "changed"
    assert value["a"][1]["b"] == "c"
    assert copy_json((1, [2])) == (1, [2])  # not JSON: deep-copied the slow way


def test_built_models_share_one_field_set_that_assignment_cannot_change() -> None:
    first = build(AtomDetail, **AtomDetail(name="a").model_dump())
    second = evolve(first, name="b")
    assert first.model_fields_set is second.model_fields_set  # one set: no memory per instance
    first.state = AtomState.SUCCESS  # pydantic records the assignment in the shared set
    assert second.model_fields_set == set(AtomDetail.model_fields)
    assert second.state is AtomState.PENDING
    copied = first.model_copy()
    assert copied.model_fields_set == first.model_fields_set
    assert copied.model_fields_set is not first.model_fields_set  # pydantic copies it
