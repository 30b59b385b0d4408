"""The store contract, run against every backend of ``tests/backends.py`` that has a store.

What an engine relies on: what it saves is what it reads back; a stale version or fencing token
changes nothing; namespaces never see each other; a closed store refuses every call.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from aioconductor.errors import (
    ClaimLost,
    ConfigurationError,
    LogBookNotFound,
    StoreClosed,
    StoreError,
    VersionConflict,
)
from aioconductor.failure import Failure
from aioconductor.persistence import Store
from aioconductor.persistence.models import (
    AtomDetail,
    AtomState,
    FlowDetail,
    FlowState,
    Intention,
    LogBook,
)
from tests.persistence.conftest import StoreBackend


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


# -- fencing --------------------------------------------------------------------------------------

Write = Callable[[Store, LogBook, int | None], Awaitable[object]]


async def _save(store: Store, book: LogBook, token: int | None) -> object:
    changed = book.model_copy(update={"name": "changed", "flows": {}}, deep=True)
    extra = FlowDetail(name="extra")
    changed.flows[extra.uuid] = extra
    return await store.save_logbook(changed, token=token)


async def _update_flow(store: Store, book: LogBook, token: int | None) -> object:
    flow = first_flow(await store.get_logbook(book.uuid))
    changed = flow.model_copy(update={"state": FlowState.SUCCESS})
    return await store.update_flow_detail(book.uuid, changed, token=token)


async def _update_atom(store: Store, book: LogBook, token: int | None) -> object:
    flow = first_flow(await store.get_logbook(book.uuid))
    atom = flow.atoms["atom-0"].model_copy(update={"state": AtomState.SUCCESS})
    return await store.update_atom_detail(book.uuid, flow.uuid, atom, token=token)


WRITES = pytest.mark.parametrize(
    "write", [_save, _update_flow, _update_atom], ids=["save", "flow", "atom"]
)


@WRITES
async def test_an_older_token_is_refused_and_changes_nothing(store: Store, write: Write) -> None:
    book = await store.save_logbook(make_book(), token=1)
    await store.save_logbook(book, token=2)
    before = await store.get_logbook(book.uuid)
    assert before.token == 2

    with pytest.raises(ClaimLost):
        await write(store, book, 1)

    assert await store.get_logbook(book.uuid) == before


@WRITES
async def test_equal_newer_and_no_token_are_accepted(store: Store, write: Write) -> None:
    book = await store.save_logbook(make_book(), token=2)

    await write(store, book, 2)
    assert (await store.get_logbook(book.uuid)).token == 2
    await write(store, book, None)
    assert (await store.get_logbook(book.uuid)).token == 2, "unfenced writes keep the token"
    await write(store, book, 3)
    assert (await store.get_logbook(book.uuid)).token == 3
    with pytest.raises(ClaimLost):
        await write(store, book, 2)


async def test_a_new_logbook_records_its_token(store: Store) -> None:
    book = await store.save_logbook(make_book(), token=4)

    assert book.token == 4
    assert (await store.get_logbook(book.uuid)).token == 4
    unfenced = await store.save_logbook(make_book())
    assert unfenced.token is None
    await store.update_atom_detail(
        unfenced.uuid, first_flow(unfenced).uuid, AtomDetail(name="n"), token=1
    )
    assert (await store.get_logbook(unfenced.uuid)).token == 1


# -- listing and namespaces -----------------------------------------------------------------------


async def test_logbooks_lists_oldest_first(store: Store) -> None:
    assert [b async for b in store.logbooks()] == []
    middle = await store.save_logbook(make_book("middle", created_at=2.0))
    newest = await store.save_logbook(make_book("newest", created_at=3.0))
    oldest = await store.save_logbook(make_book("oldest", created_at=1.0))

    assert [b async for b in store.logbooks()] == [oldest, middle, newest]


async def test_logbooks_lists_many(store: Store) -> None:
    saved = [
        await store.save_logbook(make_book(f"b{i}", created_at=i, atoms=1)) for i in range(250)
    ]

    assert [b async for b in store.logbooks()] == saved


async def test_namespaces_are_isolated(store_backend: StoreBackend) -> None:
    a = await store_backend.open("ns_a")
    b = await store_backend.open("ns_b")
    book = await a.save_logbook(make_book(), token=5)

    with pytest.raises(LogBookNotFound):
        await b.get_logbook(book.uuid)
    with pytest.raises(LogBookNotFound):
        await b.update_atom_detail(book.uuid, first_flow(book).uuid, AtomDetail(name="x"))
    with pytest.raises(LogBookNotFound):
        await b.destroy_logbook(book.uuid)
    assert [x async for x in b.logbooks()] == []

    # The same uuid in b is a different logbook, fenced on its own.
    other = await b.save_logbook(LogBook(uuid=book.uuid, name="other"), token=1)
    await b.destroy_logbook(other.uuid)
    assert await a.get_logbook(book.uuid) == book
    assert [x async for x in a.logbooks()] == [book]


async def test_stores_on_one_backend_share_a_namespace(store_backend: StoreBackend) -> None:
    writer = await store_backend.open("shared")
    reader = await store_backend.open("shared")
    book = await writer.save_logbook(make_book(), token=2)

    assert await reader.get_logbook(book.uuid) == book
    with pytest.raises(ClaimLost):
        await reader.save_logbook(book, token=1)


# -- lifecycle ------------------------------------------------------------------------------------

CALLS: list[tuple[str, Callable[[Store], Awaitable[object]]]] = [
    ("save", lambda s: s.save_logbook(make_book())),
    ("get", lambda s: s.get_logbook("x")),
    ("flow", lambda s: s.update_flow_detail("x", FlowDetail(name="f"))),
    ("atom", lambda s: s.update_atom_detail("x", "f", AtomDetail(name="a"))),
    (
        "atoms",
        lambda s: s.update_atom_details("x", "f", [AtomDetail(name="a"), AtomDetail(name="b")]),
    ),
    ("destroy", lambda s: s.destroy_logbook("x")),
    ("list", lambda s: anext(aiter(s.logbooks()), None)),
]
EVERY_CALL = pytest.mark.parametrize("call", [c for _, c in CALLS], ids=[n for n, _ in CALLS])


@EVERY_CALL
async def test_a_closed_store_refuses_every_call(
    store_backend: StoreBackend, call: Callable[[Store], Awaitable[object]]
) -> None:
    store = await store_backend.open()
    await store.aclose()
    await store.aclose()  # closing twice is harmless

    assert not store.connected
    with pytest.raises(StoreClosed):
        await call(store)
    with pytest.raises(StoreClosed):
        await store.connect()


@EVERY_CALL
async def test_a_store_never_connected_refuses_every_call(
    store_backend: StoreBackend, call: Callable[[Store], Awaitable[object]]
) -> None:
    store = store_backend.store()

    with pytest.raises(StoreClosed, match="not connected"):
        await call(store)


async def test_async_with_connects_and_closes(store_backend: StoreBackend) -> None:
    async with store_backend.store() as store:
        assert store.connected
        book = await store.save_logbook(make_book())
        assert await store.get_logbook(book.uuid) == book
    assert not store.connected
    with pytest.raises(StoreClosed):
        await store.get_logbook(book.uuid)


async def test_a_cancelled_write_leaves_the_store_usable(store: Store) -> None:
    book = await store.save_logbook(make_book())
    flow = first_flow(book)
    atom = flow.atoms["atom-0"].model_copy(update={"result": "done"})

    with anyio.CancelScope() as scope:
        scope.cancel()
        await store.update_atom_detail(book.uuid, flow.uuid, atom)

    # Cancelled before it wrote, or after: either way whole, and the store still works.
    stored = first_flow(await store.get_logbook(book.uuid)).atoms["atom-0"]
    assert stored in (flow.atoms["atom-0"], atom.model_copy(update={"version": 1}))
    saved = await store.update_atom_detail(book.uuid, flow.uuid, stored)
    assert saved.version == stored.version + 1
