"""What only the SQLite store promises: durability, several writers on one file, clean errors."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import anyio
import pytest

from aioconductor.boards import open_board
from aioconductor.errors import BackendUnavailable, ConfigurationError, StoreError
from aioconductor.persistence import Store, open_store
from aioconductor.persistence.models import AtomDetail, AtomState, FlowDetail, FlowState, LogBook


def url(path: Path, namespace: str = "default") -> str:
    return f"sqlite:///{path}?namespace={namespace}"


def book_with_flow() -> tuple[LogBook, FlowDetail]:
    flow = FlowDetail(name="flow", atoms={"a": AtomDetail(name="a")})
    return LogBook(name="job", flows={flow.uuid: flow}), flow


async def test_progress_survives_close_and_reopen(tmp_path: Path) -> None:
    book, flow = book_with_flow()
    async with open_store(url(tmp_path / "s.db")) as store:
        await store.save_logbook(book, token=3)
        await store.update_atom_detail(
            book.uuid, flow.uuid, AtomDetail(name="a", state=AtomState.SUCCESS, result={"x": 1})
        )
        await store.update_flow_detail(
            book.uuid, flow.model_copy(update={"state": FlowState.SUSPENDED})
        )
        saved = await store.get_logbook(book.uuid)

    async with open_store(url(tmp_path / "s.db")) as fresh:
        assert await fresh.get_logbook(book.uuid) == saved
        resumed = saved.flows[flow.uuid]
        assert resumed.state is FlowState.SUSPENDED
        assert resumed.atoms["a"].result == {"x": 1}
        assert saved.token == 3
        # The versions read back are the ones the next writes must carry.
        await fresh.update_flow_detail(book.uuid, resumed, token=3)
        await fresh.update_atom_detail(book.uuid, flow.uuid, resumed.atoms["a"], token=3)


async def test_two_stores_on_one_file_write_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    book, flow = book_with_flow()
    writes = 200
    async with open_store(url(path)) as one, open_store(url(path)) as two:
        await one.save_logbook(book)

        async def write(store: Store, prefix: str) -> None:
            for i in range(writes):
                atom = AtomDetail(name=f"{prefix}-{i}", state=AtomState.SUCCESS, result=i)
                await store.update_atom_detail(book.uuid, flow.uuid, atom, token=1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(write, one, "one")
            tg.start_soon(write, two, "two")

        atoms = (await two.get_logbook(book.uuid)).flows[flow.uuid].atoms
    assert len(atoms) == 1 + 2 * writes
    assert all(atoms[f"{p}-{i}"].result == i for p in ("one", "two") for i in range(writes))


async def test_the_store_shares_a_file_with_the_board(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with open_board(url(path)) as board, open_store(url(path)) as store:
        job = await board.post("j", flow="f", args={})
        book = await store.save_logbook(LogBook(uuid=job.id, name="j"))
        assert (await board.get(job.id)).id == (await store.get_logbook(book.uuid)).uuid


async def test_the_schema_version_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_store(url(path)):
        pass

    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT version FROM aioc_schema WHERE component = 'store'").fetchall()
    conn.close()
    assert rows == [(1,)]


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_store(url(path)):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE aioc_schema SET version = 99 WHERE component = 'store'")
    conn.close()

    with pytest.raises(ConfigurationError, match="upgrade aioconductor"):
        async with open_store(url(path)):
            pass


async def test_a_file_that_is_not_a_database_gives_backend_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a SQLite database, not even close" * 100)

    store = open_store(url(path))
    with pytest.raises(BackendUnavailable, match=str(path)) as caught:
        await store.connect()
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    await store.aclose()


async def test_an_unreachable_directory_gives_backend_unavailable(tmp_path: Path) -> None:
    store = open_store(url(tmp_path / "no" / "such" / "dir" / "s.db"))
    with pytest.raises(BackendUnavailable, match="no/such/dir"):
        await store.connect()
    await store.aclose()


async def test_values_json_cannot_carry_are_refused_and_change_nothing(tmp_path: Path) -> None:
    book, flow = book_with_flow()
    async with open_store(url(tmp_path / "s.db")) as store:
        await store.save_logbook(book)
        before = await store.get_logbook(book.uuid)

        with pytest.raises(StoreError, match="JSON"):
            await store.update_atom_detail(
                book.uuid, flow.uuid, AtomDetail(name="a", result=object())
            )
        for result in (math.nan, {1, 2}, b"bytes"):
            with pytest.raises(StoreError, match="JSON"):
                await store.update_atom_detail(
                    book.uuid, flow.uuid, AtomDetail(name="a", result=result)
                )
        with pytest.raises(StoreError, match="JSON"):
            await store.save_logbook(book.model_copy(update={"meta": {"x": math.inf}}))
        with pytest.raises(StoreError):
            await store.update_atom_detail(book.uuid, flow.uuid, AtomDetail(name="\udc80"))
        with pytest.raises(StoreError):
            await store.save_logbook(book, token=2**70)

        assert await store.get_logbook(book.uuid) == before
