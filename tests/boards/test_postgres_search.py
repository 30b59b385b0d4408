"""What only the PostgreSQL board promises about search: its indexed statements find what the
default (every job read, ``JobFilter.matches``) finds, but for the characters whose case folding
is not one to one (``ILIKE`` folds character by character); a page walks an index in ``seq``
order; and a schema of version 7 upgrades in place to 8. The shared semantics are in
``test_conformance.py``."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aioconductor._backends.postgres import board_sql as sql
from aioconductor._backends.postgres.searching import search_count_query, search_query
from aioconductor.boards import JobBoard, open_board
from aioconductor.boards._searching import Searching
from aioconductor.cli import main
from aioconductor.models import JobFilter, JobState, Outcome
from tests.backends import board_fixture, one_space_fixture
from tests.boards.search_checks import check_against_the_default, fill
from tests.boards.test_postgres import old_schema
from tests.postgres_helpers import admin, schema, url

__all__ = ["admin", "schema"]  # the fixtures, imported by name

pytestmark = pytest.mark.postgres

space = one_space_fixture("postgres")
board = board_fixture("pg_search", lease=30.0)

NAMES = ["École 3", "ÉCOLE 4", "100%_done 6", "back\\slash 7", "plain 8", "Straße 1"]
#: Pieces ILIKE and casefold agree on.
TEXTS = ["école", "ÉCOLE", "%", "_", "%_", "\\", "e 3", "1", "zz", "ße", "STRA"]


async def test_the_statements_find_what_the_default_finds(board: JobBoard) -> None:
    await fill(board, NAMES)
    await check_against_the_default(board, TEXTS)


async def test_where_ilike_and_casefold_differ(board: JobBoard) -> None:
    await board.post("Straße", "f")
    await board.post("STRASSE", "f")
    # casefold makes ß "ss"; ILIKE folds one character at a time.
    assert await board.search_count(JobFilter(text="strasse")) == 1
    assert await Searching._search_count(board, JobFilter(text="strasse")) == 2
    assert await board.search_count(JobFilter(text="\x00")) == 0
    assert (await board.search(JobFilter(flow="a\x00"))).jobs == []


@pytest.mark.parametrize(
    ("where", "index"),
    [
        (JobFilter(), "jobs_seq"),
        (JobFilter(flow="f"), "jobs_flow"),
        (JobFilter(state=JobState.TRASHED), "jobs_state_seq"),
        (JobFilter(state=JobState.UNCLAIMED), "jobs_state_seq"),
        (JobFilter(outcome=Outcome.FAILURE), "jobs_outcome"),
    ],
)
async def test_a_page_walks_an_index_in_seq_order(
    board: JobBoard, admin: Any, schema: str, where: JobFilter, index: str
) -> None:
    # An empty table: without seq scans and sorts the planner shows what the indexes allow.
    statement, args = search_query(where, 10, 100)
    count, count_args = search_count_query(where)
    q = f'"{schema}"'
    await admin.execute("SET enable_seqscan = off; SET enable_sort = off")
    try:
        rows = await admin.fetch(f"EXPLAIN {statement.replace('{s}', q)}", "pg_search", *args)
        counted = await admin.fetch(f"EXPLAIN {count.replace('{s}', q)}", "x", *count_args)
    finally:
        await admin.execute("RESET enable_seqscan; RESET enable_sort")
    plan = "\n".join(row[0] for row in rows)
    assert f"Index Scan Backward using {index}" in plan, plan
    assert "Seq Scan" not in "\n".join(row[0] for row in counted)


async def test_a_version_7_schema_is_upgraded_in_place(schema: str, admin: Any) -> None:
    waiting, held = await old_schema(admin, schema, 7)
    async with open_board(url(schema)) as upgraded:
        page = await upgraded.search()
        assert [job.id for job in page.jobs] == [held, waiting]
        assert await upgraded.search_count(JobFilter(state=JobState.CLAIMED)) == 1
        claim = (await upgraded.get(held)).claim
        assert claim is not None
        await upgraded.consume(claim, outcome=Outcome.REVERTED)
        counts = await upgraded.ended_counts(0, bucket=3600)
        assert [(c.ending, c.count) for c in counts] == [("REVERTED", 1)]
        assert await upgraded.purge(older_than=0) == 1
    version = await admin.fetchval(
        f"SELECT version FROM \"{schema}\".schema_version WHERE component = 'board'"
    )
    assert version == len(sql.MIGRATIONS) == 9
    indexes = {
        row[0]: row[1]
        for row in await admin.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1", schema
        )
    }
    assert {"jobs_seq", "jobs_flow", "jobs_state_seq", "jobs_outcome"} <= set(indexes)
    assert "INCLUDE (outcome)" in indexes["jobs_ended"]


async def test_the_migrate_command_upgrades_a_version_7_schema(schema: str, admin: Any) -> None:
    await old_schema(admin, schema, 7)
    assert await anyio.to_thread.run_sync(main, ["migrate", "--board", url(schema)]) == 0
    version = await admin.fetchval(
        f"SELECT version FROM \"{schema}\".schema_version WHERE component = 'board'"
    )
    assert version == 9
