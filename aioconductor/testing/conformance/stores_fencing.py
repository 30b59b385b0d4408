"""The store conformance suite: a stale fencing token changes nothing; namespaces never see
each other; a closed store refuses every call; a cancelled write leaves the store usable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest

from aioconductor.errors import ClaimLost
from aioconductor.errors import LogBookNotFound
from aioconductor.errors import StoreClosed
from aioconductor.persistence import Store
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import AtomState
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import FlowState
from aioconductor.persistence.models import LogBook
from aioconductor.testing.conformance._common import StoreOpener
from aioconductor.testing.conformance._store_data import first_flow
from aioconductor.testing.conformance._store_data import make_book

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


async def test_namespaces_are_isolated(store_backend: StoreOpener) -> None:
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


async def test_stores_on_one_backend_share_a_namespace(store_backend: StoreOpener) -> None:
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
    store_backend: StoreOpener, call: Callable[[Store], Awaitable[object]]
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
    store_backend: StoreOpener, call: Callable[[Store], Awaitable[object]]
) -> None:
    store = store_backend.store()

    with pytest.raises(StoreClosed, match="not connected"):
        await call(store)


async def test_async_with_connects_and_closes(store_backend: StoreOpener) -> None:
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
