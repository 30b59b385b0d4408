"""The Redis store: the memory store's semantics, fenced and versioned on the server (its scripts
check both).

The Redis store's killed connections, cancelled writes and passwords are tested with the other
servers' (``tests/backends.py`` lists them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from aioconductor.errors import (
    ClaimLost,
    LogBookNotFound,
    StoreClosed,
    VersionConflict,
)
from aioconductor.failure import Failure
from aioconductor.persistence import open_store
from aioconductor.persistence.base import Store
from aioconductor.persistence.memory import MemoryStore
from aioconductor.persistence.models import (
    AtomDetail,
    AtomState,
    FlowDetail,
    FlowState,
    LogBook,
)
from aioconductor.testing.conformance._store_data import make_book
from tests.backends import RedisSpace, one_space_fixture, store_fixture

pytestmark = pytest.mark.redis


space = one_space_fixture("redis")
store = store_fixture("redis_store")


Outcome = tuple[str, Any]


async def outcome(call: Awaitable[Any]) -> Outcome:
    """What a call did: its result, or the type of error it raised (compared across stores)."""
    try:
        return ("ok", await call)
    except (ClaimLost, VersionConflict, LogBookNotFound) as exc:
        return ("error", type(exc).__name__)


async def scenario(store: Store, fixtures: dict[str, Any]) -> list[Outcome]:
    """A run through every write and refusal; the same for every store."""
    out: list[Outcome] = []
    fixtures = {key: value.model_copy(deep=True) for key, value in fixtures.items()}
    book, again, extra, failed, other = (
        fixtures[key] for key in ("book", "again", "extra", "failed", "other")
    )
    flow_a, flow_b = list(book.flows.values())
    ghost = "00000000-0000-4000-8000-000000000000"
    out.append(await outcome(store.save_logbook(book, token=2)))
    out.append(await outcome(store.get_logbook(book.uuid)))
    out.append(await outcome(store.get_logbook(ghost)))
    # Atoms: a first write, a stale version, a stale token, a new atom, unknown flow and book.
    atom = flow_a.atoms["atom-0"].model_copy(
        update={"state": AtomState.SUCCESS, "result": {"x": [1, 2.5]}}
    )
    out.append(await outcome(store.update_atom_detail(book.uuid, flow_a.uuid, atom, token=2)))
    out.append(await outcome(store.update_atom_detail(book.uuid, flow_a.uuid, atom, token=2)))
    bumped = atom.model_copy(update={"version": 1})
    out.append(await outcome(store.update_atom_detail(book.uuid, flow_a.uuid, bumped, token=1)))
    out.append(await outcome(store.update_atom_detail(book.uuid, flow_a.uuid, failed)))
    out.append(await outcome(store.update_atom_detail(book.uuid, "no-flow", failed, token=3)))
    out.append(await outcome(store.update_atom_detail(ghost, flow_a.uuid, failed)))
    out.append(await outcome(store.get_logbook(book.uuid)))
    # Flows: update an existing one (keeps its atoms), a stale version, add a new one.
    running = flow_b.model_copy(update={"state": FlowState.RUNNING, "meta": {"m": 1}})
    out.append(await outcome(store.update_flow_detail(book.uuid, running, token=3)))
    out.append(await outcome(store.update_flow_detail(book.uuid, running, token=3)))
    out.append(await outcome(store.update_flow_detail(book.uuid, running, token=2)))
    out.append(await outcome(store.update_flow_detail(book.uuid, extra)))
    stale_new = FlowDetail(name="stale", version=1)
    out.append(await outcome(store.update_flow_detail(book.uuid, stale_new)))
    out.append(await outcome(store.update_flow_detail(ghost, extra)))
    # Saving again: name and meta replaced, saved flows kept as they are, new flows added.
    out.append(await outcome(store.save_logbook(again, token=1)))
    out.append(await outcome(store.save_logbook(again)))
    out.append(await outcome(store.save_logbook(again, token=7)))
    out.append(await outcome(store.update_atom_detail(book.uuid, flow_a.uuid, bumped, token=6)))
    # A second logbook; listing is oldest first; destroy.
    out.append(await outcome(store.save_logbook(other)))
    out.append(("books", [b async for b in store.logbooks()]))
    out.append(await outcome(store.destroy_logbook(book.uuid)))
    out.append(await outcome(store.destroy_logbook(book.uuid)))
    out.append(await outcome(store.get_logbook(book.uuid)))
    out.append(("books", [b.uuid async for b in store.logbooks()]))
    return out


async def test_the_redis_store_keeps_the_memory_stores_semantics(store: Store) -> None:
    book = make_book(flows=2)
    again = make_book(flows=1).model_copy(update={"uuid": book.uuid, "name": "renamed"})
    first_flow = next(iter(book.flows))
    again.flows[first_flow] = FlowDetail(uuid=first_flow, name="ignored")
    fixtures = {
        "book": book,
        "again": again,
        "extra": FlowDetail(name="extra", atoms={"e": AtomDetail(name="e", version=4)}),
        "failed": AtomDetail(
            name="new-atom",
            state=AtomState.FAILURE,
            failure=Failure.from_exception(ValueError("boom")),
        ),
        "other": make_book("other", flows=0),
    }
    async with MemoryStore() as reference:
        expected = await scenario(reference, fixtures)
    got = await scenario(store, fixtures)
    assert len(got) == len(expected)
    for step, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        assert mine == theirs, f"step {step}"


async def test_flows_and_atoms_keep_their_order(store: Store) -> None:
    book = make_book(flows=5, atoms=6)
    await store.save_logbook(book)
    flow = next(iter(book.flows.values()))
    await store.update_atom_detail(book.uuid, flow.uuid, AtomDetail(name="0-last"))
    got = await store.get_logbook(book.uuid)
    assert list(got.flows) == list(book.flows)
    assert list(got.flows[flow.uuid].atoms) == [*flow.atoms, "0-last"]


StaleWrite = Callable[[Store, LogBook], Awaitable[Any]]

STALE_WRITES: dict[str, StaleWrite] = {
    "save_logbook": lambda s, b: s.save_logbook(b.model_copy(update={"name": "x"}), token=4),
    "update_flow_detail": lambda s, b: s.update_flow_detail(
        b.uuid,
        next(iter(b.flows.values())).model_copy(update={"state": FlowState.FAILURE}),
        token=4,
    ),
    "update_atom_detail": lambda s, b: s.update_atom_detail(
        b.uuid, next(iter(b.flows.values())).uuid, AtomDetail(name="atom-0"), token=4
    ),
}


@pytest.mark.parametrize("write", list(STALE_WRITES))
async def test_a_stale_token_is_refused_and_changes_nothing(store: Store, write: str) -> None:
    book = await store.save_logbook(make_book(), token=5)
    before = await store.get_logbook(book.uuid)
    with pytest.raises(ClaimLost, match="fencing token 4 refused"):
        await STALE_WRITES[write](store, book)
    assert await store.get_logbook(book.uuid) == before


async def test_racing_owners_never_write_after_a_newer_token(store: Store) -> None:
    book = await store.save_logbook(make_book(atoms=0))
    flow_uuid = next(iter(book.flows))
    newer_wrote = False
    late_writes: list[str] = []
    written: set[str] = set()

    async def owner(token: int) -> None:
        nonlocal newer_wrote
        for i in range(40):
            atom = AtomDetail(name=f"t{token}-{i}")
            started_after_newer = newer_wrote
            try:
                await store.update_atom_detail(book.uuid, flow_uuid, atom, token=token)
            except ClaimLost:
                continue
            finally:
                await anyio.lowlevel.checkpoint()
            written.add(atom.name)
            if token == 2:
                newer_wrote = True
            elif started_after_newer:
                late_writes.append(atom.name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(owner, 1)
        tg.start_soon(owner, 2)
    saved = await store.get_logbook(book.uuid)
    assert saved.token == 2
    assert late_writes == []
    assert set(saved.flows[flow_uuid].atoms) == written


async def test_a_closed_store_refuses_calls(space: RedisSpace) -> None:
    store = open_store(space.store_url("redis_store"))
    async with store:
        book = await store.save_logbook(make_book())
    with pytest.raises(StoreClosed):
        await store.get_logbook(book.uuid)


async def test_details_are_encoded_without_pydantic_and_read_back_as_saved(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A logbook, its flow and atoms of plain values are encoded by msgspec, not pydantic's
    serializer (several times its cost on a job's path), as pydantic wrote them: each atom
    whole (name and version too), read back by ``AtomDetail.model_validate_json``. An atom
    with a failure (a model) still takes pydantic's path, and reads back the same."""
    failed = AtomDetail(
        name="failed",
        state=AtomState.FAILURE,
        failure=Failure(exc_type="builtins.ValueError", message="no", exc_types=("a", "b")),
    )
    flow = FlowDetail(name="f", state=FlowState.RUNNING, meta={"m": [1, 2.5, "é", None]})
    flow.atoms["a"] = AtomDetail(name="a", state=AtomState.SUCCESS, result={"r": [1, {"x": 2}]})
    flow.atoms["failed"] = failed
    book = LogBook(name="b", meta={"k": True}, flows={flow.uuid: flow})
    dumped: list[str] = []
    real_dump = AtomDetail.model_dump_json

    def dump(self: Any, *args: Any, **kwargs: Any) -> str:
        dumped.append(getattr(self, "name", type(self).__name__))
        return real_dump(self, *args, **kwargs)

    for model in (AtomDetail, FlowDetail, LogBook):
        monkeypatch.setattr(model, "model_dump_json", dump)
    saved = await store.save_logbook(book, token=1)
    atom = saved.flows[flow.uuid].atoms["a"].model_copy(update={"result": {"r": 2}})
    await store.update_atom_detail(book.uuid, flow.uuid, atom, token=1)
    assert dumped == ["failed"]
    monkeypatch.undo()

    again = await store.get_logbook(book.uuid)
    expected = book.model_copy(deep=True, update={"token": 1})
    expected.flows[flow.uuid].atoms["a"] = atom.model_copy(update={"version": 1})
    assert again == expected
