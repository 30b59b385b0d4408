"""The store conformance suite: what an engine saves is what it reads back (every model, every
write, one atomic write for several details), and nothing it was given or gave is shared."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from aioconductor.errors import ClaimLost
from aioconductor.errors import ConfigurationError
from aioconductor.errors import LogBookNotFound
from aioconductor.errors import StoreError
from aioconductor.errors import VersionConflict
from aioconductor.persistence import Store
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import AtomState
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import FlowState
from aioconductor.persistence.models import Intention
from aioconductor.persistence.models import LogBook
from aioconductor.testing.conformance._store_data import assert_failures_equal
from aioconductor.testing.conformance._store_data import failure
from aioconductor.testing.conformance._store_data import first_flow
from aioconductor.testing.conformance._store_data import make_book
from aioconductor.testing.conformance._store_data import rich_book

# -- round trips ----------------------------------------------------------------------------------


async def test_every_model_round_trips(store: Store) -> None:
    book = rich_book()

    saved = await store.save_logbook(book)
    got = await store.get_logbook(book.uuid)

    assert saved == book
    assert got == book
    assert list(got.flows) == list(book.flows)
    got_flow, flow = first_flow(got), first_flow(book)
    assert list(got_flow.atoms) == list(flow.atoms)
    for name, atom in flow.atoms.items():
        assert_failures_equal(got_flow.atoms[name].failure, atom.failure)
        assert_failures_equal(got_flow.atoms[name].revert_failure, atom.revert_failure)
    assert [b async for b in store.logbooks()] == [book]


async def test_atom_and_flow_writes_round_trip(store: Store) -> None:
    book = await store.save_logbook(rich_book())
    flow = first_flow(book)
    atom = flow.atoms["parse"].model_copy(
        update={
            "state": AtomState.REVERTED,
            "intention": Intention.RETRY,
            "revert_result": {"ok": [1, 2]},
            "revert_failure": failure("again"),
            "meta": {"attempts": 2},
        }
    )

    saved_atom = await store.update_atom_detail(book.uuid, flow.uuid, atom)
    saved_flow = await store.update_flow_detail(
        book.uuid, flow.model_copy(update={"state": FlowState.REVERTED, "meta": {"why": "x"}})
    )

    assert saved_atom == atom.model_copy(update={"version": 1})
    got = first_flow(await store.get_logbook(book.uuid))
    assert got.atoms["parse"] == saved_atom
    assert_failures_equal(got.atoms["parse"].revert_failure, atom.revert_failure)
    assert (got.state, got.meta, got.version) == (FlowState.REVERTED, {"why": "x"}, 1)
    assert saved_flow == got


async def test_a_store_keeps_no_reference_to_what_it_was_given_or_gave(store: Store) -> None:
    book = make_book()
    saved = await store.save_logbook(book)
    flow = first_flow(saved)
    book_meta: dict[str, Any] = {"m": [1]}
    flow_meta: dict[str, Any] = {"l": [2]}
    result: dict[str, Any] = {"r": [3]}

    await store.save_logbook(book.model_copy(update={"meta": book_meta}))
    updated = await store.update_flow_detail(book.uuid, flow.model_copy(update={"meta": flow_meta}))
    atom = flow.atoms["atom-0"].model_copy(update={"result": result})
    returned = await store.update_atom_detail(book.uuid, flow.uuid, atom)
    for mutable in (
        book.meta["nested"]["k"],
        saved.meta["nested"]["k"],
        book_meta["m"],
        flow_meta["l"],
        updated.meta["l"],
        result["r"],
        returned.result["r"],
    ):
        mutable.append("mutated")

    got = await store.get_logbook(book.uuid)
    assert got.meta == {"m": [1]}
    assert first_flow(got).meta == {"l": [2]}
    assert first_flow(got).atoms["atom-0"].result == {"r": [3]}


async def test_keys_that_are_not_strings_are_refused_and_change_nothing(store: Store) -> None:
    """JSON would read ``{1: "a", "1": "b"}`` back as ``{"1": "b"}``: every store refuses a key
    that is not a str, at any depth, as boards do, naming the detail and where the key is."""
    book = await store.save_logbook(make_book())
    flow = first_flow(book)
    before = await store.get_logbook(book.uuid)
    bad_atoms = [
        (AtomDetail(name="a", result={1: "a", "1": "b"}), "key 1 (int) in ['result']"),
        (AtomDetail(name="a", result=[{"k": {2: 0}}]), "key 2 (int) in ['result'][0]['k']"),
        (AtomDetail(name="a", revert_result={(1, 2): 0}), "key (1, 2) (tuple) in ['revert_"),
        (AtomDetail(name="a", meta={"history": [{None: 1}]}), "key None (NoneType) in ['meta']"),
    ]
    for atom, where in bad_atoms:
        refusal = f"atom 'a' cannot be saved as JSON: {re.escape(where)}"
        with pytest.raises(StoreError, match=refusal):
            await store.update_atom_detail(book.uuid, flow.uuid, atom)
        with pytest.raises(StoreError, match=refusal):
            await store.update_atom_details(book.uuid, flow.uuid, [AtomDetail(name="b"), atom])
        with pytest.raises(StoreError, match=refusal):
            await store.update_flow_detail(book.uuid, flow, atoms=[atom])
        new_flow = FlowDetail(name="new", atoms={"a": atom})
        with pytest.raises(StoreError, match=refusal):
            await store.update_flow_detail(book.uuid, new_flow)
        with pytest.raises(StoreError, match=refusal):
            await store.save_logbook(
                make_book(name="other", flows=0).model_copy(
                    update={"flows": {new_flow.uuid: new_flow}}
                )
            )
    with pytest.raises(StoreError, match=re.escape("meta cannot be saved as JSON: key 1 (int)")):
        await store.update_flow_detail(book.uuid, flow.model_copy(update={"meta": {1: 0}}))
    with pytest.raises(StoreError, match=re.escape("key 1 (int) in ['x'] is not a string")):
        await store.save_logbook(book.model_copy(update={"meta": {"x": {1: 0}}}))

    assert await store.get_logbook(book.uuid) == before
    assert [b.uuid async for b in store.logbooks()] == [book.uuid]


@pytest.mark.parametrize("value", [math.nan, math.inf, {1, 2}], ids=["nan", "inf", "set"])
async def test_values_json_cannot_carry_are_refused_and_change_nothing(
    store: Store, value: Any
) -> None:
    """Strict JSON has no NaN, infinity or set: a store that encodes would change them quietly
    (NaN read back as None, a set as a list), so every store refuses them, the memory store
    too, naming the detail and where the value is."""
    book = await store.save_logbook(make_book())
    flow = first_flow(book)
    before = await store.get_logbook(book.uuid)
    refusal = "cannot be saved as JSON: .* is not JSON"
    with pytest.raises(StoreError, match=f"atom 'a' {refusal}"):
        await store.update_atom_detail(book.uuid, flow.uuid, AtomDetail(name="a", result=value))
    with pytest.raises(StoreError, match=f"atom 'b' {refusal}"):
        atom = AtomDetail(name="b", meta={"m": [value]})
        await store.update_flow_detail(book.uuid, flow, atoms=[atom])
    with pytest.raises(StoreError, match=refusal):
        await store.update_flow_detail(book.uuid, flow.model_copy(update={"meta": {"m": value}}))
    with pytest.raises(StoreError, match=refusal):
        await store.save_logbook(book.model_copy(update={"meta": {"m": value}}))
    assert await store.get_logbook(book.uuid) == before


# -- save_logbook ---------------------------------------------------------------------------------


async def test_save_logbook_merges_into_a_saved_logbook(store: Store) -> None:
    book = make_book(created_at=100.0, updated_at=100.0)
    first = await store.save_logbook(book)
    old_flow = first_flow(first)
    new_flow = FlowDetail(name="second", atoms={"x": AtomDetail(name="x", result=1)})

    changed = book.model_copy(deep=True)
    changed.name, changed.meta = "renamed", {"new": True}
    changed.created_at, changed.updated_at = 999.0, 200.0
    changed.flows[old_flow.uuid].state = FlowState.SUCCESS
    changed.flows[old_flow.uuid].atoms.clear()
    changed.flows[new_flow.uuid] = new_flow
    merged = await store.save_logbook(changed)

    assert (merged.name, merged.meta, merged.updated_at) == ("renamed", {"new": True}, 200.0)
    assert merged.created_at == 100.0
    assert merged.flows == {old_flow.uuid: old_flow, new_flow.uuid: new_flow}
    assert list(merged.flows) == [old_flow.uuid, new_flow.uuid]
    assert await store.get_logbook(book.uuid) == merged


async def test_save_logbook_keeps_flows_it_is_not_given(store: Store) -> None:
    book = await store.save_logbook(make_book(flows=2))

    again = await store.save_logbook(book.model_copy(update={"flows": {}, "name": "again"}))

    assert again.flows == book.flows
    assert again.name == "again"


async def test_details_filed_under_a_wrong_key_are_refused(store: Store) -> None:
    book = make_book()
    flow = first_flow(book)
    book.flows = {"not-its-uuid": flow}
    with pytest.raises(ConfigurationError):
        await store.save_logbook(book)
    flow.atoms = {"not-its-name": AtomDetail(name="a")}
    with pytest.raises(ConfigurationError):
        await store.update_flow_detail(book.uuid, flow)


# -- versions -------------------------------------------------------------------------------------


async def test_update_flow_detail_adds_a_flow_then_bumps_its_version(store: Store) -> None:
    book = await store.save_logbook(make_book(flows=0))
    flow = FlowDetail(name="added", atoms={"a": AtomDetail(name="a", result="r")})

    added = await store.update_flow_detail(book.uuid, flow)
    assert added.version == 1
    assert added.atoms == flow.atoms
    assert (await store.get_logbook(book.uuid)).flows == {flow.uuid: added}

    renamed = added.model_copy(
        update={"name": "renamed", "state": FlowState.SUCCESS, "atoms": {}, "meta": {"m": 1}}
    )
    bumped = await store.update_flow_detail(book.uuid, renamed)
    assert bumped.version == 2
    assert (bumped.name, bumped.state, bumped.meta) == ("renamed", FlowState.SUCCESS, {"m": 1})
    assert bumped.atoms == flow.atoms, "an update of a flow leaves its atoms as stored"
    assert (await store.get_logbook(book.uuid)).flows == {flow.uuid: bumped}


async def test_a_stale_flow_version_changes_nothing(store: Store) -> None:
    book = await store.save_logbook(make_book())
    flow = first_flow(book)
    await store.update_flow_detail(book.uuid, flow)
    before = await store.get_logbook(book.uuid)

    stale = flow.model_copy(update={"state": FlowState.FAILURE})
    with pytest.raises(VersionConflict):
        await store.update_flow_detail(book.uuid, stale, token=5)
    with pytest.raises(VersionConflict):
        await store.update_flow_detail(book.uuid, FlowDetail(name="new", version=3))

    after = await store.get_logbook(book.uuid)
    assert after == before
    assert after.token is None, "a refused write does not record its token"


async def test_update_atom_detail_adds_then_bumps_versions(store: Store) -> None:
    book = await store.save_logbook(make_book())
    flow = first_flow(book)

    added = await store.update_atom_detail(book.uuid, flow.uuid, AtomDetail(name="new", result=1))
    bumped = await store.update_atom_detail(
        book.uuid, flow.uuid, added.model_copy(update={"state": AtomState.SUCCESS})
    )

    assert (added.version, bumped.version) == (1, 2)
    atoms = first_flow(await store.get_logbook(book.uuid)).atoms
    assert atoms["new"] == bumped
    assert list(atoms) == ["atom-0", "atom-1", "new"]
    assert first_flow(await store.get_logbook(book.uuid)).version == 0, "flow left as it was"


async def test_a_stale_atom_version_changes_nothing(store: Store) -> None:
    book = await store.save_logbook(make_book())
    flow = first_flow(book)
    atom = flow.atoms["atom-0"]
    await store.update_atom_detail(book.uuid, flow.uuid, atom)
    before = await store.get_logbook(book.uuid)

    with pytest.raises(VersionConflict):
        await store.update_atom_detail(
            book.uuid, flow.uuid, atom.model_copy(update={"result": "late"}), token=5
        )
    with pytest.raises(VersionConflict):
        await store.update_atom_detail(book.uuid, flow.uuid, AtomDetail(name="x", version=2))

    assert await store.get_logbook(book.uuid) == before


async def test_a_flow_and_its_atoms_are_saved_in_one_write(store: Store) -> None:
    book = await store.save_logbook(make_book())
    flow = first_flow(book)
    done = flow.atoms["atom-1"].model_copy(update={"state": AtomState.SUCCESS, "result": [1]})
    new = AtomDetail(name="new", state=AtomState.RUNNING)
    ended = flow.model_copy(update={"state": FlowState.SUCCESS, "atoms": {}})

    saved = await store.update_flow_detail(book.uuid, ended, token=4, atoms=[done, new])

    assert (saved.version, saved.state) == (1, FlowState.SUCCESS)
    assert list(saved.atoms) == ["atom-0", "atom-1", "new"]
    assert saved.atoms["atom-1"] == done.model_copy(update={"version": 1})
    assert saved.atoms["new"] == new.model_copy(update={"version": 1})
    stored = await store.get_logbook(book.uuid)
    assert stored.flows == {flow.uuid: saved}
    assert stored.token == 4


async def test_a_flow_write_with_a_stale_atom_changes_nothing(store: Store) -> None:
    book = await store.save_logbook(make_book())
    flow = first_flow(book)
    await store.update_atom_detail(book.uuid, flow.uuid, flow.atoms["atom-0"])
    before = await store.get_logbook(book.uuid)
    fresh = flow.atoms["atom-1"].model_copy(update={"result": "fresh"})
    stale = flow.atoms["atom-0"].model_copy(update={"result": "stale"})
    ended = flow.model_copy(update={"state": FlowState.SUCCESS})

    with pytest.raises(VersionConflict, match="atom-0"):
        await store.update_flow_detail(book.uuid, ended, token=7, atoms=[fresh, stale])
    with pytest.raises(VersionConflict):
        await store.update_flow_detail(
            book.uuid, ended.model_copy(update={"version": 5}), atoms=[fresh]
        )
    with pytest.raises(ConfigurationError):
        await store.update_flow_detail(book.uuid, ended, atoms=[fresh, fresh])

    assert await store.get_logbook(book.uuid) == before


async def test_a_flow_write_with_atoms_is_fenced_and_needs_a_saved_flow(store: Store) -> None:
    book = await store.save_logbook(make_book(), token=5)
    flow = first_flow(book)
    before = await store.get_logbook(book.uuid)
    atom = flow.atoms["atom-0"].model_copy(update={"state": AtomState.SUCCESS})

    with pytest.raises(ClaimLost):
        await store.update_flow_detail(book.uuid, flow, token=4, atoms=[atom])
    with pytest.raises(LogBookNotFound):
        await store.update_flow_detail(book.uuid, FlowDetail(name="unsaved"), atoms=[atom])
    with pytest.raises(LogBookNotFound):
        await store.update_flow_detail("no-such-book", flow, atoms=[atom])

    assert await store.get_logbook(book.uuid) == before


async def test_several_atoms_are_saved_in_one_write(store: Store) -> None:
    book = await store.save_logbook(make_book())
    flow = first_flow(book)
    done = flow.atoms["atom-0"].model_copy(update={"state": AtomState.SUCCESS, "result": {"r": 1}})
    new = AtomDetail(name="new", state=AtomState.RUNNING)

    saved = await store.update_atom_details(book.uuid, flow.uuid, [done, new], token=2)

    assert saved == [done.model_copy(update={"version": 1}), new.model_copy(update={"version": 1})]
    stored = await store.get_logbook(book.uuid)
    assert list(first_flow(stored).atoms) == ["atom-0", "atom-1", "new"]
    assert first_flow(stored).atoms["atom-0"] == saved[0]
    assert first_flow(stored).atoms["new"] == saved[1]
    assert first_flow(stored).version == 0 and stored.token == 2


async def test_several_atoms_with_one_stale_or_a_stale_token_change_nothing(store: Store) -> None:
    book = await store.save_logbook(make_book(), token=3)
    flow = first_flow(book)
    await store.update_atom_detail(book.uuid, flow.uuid, flow.atoms["atom-1"], token=3)
    before = await store.get_logbook(book.uuid)
    fresh = flow.atoms["atom-0"].model_copy(update={"result": "fresh"})
    stale = flow.atoms["atom-1"].model_copy(update={"result": "stale"})

    with pytest.raises(VersionConflict, match="atom-1"):
        await store.update_atom_details(book.uuid, flow.uuid, [fresh, stale], token=3)
    with pytest.raises(ClaimLost):
        await store.update_atom_details(
            book.uuid, flow.uuid, [fresh, AtomDetail(name="x")], token=2
        )
    with pytest.raises(LogBookNotFound):
        await store.update_atom_details(book.uuid, "no-such-flow", [fresh, AtomDetail(name="x")])
    with pytest.raises(LogBookNotFound):
        await store.update_atom_details("no-such-book", flow.uuid, [fresh, AtomDetail(name="x")])
    with pytest.raises(ConfigurationError):
        await store.update_atom_details(book.uuid, flow.uuid, [fresh, fresh])
    with pytest.raises(ConfigurationError):
        await store.update_atom_details(book.uuid, flow.uuid, [])

    assert await store.get_logbook(book.uuid) == before


# -- missing logbooks -----------------------------------------------------------------------------


async def test_missing_logbook_or_flow_raises_logbook_not_found(store: Store) -> None:
    book = await store.save_logbook(make_book())
    atom = AtomDetail(name="a")

    with pytest.raises(LogBookNotFound):
        await store.get_logbook("no-such-book")
    with pytest.raises(LogBookNotFound):
        await store.update_flow_detail("no-such-book", FlowDetail(name="f"))
    with pytest.raises(LogBookNotFound):
        await store.update_atom_detail("no-such-book", first_flow(book).uuid, atom)
    with pytest.raises(LogBookNotFound):
        await store.update_atom_detail(book.uuid, "no-such-flow", atom)
    with pytest.raises(LogBookNotFound):
        await store.destroy_logbook("no-such-book")
    assert await store.get_logbook(book.uuid) == book


async def test_destroy_logbook_removes_it_with_its_details(store: Store) -> None:
    book = await store.save_logbook(make_book(flows=2), token=7)
    kept = await store.save_logbook(make_book("kept"))

    await store.destroy_logbook(book.uuid)

    with pytest.raises(LogBookNotFound):
        await store.get_logbook(book.uuid)
    with pytest.raises(LogBookNotFound):
        await store.destroy_logbook(book.uuid)
    assert [b async for b in store.logbooks()] == [kept]
    # The uuid is free again, with no flow, atom or token left over.
    fresh = await store.save_logbook(LogBook(uuid=book.uuid, name="fresh"), token=1)
    assert (fresh.flows, fresh.token) == ({}, 1)


async def test_destroy_logbooks_removes_those_that_exist_in_one_call(store: Store) -> None:
    gone = [await store.save_logbook(make_book(f"gone-{n}", flows=2)) for n in range(3)]
    kept = await store.save_logbook(make_book("kept"))
    uuids = [book.uuid for book in gone]
    assert await store.destroy_logbooks([*uuids, "no-such-book", uuids[0], "a\x00b"]) == 3
    for book in gone:
        with pytest.raises(LogBookNotFound):
            await store.get_logbook(book.uuid)
    assert [b async for b in store.logbooks()] == [kept]
    assert await store.destroy_logbooks([]) == 0
    assert await store.destroy_logbooks(uuids) == 0
    # The uuids are free again, with nothing left over.
    fresh = await store.save_logbook(LogBook(uuid=uuids[0], name="fresh"), token=1)
    assert (fresh.flows, fresh.token) == ({}, 1)
