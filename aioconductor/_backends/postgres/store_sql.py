"""The SQL of the PostgreSQL store: its schema, its statements, and how their rows become
logbooks.

``{s}`` stands for the quoted schema (validated by ``schema.quote_schema``); everything else is
a bind parameter: ``$1`` is always the namespace. The store looks its statements up as
attributes of :class:`StoreStatements`, with the schema put in once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aioconductor._backends.postgres.schema import Migrations
from aioconductor._backends.postgres.schema import refuse_nul
from aioconductor._backends.postgres.store_batch import CREATE_BOOKS
from aioconductor._backends.postgres.store_batch import CREATE_BOOKS_JSON
from aioconductor._backends.postgres.store_batch import UPDATE_ATOMS_BATCH
from aioconductor._backends.postgres.store_batch import UPDATE_ATOMS_BATCH_JSON
from aioconductor._fastjson import decode
from aioconductor.errors import LogBookNotFound
from aioconductor.errors import StoreError
from aioconductor.persistence._json import atom_json
from aioconductor.persistence._json import dumps
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import LogBook

MIGRATIONS: Migrations = [
    [
        """CREATE TABLE IF NOT EXISTS {s}.logbooks (
            seq bigserial PRIMARY KEY,
            namespace text NOT NULL,
            uuid text NOT NULL,
            name text NOT NULL,
            created_at float8 NOT NULL,
            updated_at float8 NOT NULL,
            meta json NOT NULL,
            token bigint,
            UNIQUE (namespace, uuid)
        )""",
        "CREATE INDEX IF NOT EXISTS logbooks_age ON {s}.logbooks (namespace, created_at, seq)",
        """CREATE TABLE IF NOT EXISTS {s}.flow_details (
            seq bigserial PRIMARY KEY,
            namespace text NOT NULL,
            book_uuid text NOT NULL,
            uuid text NOT NULL,
            name text NOT NULL,
            state text NOT NULL,
            version integer NOT NULL,
            meta json NOT NULL,
            UNIQUE (namespace, book_uuid, uuid),
            FOREIGN KEY (namespace, book_uuid) REFERENCES {s}.logbooks (namespace, uuid)
                ON DELETE CASCADE
        )""",
        """CREATE TABLE IF NOT EXISTS {s}.atom_details (
            seq bigserial PRIMARY KEY,
            namespace text NOT NULL,
            book_uuid text NOT NULL,
            flow_uuid text NOT NULL,
            name text NOT NULL,
            version integer NOT NULL,
            detail json NOT NULL,
            UNIQUE (namespace, book_uuid, flow_uuid, name),
            FOREIGN KEY (namespace, book_uuid, flow_uuid)
                REFERENCES {s}.flow_details (namespace, book_uuid, uuid) ON DELETE CASCADE
        )""",
    ],
]

INSERT_BOOK = """INSERT INTO {s}.logbooks
        (namespace, uuid, name, created_at, updated_at, meta, token)
    VALUES ($1, $2, $3, $4, $5, $6::json, $7) ON CONFLICT (namespace, uuid) DO NOTHING
    RETURNING seq"""
LOCK_BOOK = "SELECT token FROM {s}.logbooks WHERE namespace = $1 AND uuid = $2 FOR UPDATE"
UPDATE_BOOK = """UPDATE {s}.logbooks SET name = $3, meta = $4::json, updated_at = $5, token = $6
    WHERE namespace = $1 AND uuid = $2"""
SET_TOKEN = "UPDATE {s}.logbooks SET token = $3 WHERE namespace = $1 AND uuid = $2"
INSERT_FLOW = """INSERT INTO {s}.flow_details
        (namespace, book_uuid, uuid, name, state, version, meta)
    VALUES ($1, $2, $3, $4, $5, $6, $7::json)
    ON CONFLICT (namespace, book_uuid, uuid) DO NOTHING RETURNING seq"""
INSERT_ATOM = """INSERT INTO {s}.atom_details
        (namespace, book_uuid, flow_uuid, name, version, detail)
    VALUES ($1, $2, $3, $4, $5, $6::json)"""
LOCK_FLOW = """SELECT b.token, f.version FROM {s}.logbooks AS b
    LEFT JOIN {s}.flow_details AS f
        ON f.namespace = b.namespace AND f.book_uuid = b.uuid AND f.uuid = $3
    WHERE b.namespace = $1 AND b.uuid = $2 FOR UPDATE OF b"""
UPDATE_FLOW = """UPDATE {s}.flow_details SET name = $4, state = $5, version = $6, meta = $7::json
    WHERE namespace = $1 AND book_uuid = $2 AND uuid = $3"""
ATOMS_OF = """SELECT name, version, detail::text FROM {s}.atom_details
    WHERE namespace = $1 AND book_uuid = $2 AND flow_uuid = $3 ORDER BY seq"""
# Atoms given as three arrays (names, versions read, details; at the parameters each statement
# names with `_with_atoms`), checked and written by the statements below: `stale` is the first
# whose version read is not the stored one; the upsert writes them only when the statement's
# verdict is 'ok', and re-checks the version on the row it conflicts with, so two writers of
# one version cannot both win. The logbook row is locked first (FOR UPDATE), so the token
# read is current.
_GIVEN_ATOMS = """given AS (
        SELECT x.name, x.version, x.detail, x.n
        FROM unnest($NAMES::text[], $VERSIONS::integer[], $DETAILS::text[])
            WITH ORDINALITY AS x(name, version, detail, n)
    ), stale AS (
        SELECT g.name, coalesce(a.version, 0) AS stored FROM given AS g
        LEFT JOIN {s}.atom_details AS a ON a.namespace = $1 AND a.book_uuid = $2
            AND a.flow_uuid = $3 AND a.name = g.name
        WHERE coalesce(a.version, 0) <> g.version
        ORDER BY g.n LIMIT 1
    )"""
_WRITE_ATOMS = """atoms_written AS (
        INSERT INTO {s}.atom_details AS a (namespace, book_uuid, flow_uuid, name, version, detail)
        SELECT $1, $2, $3, g.name, g.version + 1, g.detail::json FROM given AS g
        WHERE (SELECT status FROM verdict) = 'ok'
        ORDER BY g.n
        ON CONFLICT (namespace, book_uuid, flow_uuid, name) DO UPDATE
            SET version = excluded.version, detail = excluded.detail
            WHERE a.version = excluded.version - 1
        RETURNING 1
    )"""
# The engine's first write of a job, in one statement: a new logbook with its flows and their
# atoms. Nothing is written if the logbook exists ($7 token; $8-$12 the flows' uuids, names,
# states, versions and metas; $13-$16 the atoms' flow uuids, names, versions and details); the
# caller then takes the general path. (Foreign keys are checked at the statement's end, once
# every row is in.)
CREATE_BOOK = """WITH b AS (
        INSERT INTO {s}.logbooks (namespace, uuid, name, created_at, updated_at, meta, token)
        VALUES ($1, $2, $3, $4, $5, $6::json, $7) ON CONFLICT (namespace, uuid) DO NOTHING
        RETURNING seq
    ), f AS (
        INSERT INTO {s}.flow_details (namespace, book_uuid, uuid, name, state, version, meta)
        SELECT $1, $2, x.uuid, x.name, x.state, x.version, x.meta::json
        FROM b, unnest($8::text[], $9::text[], $10::text[], $11::integer[], $12::text[])
            WITH ORDINALITY AS x(uuid, name, state, version, meta, n)
        ORDER BY x.n
        RETURNING 1
    ), a AS (
        INSERT INTO {s}.atom_details (namespace, book_uuid, flow_uuid, name, version, detail)
        SELECT $1, $2, x.flow_uuid, x.name, x.version, x.detail::json
        FROM b, unnest($13::text[], $14::text[], $15::integer[], $16::text[])
            WITH ORDINALITY AS x(flow_uuid, name, version, detail, n)
        ORDER BY x.n
        RETURNING 1
    )
    SELECT (SELECT seq FROM b), (SELECT count(*) FROM f)"""


def _with_atoms(statement: str, first: int) -> str:
    """``statement`` with the atom CTEs in, their arrays at parameters ``first`` and on."""
    given = _GIVEN_ATOMS.replace("$NAMES", f"${first}").replace("$VERSIONS", f"${first + 1}")
    given = given.replace("$DETAILS", f"${first + 2}")
    return statement.replace("{given}", given).replace("{write}", _WRITE_ATOMS)


# A flow's own fields in one statement, when the token and version allow it, then the flow's
# atoms as arrays. A status other than 'ok', or no row written, sends the caller to the general
# path, which raises the right error. $3 flow, $4 name, $5 state, $6 version read, $7 token, $8
# meta; $9-$11 atoms to write in the same statement (empty arrays for none), all checked before
# anything is written: a stale one is reported as 'atomconflict' with its name and version.
# Its CTEs (FLOW_END) are shared with the fused ending (``fused.py``), which runs them behind
# the board's fence: ``{gate}`` is a condition the logbook's lock is taken under, ``{refusal}``
# a verdict before the store's own (both empty here).
FLOW_END = """book AS (
        SELECT token FROM {s}.logbooks WHERE namespace = $1 AND uuid = $2{gate} FOR UPDATE
    ), flow AS (
        SELECT version FROM {s}.flow_details
        WHERE namespace = $1 AND book_uuid = $2 AND uuid = $3
    ), {given}, verdict AS (
        SELECT CASE{refusal}
            WHEN NOT EXISTS (SELECT FROM book) THEN 'notfound'
            WHEN $7::bigint < (SELECT token FROM book) THEN 'lost'
            WHEN NOT EXISTS (SELECT FROM flow) THEN 'noflow'
            WHEN (SELECT version FROM flow) <> $6::integer THEN 'conflict'
            WHEN EXISTS (SELECT FROM stale) THEN 'atomconflict'
            ELSE 'ok' END AS status
    ), {write}, written AS (
        UPDATE {s}.flow_details SET name = $4, state = $5, version = $6::integer + 1,
            meta = $8::json
        WHERE namespace = $1 AND book_uuid = $2 AND uuid = $3 AND version = $6::integer
            AND (SELECT status FROM verdict) = 'ok'
        RETURNING version
    ), fenced AS (
        UPDATE {s}.logbooks SET token = $7::bigint
        WHERE namespace = $1 AND uuid = $2 AND EXISTS (SELECT FROM written)
            AND (token IS NULL OR token < $7::bigint)
    ), atoms AS (
        SELECT name, version, detail::text AS detail, seq FROM {s}.atom_details
        WHERE namespace = $1 AND book_uuid = $2 AND flow_uuid = $3
    )"""
FLOW_END = _with_atoms(FLOW_END, 9)


def flow_end_args(
    namespace: str,
    book_uuid: str,
    flow: FlowDetail,
    token: int | None,
    atoms: Sequence[AtomDetail],
) -> tuple[Any, ...]:
    """``FLOW_END``'s parameters ($1-$11: the flow's fields, ``atoms`` as arrays), after the
    checks the store makes before it writes a flow, in its order, raising what they raise."""
    if "\x00" in book_uuid:
        raise LogBookNotFound(f"no logbook {book_uuid!r} in this store")
    if "\x00" in flow.uuid or "\x00" in flow.name:
        refuse_nul(f"flow {flow.uuid!r}", flow.uuid + flow.name, StoreError)
    check_atom_names(flow.atoms.values())
    # Most metas are empty dicts: written without encoding.
    empty = type(flow.meta) is dict and not flow.meta
    meta = "{}" if empty else dumps(f"flow {flow.name!r} meta", flow.meta)
    check_atom_names(atoms)
    # The flow's own atoms are not encoded: this statement saves only ``atoms``. A flow not
    # saved yet is added with its atoms by the store's general path, which encodes them (and
    # refuses what JSON cannot carry) before it writes anything.
    details = [atom_json(atom) for atom in atoms]
    return (
        namespace,
        book_uuid,
        flow.uuid,
        flow.name,
        flow.state.value,
        flow.version,
        token,
        meta,
        [atom.name for atom in atoms],
        [atom.version for atom in atoms],
        details,
    )


def check_atom_names(atoms: Iterable[AtomDetail]) -> None:
    """Refuse an atom name PostgreSQL's ``text`` cannot hold (the message built only then)."""
    for atom in atoms:
        if "\x00" in atom.name:
            refuse_nul(f"atom {atom.name!r}", atom.name, StoreError)


UPDATE_FLOW_FAST = f"""WITH {FLOW_END.replace("{gate}", "").replace("{refusal}", "")}
    SELECT EXISTS (SELECT FROM written),
        (SELECT array_agg(name ORDER BY seq) FROM atoms),
        (SELECT array_agg(version ORDER BY seq) FROM atoms),
        (SELECT array_agg(detail ORDER BY seq) FROM atoms),
        (SELECT status FROM verdict), (SELECT token FROM book), (SELECT version FROM flow),
        (SELECT name FROM stale), (SELECT stored FROM stale),
        (SELECT count(*) FROM atoms_written)"""
# Several atoms of one flow in one statement, every one checked before any is written. $3 flow,
# $4 token, $5-$7 the atoms.
UPDATE_ATOMS = """WITH book AS (
        SELECT token FROM {s}.logbooks WHERE namespace = $1 AND uuid = $2 FOR UPDATE
    ), flow AS (
        SELECT 1 FROM {s}.flow_details WHERE namespace = $1 AND book_uuid = $2 AND uuid = $3
    ), {given}, verdict AS (
        SELECT CASE
            WHEN NOT EXISTS (SELECT FROM book) THEN 'notfound'
            WHEN $4::bigint < (SELECT token FROM book) THEN 'lost'
            WHEN NOT EXISTS (SELECT FROM flow) THEN 'noflow'
            WHEN EXISTS (SELECT FROM stale) THEN 'atomconflict'
            ELSE 'ok' END AS status
    ), {write}, fenced AS (
        UPDATE {s}.logbooks SET token = $4::bigint
        WHERE namespace = $1 AND uuid = $2 AND EXISTS (SELECT FROM atoms_written)
            AND (token IS NULL OR token < $4::bigint)
    )
    SELECT (SELECT status FROM verdict), (SELECT token FROM book), (SELECT name FROM stale),
        (SELECT stored FROM stale), (SELECT count(*) FROM atoms_written)"""
UPDATE_ATOMS = _with_atoms(UPDATE_ATOMS, 5)
DESTROY = "DELETE FROM {s}.logbooks WHERE namespace = $1 AND uuid = $2 RETURNING seq"
DESTROY_MANY = """WITH gone AS (
    DELETE FROM {s}.logbooks WHERE namespace = $1 AND uuid = ANY($2::text[]) RETURNING 1)
    SELECT count(*) FROM gone"""
# A logbook (or a page of them) with every flow and atom, in one statement, so one snapshot.
# Rows: (kind, seq, key, parent, name, created_at, updated_at, data, token, state, version);
# kind 0 a logbook (key: its uuid), 1 a flow (key: its uuid, parent: its logbook's), 2 an atom
# (key: its flow's uuid, parent: its logbook's).
_LOAD = """WITH b AS ({books})
    SELECT 0, b.seq, b.uuid, NULL, b.name, b.created_at, b.updated_at, b.meta::text, b.token,
        NULL, NULL FROM b
    UNION ALL
    SELECT 1, f.seq, f.uuid, f.book_uuid, f.name, NULL, NULL, f.meta::text, NULL, f.state,
        f.version
    FROM {s}.flow_details AS f JOIN b ON f.namespace = $1 AND f.book_uuid = b.uuid
    UNION ALL
    SELECT 2, a.seq, a.flow_uuid, a.book_uuid, a.name, NULL, NULL, a.detail::text, NULL, NULL,
        a.version
    FROM {s}.atom_details AS a JOIN b ON a.namespace = $1 AND a.book_uuid = b.uuid
    ORDER BY 1, 6, 2"""
_BOOK_COLUMNS = "seq, uuid, name, created_at, updated_at, meta, token"
GET = _LOAD.replace(
    "{books}", f"SELECT {_BOOK_COLUMNS} FROM {{s}}.logbooks WHERE namespace = $1 AND uuid = $2"
)
PAGE_QUERY = _LOAD.replace(
    "{books}",
    f"""SELECT {_BOOK_COLUMNS} FROM {{s}}.logbooks
        WHERE namespace = $1 AND (created_at, seq) > ($2::float8, $3::bigint)
        ORDER BY created_at, seq LIMIT $4""",
)


@dataclass(frozen=True, slots=True)
class StoreStatements:
    """The store's statements, looked up as attributes (a misspelt one is a type error);
    :func:`~.schema.with_schema` puts the schema in."""

    insert_book: str = INSERT_BOOK
    lock_book: str = LOCK_BOOK
    update_book: str = UPDATE_BOOK
    set_token: str = SET_TOKEN
    insert_flow: str = INSERT_FLOW
    insert_atom: str = INSERT_ATOM
    lock_flow: str = LOCK_FLOW
    update_flow: str = UPDATE_FLOW
    atoms_of: str = ATOMS_OF
    create_book: str = CREATE_BOOK
    create_books: str = CREATE_BOOKS
    create_books_json: str = CREATE_BOOKS_JSON
    update_flow_fast: str = UPDATE_FLOW_FAST
    update_atoms: str = UPDATE_ATOMS
    update_atoms_batch: str = UPDATE_ATOMS_BATCH
    update_atoms_json: str = UPDATE_ATOMS_BATCH_JSON
    destroy: str = DESTROY
    destroy_many: str = DESTROY_MANY
    get: str = GET
    page_query: str = PAGE_QUERY


def atom_read(name: str, version: int, detail: str) -> AtomDetail:
    """An atom as a read returns it: its ``detail`` JSON (as stored), name and version."""
    return AtomDetail.model_validate({**decode(detail), "name": name, "version": version})


def assemble(rows: Iterable[Sequence[Any]]) -> list[LogBook]:
    """Logbooks from the rows of ``GET`` or ``PAGE_QUERY`` (``_LOAD``), in their order."""
    books: dict[str, dict[str, Any]] = {}
    flows: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, _, key, parent, name, created_at, updated_at, data, token, state, version in rows:
        if kind == 0:
            books[key] = {
                "uuid": key,
                "name": name,
                "created_at": created_at,
                "updated_at": updated_at,
                "meta": decode(data),
                "token": token,
                "flows": {},
            }
        elif kind == 1:
            flow = {"uuid": key, "name": name, "state": state, "version": version}
            flow.update(meta=decode(data), atoms={})
            books[parent]["flows"][key] = flow
            flows[(parent, key)] = flow
        else:
            atom = decode(data)
            atom.update(name=name, version=version)
            flows[(parent, key)]["atoms"][name] = atom
    return [LogBook.model_validate(book) for book in books.values()]
