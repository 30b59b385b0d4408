"""`PostgresStore`: logbooks in PostgreSQL, with fenced writes checked on the server.

``postgresql://[user[:password]@]host[:port]/database?namespace=NAME`` (``postgres://`` too),
with the board's PostgreSQL options: ``schema`` (default ``aioc_<namespace>``: one schema a
namespace), ``pool_min``, ``pool_max``; every other option goes to asyncpg. The store's
tables sit beside the board's in the same schema and never overlap them.

Every write checks the logbook's fencing token and the detail's version before it changes
anything, under a lock on the logbook's row, so a writer holding a stale token or version
changes nothing. An atom write (the engine's hot path) is one statement that upserts that one
atom; ``save_logbook`` and ``update_flow_detail`` are one short transaction each, a new
logbook one statement. The new logbooks, and the atom writes, of concurrent jobs (asked for in
one event-loop turn) are one statement together, each with its own outcome (the link's
batcher, ``_backends/postgres/batch.py``; ``store_batch.py``). Details are ``json`` (kept
exactly as written, ``\\u0000`` included); names are ``text``, which cannot hold a NUL
character: such a name is refused with ``StoreError``.

Schema (in ``aioconductor._backends.postgres.store_sql``; ``schema_version`` records its
version, component ``store``):

- ``logbooks``: a row per logbook, with the highest fencing token that wrote to it.
- ``flow_details``: a row per flow detail; ``seq`` keeps the order flows were added in.
- ``atom_details``: a row per atom: the atom (but its name and version) as JSON in ``detail``.
  Deleting a logbook deletes its flows and atoms (foreign keys, ``ON DELETE CASCADE``).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Self

from aioconductor._backends.postgres import store_batch
from aioconductor._backends.postgres import store_sql as sql
from aioconductor._backends.postgres.link import PostgresLink
from aioconductor._backends.postgres.schema import refuse_nul
from aioconductor._backends.postgres.schema import with_schema
from aioconductor._backends.postgres.urls import URL_OPTIONS
from aioconductor._backends.postgres.urls import split_options
from aioconductor._fastjson import decode
from aioconductor._models import evolve
from aioconductor._urls import BOARD_OPTIONS
from aioconductor._urls import ParsedURL
from aioconductor.errors import LogBookNotFound
from aioconductor.errors import StoreClosed
from aioconductor.errors import StoreError
from aioconductor.errors import VersionConflict
from aioconductor.persistence._copy import copy_atom
from aioconductor.persistence._copy import created_book
from aioconductor.persistence._json import atom_json
from aioconductor.persistence._json import dumps
from aioconductor.persistence.base import Store
from aioconductor.persistence.base import check_flow_write
from aioconductor.persistence.base import check_token
from aioconductor.persistence.base import check_version
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import LogBook
from aioconductor.persistence.runs import FusedClaim
from aioconductor.persistence.runs import RunTemplate

__all__ = ["PostgresStore"]

#: Logbooks read per statement by ``logbooks()``.
_PAGE = 100


def _names(book: LogBook | None, flow: FlowDetail | None = None) -> None:
    """Refuse names PostgreSQL's ``text`` cannot hold (a NUL character). (Each message is
    built only for a name that holds one.)"""
    if book is not None:
        if "\x00" in book.uuid or "\x00" in book.name:
            refuse_nul(f"logbook {book.uuid!r}", book.uuid + book.name, StoreError)
        for each in book.flows.values():
            _names(None, each)
    if flow is not None:
        if "\x00" in flow.uuid or "\x00" in flow.name:
            refuse_nul(f"flow {flow.uuid!r}", flow.uuid + flow.name, StoreError)
        for atom in flow.atoms.values():
            if "\x00" in atom.name:
                refuse_nul(f"atom {atom.name!r}", atom.name, StoreError)


def _meta_json(what: Callable[[], str], meta: Any) -> str:
    """``meta`` as JSON text (:func:`dumps`; ``what`` names it in an error); most metas are
    empty dicts, written without encoding."""
    if type(meta) is dict and not meta:
        return "{}"
    return dumps(what(), meta)


#: A flow's meta and its atoms' details (in the flow's order) as JSON text.
_EncodedFlow = tuple[str, list[str]]


def _encoded(flow: FlowDetail) -> _EncodedFlow:
    """``flow``'s meta and atoms as JSON text; ``StoreError`` if JSON cannot carry one."""
    meta = _meta_json(lambda: f"flow {flow.name!r} meta", flow.meta)
    return meta, [atom_json(atom) for atom in flow.atoms.values()]


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
        migrate: create or upgrade the schema and its tables when connecting (the default).
            False (read-only tools): only check they are there at the newest version, else
            connecting raises ``SchemaMissing`` (a newer schema: ``ConfigurationError``);
            nothing is created or written.

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
        migrate: bool = True,
    ) -> None:
        super().__init__(namespace=namespace, migrate=migrate)
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
        self._sql = with_schema(sql.StoreStatements(), self._link.q)
        # The calls of concurrent jobs batched: one statement a turn (see store_batch).
        self._creating = store_batch.book_creation(
            self._sql.create_book, self._sql.create_books, self._sql.create_books_json
        )
        self._writing = store_batch.atom_writing(
            self._sql.update_atoms, self._sql.update_atoms_batch, self._sql.update_atoms_json
        )

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
        await self._link.connect("store", sql.MIGRATIONS, migrate=self.migrate)

    async def _aclose(self) -> None:
        await self._link.aclose()

    def _missing(self, book_uuid: str) -> LogBookNotFound:
        return LogBookNotFound(f"no logbook {book_uuid!r} in this store")

    async def _insert_flow(
        self,
        conn: Any,
        book_uuid: str,
        flow: FlowDetail,
        version: int,
        encoded: _EncodedFlow | None = None,
    ) -> bool:
        """Add a flow with its atoms (as given; ``encoded``: its JSON, when the caller has it);
        False if the logbook holds it already."""
        meta, details = encoded or _encoded(flow)
        inserted = await conn.fetchval(
            self._sql.insert_flow,
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
            (self.namespace, book_uuid, flow.uuid, a.name, a.version, detail)
            for a, detail in zip(flow.atoms.values(), details, strict=True)
        ]
        if atoms:
            await conn.executemany(self._sql.insert_atom, atoms)
        return True

    async def _load(self, conn: Any, query: str, *args: Any) -> list[LogBook]:
        rows = await conn.fetch(query, self.namespace, *args)
        return sql.assemble(rows)

    # -- primitives --------------------------------------------------------------------------

    async def _save_logbook(self, book: LogBook, token: int | None) -> LogBook:
        _names(book)
        meta = _meta_json(lambda: f"logbook {book.uuid} meta", book.meta)
        # Encoded once, before anything is written: what cannot be encoded is refused unwritten.
        encoded = {flow.uuid: _encoded(flow) for flow in book.flows.values()}
        ns = self.namespace
        book_row = self._book_row(book, meta, token)
        if await self._create_book(book, book_row, encoded):
            # A new logbook holds exactly what was given: no need to read it back.
            return created_book(book, book_row[6])

        async def save(conn: Any) -> LogBook:
            async with conn.transaction():
                created = await conn.fetchval(self._sql.insert_book, *book_row)
                if created is None:
                    stored = await conn.fetchval(self._sql.lock_book, ns, book.uuid)
                    new_token = check_token(book.uuid, stored, token)
                    await conn.execute(
                        self._sql.update_book,
                        ns,
                        book.uuid,
                        book.name,
                        meta,
                        book.updated_at,
                        new_token,
                    )
                for flow in book.flows.values():
                    await self._insert_flow(conn, book.uuid, flow, flow.version, encoded[flow.uuid])
                (saved,) = await self._load(conn, self._sql.get, book.uuid)
                return saved

        return await self._link.call("save_logbook", save)

    def _book_row(self, book: LogBook, meta: str, token: int | None) -> tuple[Any, ...]:
        """A new logbook's row, as ``INSERT_BOOK`` and ``CREATE_BOOK`` take it ($1 to $7)."""
        token = check_token(book.uuid, None, token)
        return (self.namespace, book.uuid, book.name, book.created_at, book.updated_at, meta, token)

    async def _create_book(
        self, book: LogBook, book_row: tuple[Any, ...], encoded: dict[str, _EncodedFlow]
    ) -> bool:
        """Create ``book`` (its row: :meth:`_book_row`; its flows' JSON: ``encoded``) with its
        flows and atoms in one statement; False if it exists."""
        # The flows' and the atoms' rows, as the batcher's kind takes them (store_batch).
        flows: list[tuple[Any, ...]] = []
        atoms: list[tuple[Any, ...]] = []
        uuid = book.uuid
        for flow in book.flows.values():
            meta, details = encoded[flow.uuid]
            flows.append((uuid, flow.uuid, flow.name, flow.state.value, flow.version, meta))
            atoms += [
                (uuid, flow.uuid, atom.name, atom.version, detail)
                for atom, detail in zip(flow.atoms.values(), details, strict=True)
            ]
        row = await self._link.batched(self._creating, (*book_row, flows, atoms))
        return row[0] is not None

    async def _get_logbook(self, book_uuid: str) -> LogBook:
        if "\x00" in book_uuid:
            raise self._missing(book_uuid)
        books = await self._link.read(
            "get_logbook", lambda conn: self._load(conn, self._sql.get, book_uuid)
        )
        if not books:
            raise self._missing(book_uuid)
        return books[0]

    async def _update_flow_detail(
        self, book_uuid: str, flow: FlowDetail, token: int | None, atoms: tuple[AtomDetail, ...]
    ) -> FlowDetail:
        args = sql.flow_end_args(self.namespace, book_uuid, flow, token, atoms)
        meta = args[7]
        ns = self.namespace
        fast = await self._update_flow_fast(args, flow, atoms)
        if fast is not None:
            return fast

        async def update(conn: Any) -> FlowDetail:
            async with conn.transaction():
                row = await conn.fetchrow(self._sql.lock_flow, ns, book_uuid, flow.uuid)
                if row is None:
                    raise self._missing(book_uuid)
                stored_token, stored_version = row
                new_token, saved = check_flow_write(book_uuid, flow, token, row)
                if stored_version is None:
                    await self._insert_flow(conn, book_uuid, flow, saved.version)
                else:
                    await conn.execute(
                        self._sql.update_flow,
                        ns,
                        book_uuid,
                        flow.uuid,
                        flow.name,
                        flow.state.value,
                        saved.version,
                        meta,
                    )
                    rows = await conn.fetch(self._sql.atoms_of, ns, book_uuid, flow.uuid)
                    saved.atoms = {row[0]: sql.atom_read(*row) for row in rows}
                if new_token != stored_token:
                    await conn.execute(self._sql.set_token, ns, book_uuid, new_token)
                return saved

        return await self._link.call("update_flow_detail", update)

    async def _update_flow_fast(
        self, args: tuple[Any, ...], flow: FlowDetail, atoms: tuple[AtomDetail, ...]
    ) -> FlowDetail | None:
        """Update an existing flow's own fields (and ``atoms``) in one statement (``args``:
        :func:`~.store_sql.flow_end_args`); None when the checks do not pass and no atoms were
        given (the general path then raises what fits, or adds the flow). With atoms, a
        refusal is raised here."""
        book_uuid, token, meta = args[1], args[6], args[7]
        statement = self._sql.update_flow_fast
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
        # The statement's snapshot predates its own writes: the atoms it wrote are the given
        # ones one version up (copies, as update_atom_details returns them), not parsed back.
        given = {atom.name: copy_atom(atom, atom.version + 1) for atom in atoms}
        stored = zip(names or (), versions or (), texts or (), strict=True)
        saved_atoms = {
            name: given[name] if name in given else sql.atom_read(name, version, text)
            for name, version, text in stored
        }
        saved_atoms.update(given)  # an atom new to the flow comes after those stored
        return evolve(flow, version=flow.version + 1, meta=decode(meta), atoms=saved_atoms)

    async def _update_atom_details(
        self, book_uuid: str, flow_uuid: str, atoms: tuple[AtomDetail, ...], token: int | None
    ) -> list[AtomDetail]:
        if "\x00" in book_uuid:
            raise self._missing(book_uuid)
        if "\x00" in flow_uuid:
            raise LogBookNotFound(f"logbook {book_uuid!r} has no flow {flow_uuid!r}")
        sql.check_atom_names(atoms)
        args = (
            self.namespace,
            book_uuid,
            flow_uuid,
            token,
            [atom.name for atom in atoms],
            [atom.version for atom in atoms],
            [atom_json(atom) for atom in atoms],
        )
        row = await self._link.batched(self._writing, args)
        self._refused(row[:4], book_uuid, flow_uuid, token, atoms)
        if row[4] != len(atoms):
            # Only two writers holding one token can race past the checks (the engine never
            # does): say so rather than report what may not be stored.
            raise VersionConflict(f"atoms of flow {flow_uuid!r}: written concurrently")
        # As given, one version up: the caller's own values (the store keeps none), as the
        # memory store returns them.
        return [evolve(atom, version=atom.version + 1) for atom in atoms]

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

    def fused_ending(self, board: object) -> Callable[..., Awaitable[None]] | None:
        """The flow's end saved and the job consumed in one statement (see
        :mod:`aioconductor._backends.postgres.fused`); None unless ``board`` is a PostgreSQL
        board with this store's URL (server, database, user, settings; password aside)."""
        from aioconductor._backends.postgres.fused import fused_ending

        return fused_ending(self, self._link, board)

    def fused_claim(self, board: object, templates: Mapping[str, RunTemplate]) -> FusedClaim | None:
        """Jobs claimed and the runs of ``templates``' flows created in one statement (see
        :mod:`aioconductor._backends.postgres.fused_claim`); None unless ``board`` is a
        PostgreSQL board with this store's URL (password aside).

        Raises:
            PayloadError: a name of ``templates`` holds a NUL character.
        """
        from aioconductor._backends.postgres.fused_claim import fused_claim

        return fused_claim(self, self._link, board, templates)

    async def _destroy_logbook(self, book_uuid: str) -> None:
        if "\x00" in book_uuid:
            raise self._missing(book_uuid)
        statement = self._sql.destroy
        deleted = await self._link.call(
            "destroy_logbook", lambda conn: conn.fetchval(statement, self.namespace, book_uuid)
        )
        if deleted is None:
            raise self._missing(book_uuid)

    async def _destroy_logbooks(self, book_uuids: list[str]) -> int:
        # A uuid holding NUL names no logbook (PostgreSQL text cannot hold it).
        uuids = [book_uuid for book_uuid in book_uuids if "\x00" not in book_uuid]
        statement = self._sql.destroy_many
        deleted = await self._link.call(
            "destroy_logbooks", lambda conn: conn.fetchval(statement, self.namespace, uuids)
        )
        return int(deleted)

    async def _page(self, after: tuple[float, int], conn: Any) -> list[Any]:
        rows: list[Any] = await conn.fetch(self._sql.page_query, self.namespace, *after, _PAGE)
        return rows

    async def _logbooks(self) -> AsyncIterator[LogBook]:
        after: tuple[float, int] = (float("-inf"), 0)
        while True:
            rows = await self._link.read("logbooks", functools.partial(self._page, after))
            books = [row for row in rows if row[0] == 0]
            for book in sql.assemble(rows):
                yield book
            if len(books) < _PAGE:
                return
            after = (books[-1][5], books[-1][1])
