"""PostgreSQL test support: a schema of its own per test, dropped afterwards."""

from __future__ import annotations

import socket
import uuid
from urllib.parse import urlsplit

from tests.conftest import POSTGRES_URL, service_missing


def require_postgres() -> str:
    """The test server's URL; skips (fails under CI) when nothing listens there."""
    parts = urlsplit(POSTGRES_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 2):
            pass
    except OSError:
        service_missing(f"PostgreSQL at {parts.hostname}:{parts.port or 5432}")
    return POSTGRES_URL


def unique_schema() -> str:
    """A schema name of this test's own."""
    return f"aioc_test_{uuid.uuid4().hex[:10]}"


def url(schema: str, namespace: str = "default", **options: str) -> str:
    """The test server's URL for a board or store in ``schema`` and ``namespace``."""
    query = "&".join(f"{k}={v}" for k, v in {"schema": schema, **options}.items())
    return f"{POSTGRES_URL}?namespace={namespace}&{query}"


async def drop_schemas(*schemas: str) -> None:
    """Drop the test schemas with everything in them."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def drain(board_url: str, owner: str, out: str, total: int) -> None:
    """Claim and consume jobs until ``total`` are complete, writing each consumed id to ``out``.

    Run in a separate process (``python -m tests.postgres_helpers URL OWNER OUT TOTAL``).
    """
    import anyio

    from aioconductor.boards import open_board
    from aioconductor.models import JobState

    consumed: list[str] = []
    async with open_board(board_url) as board:
        while True:
            claimed = await board.claim_next(owner, lease=30)
            if claimed is None:
                if await board.job_count(state=JobState.COMPLETE) >= total:
                    break
                await anyio.sleep(0.01)
                continue
            await board.consume(claimed[1], result={"by": owner})
            consumed.append(claimed[0].id)
    await anyio.Path(out).write_text("".join(f"{job_id}\n" for job_id in consumed))


if __name__ == "__main__":
    import sys

    import anyio

    anyio.run(drain, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
