"""The pick of ``claim_limited`` on the PostgreSQL board: a claim of limited jobs reads the
jobs it takes, not the backlog, whatever the table's statistics and whichever plan PL/pgSQL
caches (custom for a session's first five calls, then maybe generic). The plans of every
statement inside the function are read through ``auto_explain``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aioconductor.boards import JobBoard
from tests.backends import board_fixture, one_space_fixture
from tests.postgres_helpers import admin, most_rows, schema

__all__ = ["admin", "schema"]  # the fixtures, imported by name

pytestmark = pytest.mark.postgres

NAMESPACE = "pg_limits_pick"

space = one_space_fixture("postgres")
board = board_fixture(NAMESPACE, lease=30.0, poll_interval=0.05)


@pytest.mark.parametrize("plans", ["custom", "generic"])
@pytest.mark.parametrize("statistics", ["none", "analysed"])
async def test_a_limited_claim_reads_only_the_jobs_it_takes_whatever_the_statistics(
    board: JobBoard, admin: Any, schema: str, statistics: str, plans: str
) -> None:
    """64 limited jobs claimed among 3,000 ready ones: no step of any statement the function
    runs gives more than 64 rows. Before schema version 9 the pick's loop had no limit, and
    every case here read every ready job (3,000 rows: fetched and sorted, or the picked jobs
    found by a Seq Scan); with 30,000 it took 10 ms a claim, not 3."""
    await board.set_limit("k0", 100_000)
    posted = []
    for first in range(0, 3000, 500):
        for key in range(4):
            posted += await board.post_many(
                "f", [{"n": n} for n in range(first + key, first + 500, 4)], limit_key=f"k{key}"
            )
    if statistics == "analysed":
        await admin.execute(f'ANALYZE "{schema}".jobs')
    plans_seen: list[dict[str, Any]] = []

    def heard(_conn: Any, message: Any) -> None:
        text = str(message.message)
        if "plan:" in text:
            plans_seen.append(json.loads(text.split("plan:", 1)[1]))

    admin.add_log_listener(heard)
    try:
        await admin.execute("LOAD 'auto_explain'")
        for setting, value in [
            ("log_min_duration", "0"),
            ("log_analyze", "on"),
            ("log_timing", "off"),
            ("log_nested_statements", "on"),
            ("log_format", "json"),
            ("log_level", "notice"),
        ]:
            await admin.execute(f"SET auto_explain.{setting} = '{value}'")
        await admin.execute(f"SET plan_cache_mode = force_{plans}_plan")
        for _ in range(3):  # the function's plans are cached after its first call
            explain = admin.transaction()  # the claims are rolled back
            await explain.start()
            try:
                claimed = await admin.fetchval(
                    f"""SELECT count(*) FROM "{schema}".claim_limited($1, 'owner', 30, 64,
                        NULL)""",
                    NAMESPACE,
                )
            finally:
                await explain.rollback()
            assert claimed == 64
    finally:
        await admin.execute("RESET ALL")
        admin.remove_log_listener(heard)
    inner = [p for p in plans_seen if "claim_limited(" not in p["Query Text"]]
    assert any("ORDER BY j.priority DESC, j.seq" in p["Query Text"] for p in inner)  # the pick
    most = {p["Query Text"].split("FROM")[0].strip()[:60]: most_rows(p["Plan"]) for p in inner}
    assert max(most.values()) <= 64, most
    taken = await board.claim_batch("owner", 64)
    assert [job.id for job, _ in taken] == [job.id for job in posted[:64]]


async def test_a_pass_of_locked_jobs_goes_on_to_the_next(
    board: JobBoard, admin: Any, schema: str
) -> None:
    """The pick reads a pass of 64 jobs at a time: when every job of a pass is locked by
    another claimer (SKIP LOCKED passes them over), the next pass goes on past them."""
    await board.set_limit("k0", 100_000)
    posted = await board.post_many("f", [{"n": n} for n in range(200)], limit_key="k0")
    held = admin.transaction()  # another claimer's locks on the first 70 jobs
    await held.start()
    try:
        await admin.execute(
            f"""SELECT FROM "{schema}".jobs WHERE namespace = $1 AND seq IN (SELECT seq
                FROM "{schema}".jobs WHERE namespace = $1 ORDER BY seq LIMIT 70) FOR UPDATE""",
            NAMESPACE,
        )
        taken = await board.claim_batch("owner", 64)
    finally:
        await held.rollback()
    assert [job.id for job, _ in taken] == [job.id for job in posted[70:134]]
