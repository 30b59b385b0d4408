"""``aioconductor.persistence._copy``: the stores' copies of details share nothing mutable."""

from __future__ import annotations

from aioconductor.persistence._copy import copy_atom, copy_book, copy_flow, created_book
from aioconductor.persistence.models import AtomDetail, AtomState, FlowDetail, LogBook


def test_store_copies_share_nothing_mutable() -> None:
    atom = AtomDetail(name="t", state=AtomState.SUCCESS, result={"r": [1]}, meta={"m": {}})
    flow = FlowDetail(name="f", meta={"x": [1]}, atoms={"t": atom})
    book = LogBook(name="b", meta={"y": {}}, flows={flow.uuid: flow})

    bumped = copy_atom(atom, atom.version + 1)
    assert bumped.version == 1 and atom.version == 0
    bumped.result["r"].append(2)
    assert atom.result == {"r": [1]}

    flow_copy = copy_flow(flow, 5)
    assert flow_copy.version == 5 and flow_copy.atoms["t"] == atom
    flow_copy.atoms["t"].meta["m"]["k"] = 1
    flow_copy.meta["x"].append(2)
    assert atom.meta == {"m": {}} and flow.meta == {"x": [1]}

    book_copy = copy_book(book)
    assert book_copy == book
    book_copy.flows[flow.uuid].atoms.clear()
    assert book.flows[flow.uuid].atoms == {"t": atom}


def test_created_book_is_the_given_book_carrying_the_stored_token() -> None:
    # Not a copy: the caller owns what it gave, and the store keeps none of it (the stores'
    # conformance suite checks that side), so a copy per new logbook would be waste.
    book = LogBook(name="b", meta={"y": []}, token=None)
    created = created_book(book, 7)
    assert created.token == 7 and book.token is None
    assert created.model_dump(exclude={"token"}) == book.model_dump(exclude={"token"})
