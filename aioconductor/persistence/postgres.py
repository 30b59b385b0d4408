"""`PostgresStore`: logbooks in PostgreSQL, with fenced writes checked on the server.

``postgresql://[user[:password]@]host[:port]/database?namespace=NAME`` (``postgres://`` too),
with the board's PostgreSQL options: ``schema`` (default ``aioc_<namespace>``: one schema a
namespace), ``pool_min``, ``pool_max``; every other option goes to asyncpg. The store's
tables sit beside the board's in the same schema and never overlap them.

Every write checks the logbook's fencing token and the detail's version before it changes
anything, under a lock on the logbook's row, so a writer holding a stale token or version
changes nothing. An atom write (the engine's hot path) is one statement that upserts that one
atom; ``save_logbook`` and ``update_flow_detail`` are one short transaction each. Details are
``json`` (kept exactly as written, ``\\u0000`` included); names are ``text``, which cannot hold a
NUL character: such a name is refused with ``StoreError``.

Schema (``schema_version`` records its version, component ``store``):

- ``logbooks``: a row per logbook, with the highest fencing token that wrote to it.
- ``flow_details``: a row per flow detail; ``seq`` keeps the order flows were added in.
- ``atom_details``: a row per atom: the atom (but its name and version) as JSON in ``detail``.
  Deleting a logbook deletes its flows and atoms (foreign keys, ``ON DELETE CASCADE``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Self

from aioconductor._backends.postgres.link import PostgresLink
from aioconductor._backends.postgres.schema import Migrations, refuse_nul
from aioconductor._backends.postgres.urls import URL_OPTIONS, split_options
from aioconductor._urls import BOARD_OPTIONS, ParsedURL
from aioconductor.errors import LogBookNotFound, StoreClosed, StoreError, VersionConflict
from aioconductor.persistence._copy import copy_atom, copy_flow
from aioconductor.persistence._json import atom_json, dumps
from aioconductor.persistence.base import Store, check_token, check_version
from aioconductor.persistence.models import AtomDetail, FlowDetail, LogBook

__all__ = ["PostgresStore"]

#: Logbooks read per statement by ``logbooks()``.
_PAGE = 100

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

_INSERT_BOOK = """INSERT INTO {s}.logbooks
        (namespace, uuid, name, created_at, updated_at, meta, token)
    VALUES ($1, $2, $3, $4, $5, $6::json, $7) ON CONFLICT (namespace, uuid) DO NOTHING
    RETURNING seq"""
_LOCK_BOOK = "SELECT token FROM {s}.logbooks WHERE namespace = $1 AND uuid = $2 FOR UPDATE"
_UPDATE_BOOK = """UPDATE {s}.logbooks SET name = $3, meta = $4::json, updated_at = $5, token = $6
    WHERE namespace = $1 AND uuid = $2"""
_SET_TOKEN = "UPDATE {s}.logbooks SET token = $3 WHERE namespace = $1 AND uuid = $2"
_INSERT_FLOW = """INSERT INTO {s}.flow_details
        (namespace, book_uuid, uuid, name, state, version, meta)
    VALUES ($1, $2, $3, $4, $5, $6, $7::json)
    ON CONFLICT (namespace, book_uuid, uuid) DO NOTHING RETURNING seq"""
_INSERT_ATOM = """INSERT INTO {s}.atom_details
        (namespace, book_uuid, flow_uuid, name, version, detail)
    VALUES ($1, $2, $3, $4, $5, $6::json)"""
_LOCK_FLOW = """SELECT b.token, f.version FROM {s}.logbooks AS b
    LEFT JOIN {s}.flow_details AS f
        ON f.namespace = b.namespace AND f.book_uuid = b.uuid AND f.uuid = $3
    WHERE b.namespace = $1 AND b.uuid = $2 FOR UPDATE OF b"""
_UPDATE_FLOW = """UPDATE {s}.flow_details SET name = $4, state = $5, version = $6, meta = $7::json
    WHERE namespace = $1 AND book_uuid = $2 AND uuid = $3"""
_ATOMS_OF = """SELECT name, version, detail::text FROM {s}.atom_details
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
_CREATE_BOOK = """WITH b AS (
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
# A flow's own fields in one statement, when the token and version allow it, then the flow's
# atoms as arrays. A status other than 'ok', or no row written, sends the caller to the general
# path, which raises the right error. $3 flow, $4 name, $5 state, $6 version read, $7 token, $8
# meta; $9-$11 atoms to write in the same statement (empty arrays for none), all checked before
# anything is written: a stale one is reported as 'atomconflict' with its name and version.
_UPDATE_FLOW_FAST = """WITH book AS (
        SELECT token FROM {s}.logbooks WHERE namespace = $1 AND uuid = $2 FOR UPDATE
    ), flow AS (
        SELECT version FROM {s}.flow_details
        WHERE namespace = $1 AND book_uuid = $2 AND uuid = $3
    ), {given}, verdict AS (
        SELECT CASE
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
    )
    SELECT EXISTS (SELECT FROM written),
        (SELECT array_agg(name ORDER BY seq) FROM atoms),
        (SELECT array_agg(version ORDER BY seq) FROM atoms),
        (SELECT array_agg(detail ORDER BY seq) FROM atoms),
        (SELECT status FROM verdict), (SELECT token FROM book), (SELECT version FROM flow),
        (SELECT name FROM stale), (SELECT stored FROM stale),
        (SELECT count(*) FROM atoms_written)"""


def _with_atoms(statement: str, first: int) -> str:
    """``statement`` with the atom CTEs in, their arrays at parameters ``first`` and on."""
    given = _GIVEN_ATOMS.replace("$NAMES", f"${first}").replace("$VERSIONS", f"${first + 1}")
    given = given.replace("$DETAILS", f"${first + 2}")
    return statement.replace("{given}", given).replace("{write}", _WRITE_ATOMS)


_UPDATE_FLOW_FAST = _with_atoms(_UPDATE_FLOW_FAST, 9)
# Several atoms of one flow in one statement, every one checked before any is written. $3 flow,
# $4 token, $5-$7 the atoms.
_UPDATE_ATOMS = """WITH book AS (
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
_UPDATE_ATOMS = _with_atoms(_UPDATE_ATOMS, 5)
_DESTROY = "DELETE FROM {s}.logbooks WHERE namespace = $1 AND uuid = $2 RETURNING seq"
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
_GET = _LOAD.replace(
    "{books}", f"SELECT {_BOOK_COLUMNS} FROM {{s}}.logbooks WHERE namespace = $1 AND uuid = $2"
)
_PAGE_QUERY = _LOAD.replace(
    "{books}",
    f"""SELECT {_BOOK_COLUMNS} FROM {{s}}.logbooks
        WHERE namespace = $1 AND (created_at, seq) > ($2::float8, $3::bigint)
        ORDER BY created_at, seq LIMIT $4""",
)


def _atom_read(name: str, version: int, detail: str) -> AtomDetail:
    """An atom as a read returns it: its ``detail`` JSON (as stored), name and version."""
    return AtomDetail.model_validate({**json.loads(detail), "name": name, "version": version})


def _names(book: LogBook | None, flow: FlowDetail | None = None) -> None:
    """Refuse names PostgreSQL's ``text`` cannot hold (a NUL character)."""
    if book is not None:
        refuse_nul(f"logbook {book.uuid!r}", book.uuid + book.name, StoreError)
        for each in book.flows.values():
            _names(None, each)
    if flow is not None:
        refuse_nul(f"flow {flow.uuid!r}", flow.uuid + flow.name, StoreError)
        for atom in flow.atoms.values():
            refuse_nul(f"atom {atom.name!r}", atom.name, StoreError)


def _assemble(rows: Iterable[Sequence[Any]]) -> list[LogBook]:
    """Logbooks from the rows of ``_LOAD``, in its order."""
    books: dict[str, dict[str, Any]] = {}
    flows: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, _, key, parent, name, created_at, updated_at, data, token, state, version in rows:
        if kind == 0:
            books[key] = {
                "uuid": key,
                "name": name,
                "created_at": created_at,
                "updated_at": updated_at,
                "meta": json.loads(data),
                "token": token,
                "flows": {},
            }
        elif kind == 1:
            flow = {"uuid": key, "name": name, "state": state, "version": version}
            flow.update(meta=json.loads(data), atoms={})
            books[parent]["flows"][key] = flow
            flows[(parent, key)] = flow
        else:
            atom = json.loads(data)
            atom.update(name=name, version=version)
            flows[(parent, key)]["atoms"][name] = atom
    return [LogBook.model_validate(book) for book in books.values()]


class PostgresStore(Store):
    """A store of logbooks on PostgreSQL: fenced, versioned writes, each one short statement
    or transaction.

    Open it with ``open_store("postgresql://host/db?namespace=NAME")``; the URL's password is
    never shown in reprs, logs or errors.

    Args:
        driver_url: the PostgreSQL URL (library options still in it are taken out: the
            store's are read, the board's ignored).
        namespace: isolates this application's logbooks from another's in the same schema.
        schema: the schema holding the tables; wins over the URL's ``schema=`` option.
        options: the store's options from the URL (``schema``, ``pool_min``, ``pool_max``), as
            ``open_store`` found them; they win over those left in ``driver_url``.

    Raises:
        ConfigurationError: a bad namespace, schema, port or pool option.
    """

    url_options = URL_OPTIONS

    def __init__(
        self,
        *,
        driver_url: str = "postgresql://127.0.0.1:5432/postgres",
        namespace: str = "default",
        schema: str | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        super().__init__(namespace=namespace)
        # A URL given here directly (not through open_store) may still hold the library's
        # options: asyncpg would send each to the server as a setting, which it refuses.
        driver_url, found = split_options(driver_url, URL_OPTIONS | BOARD_OPTIONS)
        found = {key: value for key, value in found.items() if key in URL_OPTIONS}
        self._link = PostgresLink(
            driver_url,
            found | (options or {}),
            closed_error=StoreClosed,
            error=StoreError,
            schema=schema,
            namespace=self.namespace,
        )
        self.schema = self._link.schema
        self._q = self._link.q

    @classmethod
    def from_url(cls, parsed: ParsedURL, **kwargs: Any) -> Self:
        """Build the store for a parsed ``postgresql://`` URL; not yet connected."""
        kwargs.setdefault("driver_url", parsed.driver_url)
        kwargs.setdefault("options", dict(parsed.options))
        return super().from_url(parsed, **kwargs)

    def __repr__(self) -> str:
        return (
            f"<PostgresStore {self._link.url} schema={self.schema!r} namespace={self.namespace!r}>"
        )

    async def _connect(self) -> None:
        await self._link.connect("store", MIGRATIONS)

    async def _aclose(self) -> None:
        await self._link.aclose()

    def _sql(self, statement: str) -> str:
        return statement.replace("{s}", self._q)

    def _missing(self, book_uuid: str) -> LogBookNotFound:
        return LogBookNotFound(f"no logbook {book_uuid!r} in this store")

    async def _insert_flow(self, conn: Any, book_uuid: str, flow: FlowDetail, version: int) -> bool:
        """Add a flow with its atoms (as given); False if the logbook holds it already."""
        meta = dumps(f"flow {flow.name!r} meta", flow.meta)
        inserted = await conn.fetchval(
            self._sql(_INSERT_FLOW),
            self.namespace,
            book_uuid,
            flow.uuid,
            flow.name,
            flow.state.value,
            version,
            meta,
        )
        if inserted is None:
            return False
        atoms = [
            (self.namespace, book_uuid, flow.uuid, a.name, a.version, atom_json(a))
            for a in flow.atoms.values()
        ]
        if atoms:
            await conn.executemany(self._sql(_INSERT_ATOM), atoms)
        return True

    async def _load(self, conn: Any, statement: str, *args: Any) -> list[LogBook]:
        rows = await conn.fetch(self._sql(statement), self.namespace, *args)
        return _assemble(rows)

    # -- primitives --------------------------------------------------------------------------

    async def _save_logbook(self, book: LogBook, token: int | None) -> LogBook:
        _names(book)
        meta = dumps(f"logbook {book.uuid} meta", book.meta)
        for flow in book.flows.values():  # refuse what cannot be encoded before writing
            dumps(f"flow {flow.name!r} meta", flow.meta)
            for atom in flow.atoms.values():
                atom_json(atom)
        ns = self.namespace
        created = await self._create_book(book, meta, token)
        if created is not None:
            return created

        async def save(conn: Any) -> LogBook:
            async with conn.transaction():
                created = await conn.fetchval(
                    self._sql(_INSERT_BOOK),
                    ns,
                    book.uuid,
                    book.name,
                    book.created_at,
                    book.updated_at,
                    meta,
                    check_token(book.uuid, None, token),
                )
                if created is None:
                    stored = await conn.fetchval(self._sql(_LOCK_BOOK), ns, book.uuid)
                    new_token = check_token(book.uuid, stored, token)
                    await conn.execute(
                        self._sql(_UPDATE_BOOK),
                        ns,
                        book.uuid,
                        book.name,
                        meta,
                        book.updated_at,
                        new_token,
                    )
                for flow in book.flows.values():
                    await self._insert_flow(conn, book.uuid, flow, flow.version)
                (saved,) = await self._load(conn, _GET, book.uuid)
                return saved

        return await self._link.call("save_logbook", save)

    async def _create_book(self, book: LogBook, meta: str, token: int | None) -> LogBook | None:
        """Create ``book`` with its flows and atoms in one statement; None if it exists."""
        flows = list(book.flows.values())
        metas = [dumps(f"flow {f.name!r} meta", f.meta) for f in flows]
        atoms = [(f.uuid, atom) for f in flows for atom in f.atoms.values()]
        details = [atom_json(atom) for _, atom in atoms]
        args = (
            self.namespace,
            book.uuid,
            book.name,
            book.created_at,
            book.updated_at,
            meta,
            check_token(book.uuid, None, token),
            [f.uuid for f in flows],
            [f.name for f in flows],
            [f.state.value for f in flows],
            [f.version for f in flows],
            metas,
            [flow_uuid for flow_uuid, _ in atoms],
            [atom.name for _, atom in atoms],
            [atom.version for _, atom in atoms],
            details,
        )
        statement = self._sql(_CREATE_BOOK)
        row = await self._link.call("save_logbook", lambda conn: conn.fetchrow(statement, *args))
        if row[0] is None:
            return None
        # What a read would return: the JSON as stored, read back.
        stored: dict[str, dict[str, AtomDetail]] = {f.uuid: {} for f in flows}
        for (flow_uuid, atom), detail in zip(atoms, details, strict=True):
            stored[flow_uuid][atom.name] = _atom_read(atom.name, atom.version, detail)
        return book.model_copy(
            update={
                "meta": json.loads(meta),
                "token": args[6],
                "flows": {
                    f.uuid: f.model_copy(update={"meta": json.loads(m), "atoms": stored[f.uuid]})
                    for f, m in zip(flows, metas, strict=True)
                },
            }
        )

    async def _get_logbook(self, book_uuid: str) -> LogBook:
        if "\x00" in book_uuid:
            raise self._missing(book_uuid)
        books = await self._link.read("get_logbook", lambda conn: self._load(conn, _GET, book_uuid))
        if not books:
            raise self._missing(book_uuid)
        return books[0]

    async def _update_flow_detail(
        self,
        book_uuid: str,
        flow: FlowDetail,
        token: int | None,
        atoms: tuple[AtomDetail, ...] = (),
    ) -> FlowDetail:
        if "\x00" in book_uuid:
            raise self._missing(book_uuid)
        _names(None, flow)
        meta = dumps(f"flow {flow.name!r} meta", flow.meta)
        for atom in flow.atoms.values():
            atom_json(atom)
        for atom in atoms:
            refuse_nul(f"atom {atom.name!r}", atom.name, StoreError)
        ns = self.namespace
        fast = await self._update_flow_fast(book_uuid, flow, meta, token, atoms)
        if fast is not None:
            return fast

        async def update(conn: Any) -> FlowDetail:
            async with conn.transaction():
                row = await conn.fetchrow(self._sql(_LOCK_FLOW), ns, book_uuid, flow.uuid)
                if row is None:
                    raise self._missing(book_uuid)
                stored_token, stored_version = row
                new_token = check_token(book_uuid, stored_token, token)
                check_version(f"flow {flow.name!r}", stored_version or 0, flow.version)
                saved = copy_flow(flow, flow.version + 1)
                if stored_version is None:
                    await self._insert_flow(conn, book_uuid, flow, saved.version)
                else:
                    await conn.execute(
                        self._sql(_UPDATE_FLOW),
                        ns,
                        book_uuid,
                        flow.uuid,
                        flow.name,
                        flow.state.value,
                        saved.version,
                        meta,
                    )
                    rows = await conn.fetch(self._sql(_ATOMS_OF), ns, book_uuid, flow.uuid)
                    saved.atoms = {row[0]: _atom_read(*row) for row in rows}
                if new_token != stored_token:
                    await conn.execute(self._sql(_SET_TOKEN), ns, book_uuid, new_token)
                return saved

        return await self._link.call("update_flow_detail", update)

    async def _update_flow_fast(
        self,
        book_uuid: str,
        flow: FlowDetail,
        meta: str,
        token: int | None,
        atoms: tuple[AtomDetail, ...],
    ) -> FlowDetail | None:
        """Update an existing flow's own fields (and ``atoms``) in one statement; None when
        the checks do not pass and no atoms were given (the general path then raises what
        fits, or adds the flow). With atoms, a refusal is raised here."""
        details = [atom_json(atom) for atom in atoms]
        args = (
            self.namespace,
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
        statement = self._sql(_UPDATE_FLOW_FAST)
        row = await self._link.call(
            "update_flow_detail", lambda conn: conn.fetchrow(statement, *args)
        )
        written, names, versions, texts, status, stored_token, stored_version = row[:7]
        stale_name, stale_version, atoms_written = row[7:]
        if atoms and not (written and atoms_written == len(atoms)):
            if status == "conflict":
                check_version(f"flow {flow.name!r}", stored_version, flow.version)
            refusal = (status, stored_token, stale_name, stale_version)
            self._refused(refusal, book_uuid, flow.uuid, token, atoms)
            # Only two writers holding one token can race past the checks (the engine never
            # does): say so rather than return what may not be stored.
            raise VersionConflict(f"flow {flow.name!r}: written concurrently")
        if not written:
            return None
        saved_atoms = {
            name: _atom_read(name, version, text)
            for name, version, text in zip(names or (), versions or (), texts or (), strict=True)
        }
        # The statement's snapshot predates its own writes: the atoms it wrote, as written.
        for atom, detail in zip(atoms, details, strict=True):
            saved_atoms[atom.name] = _atom_read(atom.name, atom.version + 1, detail)
        return flow.model_copy(
            update={"version": flow.version + 1, "meta": json.loads(meta), "atoms": saved_atoms}
        )

    async def _update_atom_details(
        self, book_uuid: str, flow_uuid: str, atoms: tuple[AtomDetail, ...], token: int | None
    ) -> list[AtomDetail]:
        if "\x00" in book_uuid:
            raise self._missing(book_uuid)
        if "\x00" in flow_uuid:
            raise LogBookNotFound(f"logbook {book_uuid!r} has no flow {flow_uuid!r}")
        for atom in atoms:
            refuse_nul(f"atom {atom.name!r}", atom.name, StoreError)
        args = (
            self.namespace,
            book_uuid,
            flow_uuid,
            token,
            [atom.name for atom in atoms],
            [atom.version for atom in atoms],
            [atom_json(atom) for atom in atoms],
        )
        statement = self._sql(_UPDATE_ATOMS)
        row = await self._link.call(
            "update_atom_details", lambda conn: conn.fetchrow(statement, *args)
        )
        self._refused(row[:4], book_uuid, flow_uuid, token, atoms)
        if row[4] != len(atoms):
            # Only two writers holding one token can race past the checks (the engine never
            # does): say so rather than report what may not be stored.
            raise VersionConflict(f"atoms of flow {flow_uuid!r}: written concurrently")
        return [copy_atom(atom, atom.version + 1) for atom in atoms]

    def _refused(
        self,
        refusal: Sequence[Any],
        book_uuid: str,
        flow_uuid: str,
        token: int | None,
        atoms: Sequence[AtomDetail],
    ) -> None:
        """Raise what a statement's verdict on writing ``atoms`` stands for (nothing when
        it said 'ok'): ``refusal`` is (status, stored token, stale atom, its stored version)."""
        status, stored_token, stale_name, stale_version = refusal
        if status == "notfound":
            raise self._missing(book_uuid)
        if status == "lost":
            check_token(book_uuid, stored_token, token)  # raises ClaimLost
        if status == "noflow":
            raise LogBookNotFound(f"logbook {book_uuid!r} has no flow {flow_uuid!r}")
        if status == "atomconflict":
            given = next(atom.version for atom in atoms if atom.name == stale_name)
            check_version(f"atom {stale_name!r}", stale_version, given)

    async def _destroy_logbook(self, book_uuid: str) -> None:
        if "\x00" in book_uuid:
            raise self._missing(book_uuid)
        statement = self._sql(_DESTROY)
        deleted = await self._link.call(
            "destroy_logbook", lambda conn: conn.fetchval(statement, self.namespace, book_uuid)
        )
        if deleted is None:
            raise self._missing(book_uuid)

    async def _page(self, after: tuple[float, int], conn: Any) -> list[Any]:
        rows: list[Any] = await conn.fetch(self._sql(_PAGE_QUERY), self.namespace, *after, _PAGE)
        return rows

    async def _logbooks(self) -> AsyncIterator[LogBook]:
        after: tuple[float, int] = (float("-inf"), 0)
        while True:
            rows = await self._link.read("logbooks", functools.partial(self._page, after))
            books = [row for row in rows if row[0] == 0]
            for book in _assemble(rows):
                yield book
            if len(books) < _PAGE:
                return
            after = (books[-1][5], books[-1][1])
