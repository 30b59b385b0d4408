"""What only the PostgreSQL store must show: options, NUL, races of writers on one row.

Killed connections, cancelled writes and passwords, for every server backend's store: in
``tests/test_connection_faults.py``, ``tests/test_cancelled_calls.py``, ``tests/test_security.py``.
"""

from __future__ import annotations

import random

import anyio
import pytest

from aioconductor.errors import (
    ClaimLost,
    ConfigurationError,
    StoreError,
    VersionConflict,
)
from aioconductor.persistence import Store, open_store
from aioconductor.persistence.models import AtomDetail, LogBook
from aioconductor.persistence.postgres import PostgresStore
from aioconductor.testing.conformance._store_data import make_book
from tests.backends import PostgresSpace, one_space_fixture, store_fixture
from tests.postgres_helpers import url

pytestmark = pytest.mark.postgres


space = one_space_fixture("postgres")
store = store_fixture("pg_store")


async def test_url_options_are_read_by_the_store(space: PostgresSpace) -> None:
    async with open_store(space.store_url("ns", pool_min="1", pool_max="2")) as store:
        assert isinstance(store, PostgresStore)
        assert store.schema == space.schema and store._link.pool_max == 2
        await store.save_logbook(LogBook(name="b"))
    admin = await space.admin()
    count = await admin.fetchval(f'SELECT count(*) FROM "{space.schema}".logbooks')
    assert count == 1
    with pytest.raises(ConfigurationError):
        open_store(url("bad;schema", "ns"))


async def test_nul_in_details_is_kept_and_in_names_refused(store: Store) -> None:
    book = make_book()
    book.meta = {"k\x00": "v\x00"}
    saved = await store.save_logbook(book)
    flow = next(iter(saved.flows.values()))
    atom = flow.atoms["atom-0"].model_copy(update={"result": {"x": "a\x00b"}})
    await store.update_atom_detail(book.uuid, flow.uuid, atom)
    got = await store.get_logbook(book.uuid)
    assert got.meta == {"k\x00": "v\x00"}
    assert next(iter(got.flows.values())).atoms["atom-0"].result == {"x": "a\x00b"}
    with pytest.raises(StoreError, match="NUL"):
        await store.update_atom_detail(book.uuid, flow.uuid, AtomDetail(name="a\x00"))
    with pytest.raises(StoreError, match="NUL"):
        await store.save_logbook(LogBook(name="bad\x00name"))
    assert [b.uuid async for b in store.logbooks()] == [book.uuid]


async def test_racing_writers_of_one_atom_version_have_one_winner(store: Store) -> None:
    book = await store.save_logbook(make_book())
    flow = next(iter(book.flows.values()))
    atom = flow.atoms["atom-0"]
    wins = 0
    conflicts = 0

    async def write(i: int) -> None:
        nonlocal wins, conflicts
        try:
            await store.update_atom_detail(
                book.uuid, flow.uuid, atom.model_copy(update={"result": i})
            )
            wins += 1
        except VersionConflict:
            conflicts += 1

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(write, i)
    assert (wins, conflicts) == (1, 19)
    assert (
        next(iter((await store.get_logbook(book.uuid)).flows.values())).atoms["atom-0"].version == 1
    )


async def test_racing_fenced_writers_keep_the_highest_token(store: Store) -> None:
    book = await store.save_logbook(make_book(atoms=0), token=1)
    flow = next(iter(book.flows.values()))
    refused = 0

    async def write(token: int) -> None:
        nonlocal refused
        try:
            await store.update_atom_detail(
                book.uuid, flow.uuid, AtomDetail(name=f"a{token}"), token=token
            )
        except ClaimLost:
            refused += 1

    tokens = list(range(1, 31))
    random.Random(3).shuffle(tokens)
    async with anyio.create_task_group() as tg:
        for token in tokens:
            tg.start_soon(write, token)
    got = await store.get_logbook(book.uuid)
    assert got.token == 30
    written = {int(name[1:]) for name in next(iter(got.flows.values())).atoms}
    # Every write that was not refused carried a token at least as high as all before it.
    assert len(written) + refused == 30 and 30 in written
