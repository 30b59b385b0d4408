"""What only the SQLite board promises about search: its indexed statements find what the default
(every job read, ``JobFilter.matches``) finds, case folding of non-ASCII names and keys
included; a page walks an index in ``seq`` order (no scan, no sort); and a file of schema 6
upgrades in place to 7. The shared semantics are in ``test_conformance.py``."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from aioconductor._backends.sqlite import board_schema
from aioconductor._backends.sqlite.searching import (
    ended_counts_query,
    prepare,
    search_count_query,
    search_query,
)
from aioconductor.boards import open_board
from aioconductor.cli import main
from aioconductor.models import JobFilter, JobState, Outcome
from tests.boards.search_checks import check_against_the_default, fill
from tests.boards.test_sqlite import old_file, url

NAMES = [
    "Straße 1",
    "STRASSE 2",
    "École 3",
    "ÉCOLE 4",
    "kelvin 5 \u212a",
    "100%_done 6",
    "back\\slash 7",
    "plain 8",
    "ﬁle 9",
]
TEXTS = ["strasse", "STRAßE", "ß", "école", "ÉCOLE", "k", "\u212a", "%", "_", "%_", "\\", "e 3"]
TEXTS += ["FILE", "ﬁ", "1", "zz"]


async def test_the_statements_find_what_the_default_finds(tmp_path: Path) -> None:
    async with open_board(url(tmp_path / "jobs.db")) as board:
        await fill(board, NAMES)
        await check_against_the_default(board, TEXTS)


async def test_text_folds_case_as_casefold_does(tmp_path: Path) -> None:
    async with open_board(url(tmp_path / "jobs.db")) as board:
        jobs = {name: await board.post(name, "f") for name in NAMES}

        async def found(text: str) -> set[str]:
            page = await board.search(JobFilter(text=text))
            return {job.name for job in page.jobs}

        assert await found("strasse") == {"Straße 1", "STRASSE 2"}
        assert await found("ß") == {"Straße 1", "STRASSE 2"}
        assert await found("école") == {"École 3", "ÉCOLE 4"}
        # The Kelvin sign folds to "k", as casefold has it.
        assert await found("\u212a") == {"kelvin 5 \u212a", "back\\slash 7"}
        assert await found("fi") == {"ﬁle 9"}
        assert await found("%_") == {"100%_done 6"}
        assert await found("\\s") == {"back\\slash 7"}
        assert jobs


@pytest.fixture
def plan_of(tmp_path: Path) -> object:
    path = tmp_path / "plans.db"
    old_file(path, len(board_schema.SCHEMA))
    conn = sqlite3.connect(path)
    prepare(conn)

    def plan(statement: str, params: dict[str, object]) -> str:
        rows = conn.execute(f"EXPLAIN QUERY PLAN {statement}", params).fetchall()
        return "\n".join(row[-1] for row in rows)

    yield plan
    conn.close()


@pytest.mark.parametrize(
    ("where", "index"),
    [
        (JobFilter(), "jobs_seq"),
        (JobFilter(flow="f"), "jobs_flow"),
        (JobFilter(state=JobState.TRASHED), "jobs_state_seq"),
        (JobFilter(state=JobState.SCHEDULED), "jobs_state_seq"),
        (JobFilter(state=JobState.UNCLAIMED), "jobs_state_seq"),
        (JobFilter(outcome=Outcome.FAILURE), "jobs_outcome"),
    ],
)
def test_a_page_walks_an_index_in_seq_order(plan_of: object, where: JobFilter, index: str) -> None:
    plan = plan_of(*search_query(where, 10, 100, time.time(), "default"))  # type: ignore[operator]
    assert f"USING INDEX {index}" in plan or f"USING COVERING INDEX {index}" in plan, plan
    assert "SCAN jobs" not in plan and "TEMP B-TREE FOR ORDER BY" not in plan.split("MERGE")[0]
    count = plan_of(*search_count_query(where, time.time(), "default"))  # type: ignore[operator]
    assert "SCAN jobs" not in count, count


def test_ended_counts_read_the_ended_index_alone(plan_of: object) -> None:
    plan = plan_of(*ended_counts_query(0.0, 60.0, "default"))  # type: ignore[operator]
    assert "COVERING INDEX jobs_ended" in plan, plan


def _version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        row = conn.execute("SELECT version FROM aioc_schema WHERE component = 'board'")
        return int(row.fetchone()[0])


async def test_a_file_of_schema_6_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    waiting, held = old_file(path, 6)
    async with open_board(url(path)) as board:
        page = await board.search()
        assert [job.id for job in page.jobs] == [held, waiting]
        assert await board.search_count(JobFilter(state=JobState.CLAIMED)) == 1
        claim = (await board.get(held)).claim
        assert claim is not None
        await board.consume(claim, outcome=Outcome.REVERTED)
        counts = await board.ended_counts(0, bucket=3600)
        assert [(c.ending, c.count) for c in counts] == [("REVERTED", 1)]
        assert await board.purge(older_than=0) == 1
    assert _version(path) == len(board_schema.SCHEMA) == 7
    with contextlib.closing(sqlite3.connect(path)) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        columns = [row[2] for row in conn.execute("PRAGMA index_info(jobs_ended)")]
    assert {"jobs_seq", "jobs_flow", "jobs_state_seq", "jobs_outcome"} <= names
    assert columns == ["namespace", "state", "updated_at", "seq", "outcome"]


def test_the_migrate_command_upgrades_a_file_of_schema_6(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_file(path, 6)
    assert main(["migrate", "--board", url(path)]) == 0
    assert _version(path) == 7
