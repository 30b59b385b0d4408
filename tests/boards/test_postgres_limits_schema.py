"""Cancels and concurrency limits on the PostgreSQL board, the schema's side: the claim and
renewal paths of jobs without limit keys (no PL/pgSQL call), the index the counts read, and the
upgrades from schema versions 5 and 6."""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any

import pytest

from aioconductor._backends.postgres import board_sql as sql
from aioconductor._backends.postgres.schema import migrate
from aioconductor.boards import JobBoard, open_board
from aioconductor.boards.postgres import PostgresJobBoard
from aioconductor.models import Claim, LimitInfo, Outcome
from tests.backends import board_fixture, one_space_fixture
from tests.conftest import POSTGRES_URL
from tests.postgres_helpers import admin, schema, url

__all__ = ["admin", "schema"]  # the fixtures, imported by name

pytestmark = pytest.mark.postgres

NAMESPACE = "pg_limits"

space = one_space_fixture("postgres")
board = board_fixture(NAMESPACE, lease=30.0, poll_interval=0.05)


# -- the common path stays plain ----------------------------------------------------------------


def _function_loops(plan: Any, name: str = "claim_limited") -> list[int]:
    """How often each call of function ``name`` ran in an ``EXPLAIN (ANALYZE, FORMAT JSON)``
    plan."""
    found: list[int] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Function Name") == name:
            found.append(int(node["Actual Loops"]))
        for child in node.get("Plans", []):
            walk(child)

    walk(json.loads(plan)[0]["Plan"])
    return found


class _Rollback(Exception):
    """Raised to roll an ``EXPLAIN ANALYZE`` (which runs its statement) back."""


async def _analyze(admin: Any, query: str, *args: Any) -> Any:
    """The JSON plan of ``query`` as run with ``args``, rolled back."""
    plan = None
    with contextlib.suppress(_Rollback):
        async with admin.transaction():
            plan = await admin.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", *args)
            raise _Rollback
    return plan


@pytest.mark.parametrize("statement", ["claim_next", "claim_batch", "claim"])
async def test_jobs_without_limit_keys_are_claimed_without_the_function(
    board: JobBoard, admin: Any, statement: str
) -> None:
    assert isinstance(board, PostgresJobBoard)
    await board.set_limit("payments", 1)  # limits on the board; the first job has no key
    plain = await board.post("plain", "f", priority=1)
    limited = await board.post("limited", "f", limit_key="payments")
    query = getattr(board._sql, statement)

    def args(job_id: str) -> tuple[Any, ...]:
        if statement == "claim":
            return (board.namespace, job_id, "me", 30.0)
        return (board.namespace, "me", 30.0, 1)[: 3 if statement == "claim_next" else 4]

    assert _function_loops(await _analyze(admin, query, *args(plain.id))) == [0]
    await board.claim(plain.id, "me")
    # A job with a key: the function runs (and claims it).
    assert _function_loops(await _analyze(admin, query, *args(limited.id))) == [1]


async def test_jobs_without_limit_keys_are_renewed_without_the_function(
    board: JobBoard, admin: Any
) -> None:
    assert isinstance(board, PostgresJobBoard)
    plain = await board.claim((await board.post("plain", "f")).id, "me")
    limited = await board.claim((await board.post("l", "f", limit_key="payments")).id, "me")

    def args(claim: Claim) -> tuple[Any, ...]:
        return (board.namespace, claim.job_id, claim.owner, claim.token, 30.0)

    plan = await _analyze(admin, board._sql.renew, *args(plain))
    assert _function_loops(plan, "renew_limited") == [0]
    # A job with a key, its lease live: renewed by the function, under the key's lock.
    plan = await _analyze(admin, board._sql.renew, *args(limited))
    assert _function_loops(plan, "renew_limited") == [1]


async def test_live_claims_of_a_key_are_counted_from_their_index(
    board: JobBoard, admin: Any, schema: str
) -> None:
    await admin.execute(f'SET enable_seqscan = off; ANALYZE "{schema}".jobs')
    try:
        plan = await admin.fetch(
            f"""EXPLAIN SELECT count(*) FROM "{schema}".jobs WHERE namespace = 'x'
                AND limit_key = 'k' AND state = 'CLAIMED' AND expires_at > 0"""
        )
    finally:
        await admin.execute("RESET enable_seqscan")
    assert "jobs_limit_claims" in "\n".join(row[0] for row in plan)


# -- the upgrades -----------------------------------------------------------------------------


async def test_a_version_5_schema_is_upgraded_and_its_jobs_cancelled_and_limited(
    schema: str, admin: Any
) -> None:
    await migrate(
        admin, schema=schema, url=POSTGRES_URL, component="board", migrations=sql.MIGRATIONS[:5]
    )
    now = await admin.fetchval(sql.NOW_QUERY)
    insert = f"""INSERT INTO "{schema}".jobs (namespace, id, name, flow, args, priority,
            created_at, updated_at, attempts, max_attempts, token, state, owner, expires_at,
            ready_at)
        VALUES ('default', $1, 'old', 'f', '{{}}', 0, $2, $2, $3::integer, 3, $3::integer, $4,
            $5, $6, $6)"""
    waiting, held = str(uuid.uuid4()), str(uuid.uuid4())
    await admin.execute(insert, waiting, now, 0, "UNCLAIMED", None, now)
    await admin.execute(insert, held, now, 1, "CLAIMED", "owner-1", now + 60)
    async with open_board(url(schema)) as upgraded:
        old = await upgraded.get(waiting)
        assert old.cancel_reason is None and old.limit_key is None
        cancelled = await upgraded.cancel(waiting, reason="gone")
        assert cancelled.outcome is Outcome.CANCELLED
        flagged = await upgraded.cancel(held, reason="stop")
        assert flagged.claim is not None and flagged.claim.cancel_requested
        await upgraded.set_limit("payments", 1)
        new = await upgraded.post("new", "f", limit_key="payments")
        claimed = await upgraded.claim_next("owner-2")
        assert claimed is not None and claimed[0].id == new.id
        assert await upgraded.limits() == [LimitInfo(key="payments", limit=1, claimed=1)]
    version = await admin.fetchval(
        f"SELECT version FROM \"{schema}\".schema_version WHERE component = 'board'"
    )
    assert version == len(sql.MIGRATIONS) == 9


async def test_a_version_6_schema_is_upgraded_and_its_rows_of_keys_without_a_limit_go(
    schema: str, admin: Any
) -> None:
    """Version 6's claims left a limits row (max_claims NULL) for every key they met; the
    upgrade deletes those, keeps the limits, and the new functions count as before."""
    await migrate(
        admin, schema=schema, url=POSTGRES_URL, component="board", migrations=sql.MIGRATIONS[:6]
    )
    now = await admin.fetchval(sql.NOW_QUERY)
    insert = f"""INSERT INTO "{schema}".jobs (namespace, id, name, flow, args, priority,
            created_at, updated_at, attempts, max_attempts, token, state, owner, expires_at,
            ready_at, limit_key)
        VALUES ('default', $1, 'old', 'f', '{{}}', $2::integer, $3, $3, $4::integer, 3,
            $4::integer, $5, $6, $7, $7, $8)"""
    held, waiting, tenant = (str(uuid.uuid4()) for _ in range(3))
    await admin.execute(insert, held, 0, now, 1, "CLAIMED", "owner-1", now + 60, "payments")
    await admin.execute(insert, waiting, 2, now, 0, "UNCLAIMED", None, now, "payments")
    await admin.execute(insert, tenant, 1, now, 0, "UNCLAIMED", None, now, "tenant-1")
    await admin.executemany(
        f'INSERT INTO "{schema}".limits (namespace, limit_key, max_claims) VALUES ($1, $2, $3)',
        [("default", "payments", 1), ("default", "tenant-1", None), ("other", "t", None)],
    )
    async with open_board(url(schema)) as upgraded:
        rows = await admin.fetch(f'SELECT namespace, limit_key FROM "{schema}".limits')
        assert [tuple(row) for row in rows] == [("default", "payments")]
        assert await upgraded.limits() == [LimitInfo(key="payments", limit=1, claimed=1)]
        # The waiting job of the full key is passed over for the tenant's job.
        claimed = await upgraded.claim_next("owner-2")
        assert claimed is not None and claimed[0].id == tenant
        assert await upgraded.claim_next("owner-2") is None
        await upgraded.renew(claimed[1])
        await upgraded.set_limit("payments", None)
        assert await admin.fetchval(f'SELECT count(*) FROM "{schema}".limits') == 0
        again = await upgraded.claim_next("owner-2")
        assert again is not None and again[0].id == waiting
    version = await admin.fetchval(
        f"SELECT version FROM \"{schema}\".schema_version WHERE component = 'board'"
    )
    assert version == len(sql.MIGRATIONS) == 9
