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
