"""Logbooks and failures the store conformance suite saves and reads back."""

from __future__ import annotations

from typing import Any

from aioconductor.failure import Failure
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import AtomState
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import FlowState
from aioconductor.persistence.models import Intention
from aioconductor.persistence.models import LogBook


def failure(message: str) -> Failure:
    try:
        raise KeyError(message)
    except KeyError as exc:
        return Failure.from_exception(exc)


def make_book(name: str = "job", *, flows: int = 1, atoms: int = 2, **fields: Any) -> LogBook:
    book = LogBook(name=name, meta={"owner": "w-1", "nested": {"k": [1, "two", None]}}, **fields)
    for f in range(flows):
        flow = FlowDetail(name=f"flow-{f}", meta={"f": f})
        for a in range(atoms):
            flow.atoms[f"atom-{a}"] = AtomDetail(name=f"atom-{a}", meta={"a": a})
        book.flows[flow.uuid] = flow
    return book


def first_flow(book: LogBook) -> FlowDetail:
    return next(iter(book.flows.values()))


def rich_book() -> LogBook:
    """A logbook that uses every field of every model."""
    book = LogBook(
        name="ünïcødé job ✓",
        created_at=1_700_000_000.123456,
        updated_at=1_700_000_001.654321,
        meta={"attempt": 2, "tags": ["a", "b"], "deep": {"x": {"y": [0.1, True, None]}}},
    )
    flow = FlowDetail(name="main", state=FlowState.RUNNING, meta={"retry": {"n": 3}})
    flow.atoms["fetch"] = AtomDetail(
        name="fetch",
        state=AtomState.SUCCESS,
        result={"rows": [1, 2, 3], "big": 2**62, "text": "naïve"},
        meta={"duration": 0.25},
    )
    flow.atoms["parse"] = AtomDetail(
        name="parse", state=AtomState.FAILURE, failure=failure("no such key")
    )
    flow.atoms["undo"] = AtomDetail(
        name="undo",
        kind="retry",
        state=AtomState.REVERTED,
        intention=Intention.REVERT,
        result=[1, "x"],
        revert_result={"undone": True},
        revert_failure=failure("revert went wrong"),
        meta={"note": "reverted"},
    )
    flow.atoms["skipped"] = AtomDetail(
        name="skipped", state=AtomState.IGNORE, intention=Intention.IGNORE
    )
    book.flows[flow.uuid] = flow
    return book


def assert_failures_equal(got: Failure | None, expected: Failure | None) -> None:
    assert got == expected
    if expected is not None:
        assert got is not None
        assert got.exc_types == expected.exc_types
        assert got.check(KeyError)
