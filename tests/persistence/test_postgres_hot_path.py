"""The PostgreSQL store's and fused ending's hot path: each detail encoded once, nothing read
back that the caller already holds, and the checks made before anything is written kept."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aioconductor.errors import StoreError
from aioconductor.persistence import Store
from aioconductor.persistence import postgres as postgres_store
from aioconductor.persistence.models import AtomDetail, FlowDetail, FlowState
from aioconductor.testing.conformance._store_data import make_book
from tests.backends import one_space_fixture, store_fixture

pytestmark = pytest.mark.postgres

space = one_space_fixture("postgres")
store = store_fixture("pg_store")


@pytest.fixture
def encoded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the atoms the PostgreSQL store encodes, in order."""
    names: list[str] = []
    real = postgres_store.atom_json

    def counting(atom: AtomDetail) -> str:
        names.append(atom.name)
        return real(atom)

    monkeypatch.setattr(postgres_store, "atom_json", counting)
    yield names


async def test_a_new_logbook_is_encoded_once_and_returned_as_given(
    store: Store, encoded: list[str]
) -> None:
    book = make_book(atoms=2)
    saved = await store.save_logbook(book, token=4)
    assert encoded == ["atom-0", "atom-1"]
    # As the other stores do: a new logbook holds exactly what was given, not read back.
    (flow,) = book.flows.values()
    assert saved.token == 4 and saved.flows[flow.uuid].atoms["atom-1"] is flow.atoms["atom-1"]
    assert await store.get_logbook(book.uuid) == saved


async def test_a_logbook_that_cannot_be_encoded_is_refused_unwritten(store: Store) -> None:
    book = make_book(flows=2, atoms=2)
    last = list(book.flows.values())[-1]
    last.atoms["atom-1"].result = {1: "a key JSON would change"}
    with pytest.raises(StoreError, match="atom 'atom-1'"):
        await store.save_logbook(book)
    assert [b async for b in store.logbooks()] == []


@pytest.fixture
def flow_end_encoded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the atoms a flow's end (``store_sql.flow_end_args``) encodes, in order."""
    from aioconductor._backends.postgres import store_sql

    names: list[str] = []
    real = store_sql.atom_json

    def counting(atom: AtomDetail) -> str:
        names.append(atom.name)
        return real(atom)

    monkeypatch.setattr(store_sql, "atom_json", counting)
    yield names


async def test_a_flows_end_encodes_each_atom_once(
    store: Store, flow_end_encoded: list[str]
) -> None:
    book = await store.save_logbook(make_book(atoms=2))
    flow = next(iter(book.flows.values()))
    last = flow.atoms["atom-1"]
    last.result = {"done": True}
    flow.state = FlowState.SUCCESS
    saved = await store.update_flow_detail(book.uuid, flow, atoms=[last])
    # Only what is saved is encoded, once: not the flow's own atoms (saved only with a new flow).
    assert flow_end_encoded == ["atom-1"]
    assert saved.version == 1 and saved.atoms["atom-1"].result == {"done": True}
    flow_end_encoded.clear()
    saved.state = FlowState.FAILURE
    await store.update_flow_detail(book.uuid, saved)
    assert flow_end_encoded == []
    got = next(iter((await store.get_logbook(book.uuid)).flows.values()))
    assert got.version == 2 and got.state is FlowState.FAILURE


async def test_a_new_flow_whose_atom_cannot_be_encoded_is_refused_unwritten(store: Store) -> None:
    book = await store.save_logbook(make_book(atoms=0))
    flow = FlowDetail(name="second")
    flow.atoms["bad"] = AtomDetail(name="bad", result={("a", "tuple"): 1})
    with pytest.raises(StoreError, match="atom 'bad'"):
        await store.update_flow_detail(book.uuid, flow)
    assert len((await store.get_logbook(book.uuid)).flows) == 1


async def test_a_flows_end_returns_the_atoms_it_wrote_without_parsing_them_back(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aioconductor._backends.postgres import store_sql

    book = await store.save_logbook(make_book(atoms=2))
    flow = next(iter(book.flows.values()))
    last = flow.atoms["atom-1"]
    last.result = {"done": [1, 2]}
    flow.state = FlowState.SUCCESS
    parsed: list[str] = []
    real = store_sql.atom_read

    def counting(name: str, version: int, detail: str) -> AtomDetail:
        parsed.append(name)
        return real(name, version, detail)

    monkeypatch.setattr(store_sql, "atom_read", counting)
    saved = await store.update_flow_detail(book.uuid, flow, atoms=[last])
    assert parsed == ["atom-0"]  # the one atom it did not write, as stored
    assert list(saved.atoms) == ["atom-0", "atom-1"]
    assert saved.atoms["atom-1"] == last.model_copy(update={"version": 1})
    assert saved.atoms["atom-1"].result is not last.result  # a copy: the caller's stays its own
    monkeypatch.undo()
    assert next(iter((await store.get_logbook(book.uuid)).flows.values())) == saved
