"""``persistence._json``: an atom's JSON text is the same whichever path encodes it, and what
strict JSON cannot carry is refused the same."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aioconductor._models import evolve
from aioconductor.errors import StoreError
from aioconductor.persistence._json import atom_json
from aioconductor.persistence.models import AtomDetail, AtomState, Failure, Intention


def _reference(atom: AtomDetail) -> str:
    """The text the json module writes for the atom's fields but its name and version."""
    data = atom.model_dump(mode="python", exclude={"name", "version"})
    return json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"state": AtomState.RUNNING, "meta": {"started": 1796505556.502078}},
        {"state": AtomState.SUCCESS, "result": {"a": [1, 2.5, None, True, "é\u0000"]}},
        {"kind": "retry", "intention": Intention.REVERT, "revert_result": [{"x": {"y": 10**30}}]},
        {"result": "text", "meta": {"nested": {"deep": ["a", {"b": -0.0}]}}},
    ],
)
def test_an_atom_without_failures_is_written_as_the_json_module_writes_it(
    fields: dict[str, Any],
) -> None:
    atom = AtomDetail(name="t", **fields)
    assert json.loads(atom_json(atom)) == json.loads(_reference(atom))
    assert atom_json(atom) == _reference(atom)


def test_an_atom_with_a_failure_is_written_whole() -> None:
    failure = Failure(exc_type="ValueError", message="boom")
    atom = AtomDetail(name="t", state=AtomState.FAILURE, failure=failure, meta={"m": 1})
    assert atom_json(atom) == _reference(atom)


def test_an_atom_built_unvalidated_with_other_types_takes_the_general_path() -> None:
    # A state given as its text (an atom built without validation): the same text.
    atom = evolve(AtomDetail(name="t"), state="RUNNING", intention="EXECUTE")
    assert atom_json(atom) == _reference(AtomDetail(name="t", state=AtomState.RUNNING))


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("result", float("nan"), "NaN"),
        ("revert_result", {1: "a"}, "1"),
        ("meta", {"s": {1, 2}}, "set"),
        ("meta", {"k": float("inf")}, "inf"),
    ],
)
def test_what_strict_json_cannot_carry_is_refused(field: str, value: Any, says: str) -> None:
    atom = evolve(AtomDetail(name="t", state=AtomState.SUCCESS), **{field: value})
    with pytest.raises(StoreError, match="atom 't' cannot be saved as JSON") as caught:
        atom_json(atom)
    assert says in str(caught.value)


def test_a_lone_surrogate_is_written_escaped_as_the_json_module_writes_it() -> None:
    atom = AtomDetail(name="t", result="\ud800", meta={"k": ["\udfff"]})
    assert atom_json(atom) == json.dumps(
        atom.model_dump(mode="python", exclude={"name", "version"}), separators=(",", ":")
    )
