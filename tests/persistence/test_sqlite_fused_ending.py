"""The SQLite fused ending's own rules and work per job (issue #25).

Its guarantees (a stale claim changes nothing, a refused flow end consumes nothing, a limit
key's slot is freed) are tested for every fusing backend in ``tests/test_server_calls.py``;
these tests pin when it fuses, and that it does no work it has no use for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aioconductor import open_board, open_store
from aioconductor._backends.sqlite import store_records
from aioconductor.boards.sqlite import SqliteJobBoard
from aioconductor.errors import StoreError
from aioconductor.models import JobState, Outcome
from aioconductor.persistence import sqlite as sqlite_store
from aioconductor.persistence.models import AtomDetail, AtomState, FlowDetail, FlowState, LogBook
from tests.flow_ends import claimed_and_running, flow_end


async def test_the_fused_ending_encodes_its_atom_once_and_reads_nothing_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-task job's end encodes its task once (the flow's own atoms are not encoded as a
    new flow's), and the flow is not read back and parsed: the conductor has no use for it."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    async with open_board(url) as board, open_store(url) as store:
        claim, flow = await claimed_and_running(board, store)
        fused = store.fused_ending(board)
        assert fused is not None
        ended, atom = flow_end(flow)
        encoded: list[str] = []
        atom_json = store_records.atom_json

        def counted(detail: AtomDetail) -> str:
            encoded.append(detail.name)
            return atom_json(detail)

        def no_read(row: Any) -> Any:
            raise AssertionError("the fused ending parsed the saved atoms")

        monkeypatch.setattr(store_records, "atom_json", counted)
        monkeypatch.setattr(sqlite_store, "atom_from_row", no_read)
        job = await fused(
            claim, Outcome.SUCCESS, {"r": 1}, claim.job_id, ended, claim.token, (atom,)
        )
        monkeypatch.undo()
        assert encoded == ["echo"]
        assert job.state is JobState.COMPLETE and job.result == {"r": 1}
        saved = (await store.get_logbook(claim.job_id)).flows[flow.uuid]
        assert saved.state is FlowState.SUCCESS and saved.version == 1
        assert saved.atoms["echo"].result == {"echoed": 1} and saved.atoms["echo"].version == 1


async def test_the_fused_ending_spans_namespaces_of_one_file(tmp_path: Path) -> None:
    """The board's and the store's namespaces may differ: each part writes its own rows."""
    path = tmp_path / "jobs.db"
    async with (
        open_board(f"sqlite:///{path}?namespace=jobs") as board,
        open_store(f"sqlite:///{path}?namespace=progress") as store,
    ):
        claim, flow = await claimed_and_running(board, store)
        fused = store.fused_ending(board)
        assert fused is not None
        ended, atom = flow_end(flow)
        job = await fused(claim, Outcome.SUCCESS, {}, claim.job_id, ended, claim.token, (atom,))
        assert job.state is JobState.COMPLETE
        assert (await store.get_logbook(claim.job_id)).flows[flow.uuid].version == 1


async def test_no_fused_ending_across_files_or_in_memory(tmp_path: Path) -> None:
    async with (
        open_board(f"sqlite:///{tmp_path / 'jobs.db'}") as board,
        open_store(f"sqlite:///{tmp_path / 'progress.db'}") as other_file,
        open_store("sqlite://") as in_memory,
        open_store("memory://") as not_sqlite,
    ):
        assert other_file.fused_ending(board) is None
        assert in_memory.fused_ending(board) is None
        assert not hasattr(not_sqlite, "fused_ending")
    async with SqliteJobBoard(":memory:") as memory_board, open_store("sqlite://") as store:
        assert store.fused_ending(memory_board) is None  # two private databases


async def test_the_same_file_by_another_name_fuses(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    async with (
        open_board(f"sqlite:///{tmp_path / 'jobs.db'}") as board,
        open_store(f"sqlite:///{tmp_path / 'sub' / '..' / 'jobs.db'}") as store,
    ):
        assert store.fused_ending(board) is not None


async def test_a_new_flow_whose_atom_cannot_be_encoded_is_refused_unwritten(
    tmp_path: Path,
) -> None:
    """A flow the logbook does not hold yet is added with its atoms by ``update_flow_detail``:
    an atom JSON cannot carry is refused, and nothing is written."""
    async with open_store(f"sqlite:///{tmp_path / 'progress.db'}") as store:
        book = await store.save_logbook(LogBook(name="b"))
        flow = FlowDetail(name="f", state=FlowState.RUNNING)
        flow.atoms["a"] = AtomDetail(name="a", state=AtomState.SUCCESS, result={1: "x"})
        with pytest.raises(StoreError, match="atom 'a'"):
            await store.update_flow_detail(book.uuid, flow)
        assert (await store.get_logbook(book.uuid)).flows == {}


def _traced(link: Any) -> list[str]:
    """The statements ``link``'s connection runs from now on (first words, upper case)."""
    statements: list[str] = []
    link._conn.set_trace_callback(lambda text: statements.append(" ".join(text.split()[:3])))
    return statements


async def test_a_new_logbook_and_a_flows_end_run_no_needless_reads(tmp_path: Path) -> None:
    """A new logbook is created without a read of its token first (the insert tells whether
    one was there), and a saved atom at its stored version is written by one UPDATE, without
    a read of its version first: a one-task job's two store writes, a statement less each."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    async with open_board(url) as board, open_store(url) as store:
        statements = _traced(store._link)
        claim, flow = await claimed_and_running(board, store)
        assert [s for s in statements if s.startswith(("SELECT", "INSERT"))] == [
            "INSERT INTO logbooks",
            "INSERT INTO flow_details",
            "INSERT INTO atom_details",
        ]
        ended, atom = flow_end(flow)
        statements.clear()
        saved = await store.update_flow_detail(claim.job_id, ended, token=claim.token, atoms=[atom])
        assert saved.version == 1 and saved.atoms["echo"].version == 1
        reads = [s for s in statements if s.startswith("SELECT")]
        assert reads == ["SELECT b.token, f.version", "SELECT book_uuid, flow_uuid,"]


async def test_once_fused_the_stores_writes_share_the_boards_connection(tmp_path: Path) -> None:
    """The store's writes run on the board's connection while the board is open (one writer
    of the file: no wait for each other's write lock, shared group commits), then on the
    store's own; reads stay on the store's own."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    async with open_store(url) as store:
        async with open_board(url) as board:
            assert store.fused_ending(board) is not None
            on_board, on_store = _traced(board._link), _traced(store._link)
            book = await store.save_logbook(LogBook(name="b"))
            assert "INSERT INTO logbooks" in on_board
            assert not [s for s in on_store if s.startswith("INSERT")]
            assert (await store.get_logbook(book.uuid)).name == "b"
            assert on_store and not [s for s in on_board if s.startswith("SELECT uuid, name")]
        on_store.clear()
        other = await store.save_logbook(LogBook(name="after the board"))
        assert "INSERT INTO logbooks" in on_store
        assert (await store.get_logbook(other.uuid)).name == "after the board"


async def test_a_write_the_closed_board_never_ran_is_made_on_the_stores_own(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    async with open_board(url) as board, open_store(url) as store:
        assert store.fused_ending(board) is not None
        conn, board._link._conn = board._link._conn, None  # closed, as a write would find it
        try:
            book = await store.save_logbook(LogBook(name="b"))
        finally:
            board._link._conn = conn
        assert (await store.get_logbook(book.uuid)).name == "b"
