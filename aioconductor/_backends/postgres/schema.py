"""The schema of a namespace's tables: its name, its migrations, what its columns refuse.

Identifiers: the schema name is checked against ``[a-z_][a-z0-9_]{0,62}`` and double-quoted
wherever it appears in SQL; every value is a bind parameter.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from asyncpg import exceptions as pgexc  # type: ignore[import-untyped]

from aioconductor.errors import AioconductorError
from aioconductor.errors import ConfigurationError
from aioconductor.errors import SchemaMissing

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "SCHEMA_PREFIX",
    "Migrations",
    "check_schema",
    "default_schema",
    "migrate",
    "quote_schema",
    "refuse_nul",
    "with_schema",
]

logger = logging.getLogger("aioconductor.postgres")

#: A list of migrations; each is a list of statements with ``{s}`` for the quoted schema.
Migrations = Sequence[Sequence[str]]

#: A namespace's tables live in schema ``aioc_<namespace>`` unless the URL names a schema.
SCHEMA_PREFIX = "aioc_"
#: The first key of the advisory lock taken while migrating ("AIOC"); the second is the
#: schema name's hash, so two schemas migrate independently.
_MIGRATION_LOCK = 0x41494F43
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

S = TypeVar("S", bound="DataclassInstance")


def default_schema(namespace: str) -> str:
    """The schema of ``namespace``'s tables when the URL names none: one schema a namespace,
    so a namespace's data can be granted, dumped or dropped on its own."""
    return SCHEMA_PREFIX + namespace


def quote_schema(name: object) -> str:
    """``name`` double-quoted for SQL, once checked against ``[a-z_][a-z0-9_]{0,62}``.

    Raises:
        ConfigurationError: the name is not a plain lower-case identifier, or is reserved.
    """
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise ConfigurationError(
            f"schema {name!r} is not valid: use 1 to 63 characters of [a-z0-9_], "
            "not starting with a digit"
        )
    if name.startswith("pg_") or name == "information_schema":
        raise ConfigurationError(f"schema {name!r} is reserved by PostgreSQL")
    return f'"{name}"'


def with_schema(statements: S, q: str) -> S:
    """``statements`` (a dataclass of SQL texts, ``{s}`` standing for the schema) with the
    quoted schema ``q`` put in: done once per board or store, not once per call."""
    texts = {f.name: getattr(statements, f.name) for f in dataclasses.fields(statements)}
    return dataclasses.replace(statements, **{k: v.replace("{s}", q) for k, v in texts.items()})


def refuse_nul(what: str, value: str, error: type[AioconductorError]) -> None:
    """Refuse a string PostgreSQL's ``text`` cannot store (it holds a NUL character)."""
    if "\x00" in value:
        raise error(f"{what} contains a NUL character (\\x00), which PostgreSQL cannot store")


async def check_schema(
    conn: Any, *, schema: str, url: str, component: str, migrations: Migrations
) -> None:
    """Refuse a ``schema`` whose ``component`` tables are missing or older (``SchemaMissing``)
    or newer (``ConfigurationError``) than ``migrations`` make them; create and write
    nothing."""
    latest = len(migrations)
    try:
        version = await conn.fetchval(
            f"SELECT version FROM {quote_schema(schema)}.schema_version WHERE component = $1",
            component,
        )
    except (pgexc.UndefinedTableError, pgexc.InvalidSchemaNameError):
        version = None
    if version is not None and version > latest:
        raise ConfigurationError(
            f"schema {schema!r} holds {component} version {version}, newer than "
            f"this aioconductor knows ({latest}): upgrade aioconductor"
        )
    if version != latest:
        found = (
            f"no aioconductor {component} tables in schema {schema!r}"
            if not version
            else f"schema {schema!r} holds {component} version {version}, older than {latest}"
        )
        raise SchemaMissing(
            f"PostgreSQL at {url}: {found}, and this command does not create or migrate "
            "anything; run `aioconductor migrate` (or start a conductor) on it first"
        )


async def migrate(
    conn: Any, *, schema: str, url: str, component: str, migrations: Migrations
) -> None:
    """Bring ``component``'s tables in ``schema`` to the newest version (``url``, with its
    secrets masked, names the server in the log).

    Runs in one transaction under an advisory lock on the schema, so two processes connecting
    at once to a fresh database do not race: the second waits, then finds the work done.

    Raises:
        ConfigurationError: the schema is newer than this library knows.
    """
    q = quote_schema(schema)
    latest = len(migrations)
    try:
        version = await conn.fetchval(
            f"SELECT version FROM {q}.schema_version WHERE component = $1", component
        )
    except (pgexc.UndefinedTableError, pgexc.InvalidSchemaNameError):
        version = None
    if version == latest:
        return
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", _MIGRATION_LOCK, schema
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q}")
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {q}.schema_version (
                component text PRIMARY KEY,
                version integer NOT NULL
            )"""
        )
        version = await conn.fetchval(
            f"SELECT version FROM {q}.schema_version WHERE component = $1", component
        )
        version = version or 0
        if version > latest:
            raise ConfigurationError(
                f"schema {schema!r} holds {component} version {version}, newer than "
                f"this aioconductor knows ({latest}): upgrade aioconductor"
            )
        for steps in migrations[version:]:
            for step in steps:
                await conn.execute(step.replace("{s}", q))
        await conn.execute(
            f"""INSERT INTO {q}.schema_version (component, version) VALUES ($1, $2)
                ON CONFLICT (component) DO UPDATE SET version = excluded.version""",
            component,
            latest,
        )
    logger.info("PostgreSQL at %s: %s schema %r at version %d", url, component, q, latest)
