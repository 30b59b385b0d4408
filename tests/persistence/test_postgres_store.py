"""What only the PostgreSQL store must show: options, NUL, races, cancellation, secrets."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]
import pytest

from aioconductor.errors import (
    BackendUnavailable,
    ClaimLost,
    ConfigurationError,
    StoreError,
    VersionConflict,
)
from aioconductor.persistence import Store, open_store
from aioconductor.persistence.models import AtomDetail, FlowDetail, LogBook
from aioconductor.persistence.postgres import PostgresStore
from tests.conftest import POSTGRES_URL
from tests.postgres_helpers import drop_schemas, require_postgres, unique_schema, url

pytestmark = pytest.mark.postgres


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    require_postgres()
    name = unique_schema()
    try:
        yield name
    finally:
        await drop_schemas(name)


@pytest.fixture
def app_name() -> str:
    return f"aioc_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def store(schema: str, app_name: str) -> AsyncIterator[Store]:
    async with open_store(url(schema, "pg_store", application_name=app_name)) as opened:
        yield opened


@pytest.fixture
async def admin() -> AsyncIterator[Any]:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        yield conn
    finally:
        await conn.close()


def book_with_atoms(atoms: int = 2) -> LogBook:
    book = LogBook(name="job")
    flow = FlowDetail(name="flow")
    for a in range(atoms):
        flow.atoms[f"atom-{a}"] = AtomDetail(name=f"atom-{a}")
    book.flows[flow.uuid] = flow
    return book


async def test_url_options_are_read_by_the_store(schema: str, admin: Any) -> None:
    async with open_store(url(schema, "ns", pool_min="1", pool_max="2")) as store:
        assert isinstance(store, PostgresStore)
        assert store.schema == schema and store._link.pool_max == 2
        await store.save_logbook(LogBook(name="b"))
    count = await admin.fetchval(f'SELECT count(*) FROM "{schema}".logbooks')
    assert count == 1
    with pytest.raises(ConfigurationError):
        open_store(url("bad;schema", "ns"))


async def test_nul_in_details_is_kept_and_in_names_refused(store: Store) -> None:
    book = book_with_atoms()
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
    book = await store.save_logbook(book_with_atoms())
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
    book = await store.save_logbook(book_with_atoms(atoms=0), token=1)
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


async def test_cancelled_writes_leave_no_transaction_open_and_no_lock(
    store: Store, admin: Any, app_name: str
) -> None:
    book = await store.save_logbook(book_with_atoms())
    flow = next(iter(book.flows.values()))
    rng = random.Random(8)
    interrupted = 0
    for i in range(300):
        with anyio.move_on_after(rng.uniform(0, 0.004)) as scope:
            if i % 3 == 0:
                extra = FlowDetail(name=f"f{i}", atoms={"a": AtomDetail(name="a")})
                await store.update_flow_detail(book.uuid, extra)
            elif i % 3 == 1:
                await store.save_logbook(book.model_copy(update={"name": f"n{i}"}))
            else:
                current = next(iter((await store.get_logbook(book.uuid)).flows.values()))
                await store.update_atom_detail(book.uuid, flow.uuid, current.atoms["atom-0"])
        interrupted += scope.cancelled_caught
    assert interrupted > 30
    query = """SELECT
        (SELECT count(*) FROM pg_stat_activity
            WHERE application_name = $1 AND state LIKE 'idle in transaction%'),
        (SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
            WHERE a.application_name = $1)"""
    with anyio.fail_after(5):
        while tuple(await admin.fetchrow(query, app_name)) != (0, 0):
            await anyio.sleep(0.05)
    # Each write happened whole or not at all; the store goes on working.
    got = await store.get_logbook(book.uuid)
    for each in got.flows.values():
        if each.uuid != flow.uuid:
            assert list(each.atoms) == ["a"]
    atom = next(iter(got.flows.values())).atoms["atom-0"]
    saved = await store.update_atom_detail(book.uuid, flow.uuid, atom)
    assert saved.version == atom.version + 1


async def test_terminated_connections_are_replaced(store: Store, admin: Any, app_name: str) -> None:
    book = await store.save_logbook(book_with_atoms())
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        app_name,
    )
    # Reads retry through the dropped connections.
    assert (await store.get_logbook(book.uuid)).uuid == book.uuid


SECRET = "s3cr3t-pa55word"


async def test_the_password_never_shows() -> None:
    store = open_store(f"postgresql://alice:{SECRET}@127.0.0.1:1/test?namespace=secret")
    assert SECRET not in repr(store)
    with pytest.raises(BackendUnavailable) as caught:
        await store.connect()
    error: BaseException | None = caught.value
    while error is not None:
        assert SECRET not in str(error) and SECRET not in repr(error)
        error = error.__cause__ or error.__context__
