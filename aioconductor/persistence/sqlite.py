"""`SqliteStore`: logbooks in one SQLite file. Durable on one machine, no server.

``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, or ``sqlite://`` (also
``sqlite:///:memory:``) for a private in-memory database that lives as long as the store object.
Every URL takes ``?namespace=NAME``. The file may be the one a
:class:`~aioconductor.boards.sqlite.SqliteJobBoard` uses: their tables do not overlap.

Several processes (and several store objects) may share one file. Every write is one
``BEGIN IMMEDIATE`` transaction that reads the logbook's fencing token and the detail's version
before it changes anything, so a stale token or version changes nothing. The connection, its
worker thread, WAL mode and busy timeout are
:class:`aioconductor._backends.sqlite.link.SqliteLink`'s: it runs each call in a worker thread
(``sqlite3`` blocks) under a lock, because one connection holds one transaction, which two
interleaved calls would otherwise share. A store whose ending is fused with a board on its
file (:meth:`SqliteStore.fused_ending`) writes on that board's connection while it is open.
The schema and the statements are in :mod:`aioconductor._backends.sqlite.store_schema`.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Self, TypeVar

from aioconductor._backends.sqlite import store_schema as sql
from aioconductor._backends.sqlite.link import SqliteLink
from aioconductor._backends.sqlite.link import sqlite_path
from aioconductor._backends.sqlite.store_records import EncodedAtom
from aioconductor._backends.sqlite.store_records import EncodedFlow
from aioconductor._backends.sqlite.store_records import assemble
from aioconductor._backends.sqlite.store_records import atom_from_row
from aioconductor._models import copy_json
from aioconductor._models import evolve
from aioconductor._urls import ParsedURL
from aioconductor._urls import redact_url
from aioconductor._urls import refuse_options
from aioconductor.errors import BoardClosed
from aioconductor.errors import ConfigurationError
from aioconductor.errors import LogBookNotFound
from aioconductor.errors import StoreClosed
from aioconductor.errors import StoreError
from aioconductor.models import Job
from aioconductor.persistence._copy import copy_atom
from aioconductor.persistence._copy import copy_flow
from aioconductor.persistence._copy import created_book
from aioconductor.persistence._json import atom_json
from aioconductor.persistence._json import dumps
from aioconductor.persistence.base import Store
from aioconductor.persistence.base import check_token
from aioconductor.persistence.base import check_version
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import LogBook
from aioconductor.persistence.runs import FusedClaim
from aioconductor.persistence.runs import RunTemplate
from aioconductor.persistence.runs import new_flow_uuid
from aioconductor.persistence.runs import new_run

__all__ = ["MEMORY", "SqliteStore"]

T = TypeVar("T")

#: The path of a private in-memory database.
MEMORY = ":memory:"
#: Logbooks read per snapshot by ``logbooks()``.
_PAGE = 100


class SqliteStore(Store):
    """A store of logbooks in a SQLite file, shared safely by the processes of one machine.

    Open it with ``open_store("sqlite:///progress.db?namespace=NAME")``. One connection per store
    object, used from a worker thread, one call at a time; WAL mode, so readers never wait for
    writers, and writers in other processes wait up to the busy timeout for each other.

    Args:
        path: the database file (created with its schema if missing), or ``":memory:"``.
        namespace: isolates this application's logbooks from another's in the same file.
        migrate: create the file and its schema, or upgrade it, when connecting (the
            default). False (read-only tools): the file must exist with the store's schema at
            the newest version, else connecting raises ``SchemaMissing`` (a newer schema:
            ``ConfigurationError``); nothing is created or written.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, namespace: str = "default", migrate: bool = True
    ) -> None:
        super().__init__(namespace=namespace, migrate=migrate)
        self.path = os.fspath(path)
        self._link = SqliteLink(self.path, closed_error=StoreClosed)
        #: The link of a board on this file that this store's ending is fused with: its
        #: writes go there while that board is open (see :meth:`fused_ending`).
        self._shared: SqliteLink | None = None

    @classmethod
    def from_url(cls, parsed: ParsedURL, **kwargs: Any) -> Self:
        """Build the store for a parsed ``sqlite://`` URL; not yet connected.

        ``sqlite:///relative.db`` and ``sqlite:////abs/path.db`` name a file; ``sqlite://`` and
        ``sqlite:///:memory:`` a private in-memory database. ``path=`` in ``kwargs`` wins.

        Raises:
            ConfigurationError: the URL has options SQLite does not take (the board's options
                are taken, and ignored, so one URL serves both).
        """
        refuse_options(parsed.driver_url, "SQLite store", cls.url_options | cls.ignored_url_options)
        if "path" not in kwargs:
            kwargs["path"] = _url_path(parsed.driver_url)
        return super().from_url(parsed, **kwargs)

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path!r} namespace={self.namespace!r}>"

    async def _connect(self) -> None:
        await self._link.connect("store", sql.SCHEMA, migrate=self.migrate)

    async def _aclose(self) -> None:
        await self._link.aclose()

    # -- calls -------------------------------------------------------------------------------

    async def _write(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction, committed unless it raises."""
        try:
            shared = self._shared
            if shared is not None and not shared.closed:
                try:
                    return await shared.write(what, fn)
                except BoardClosed:
                    pass  # the board closed before the write ran (never run): on our own
            return await self._link.write(what, fn)
        except (UnicodeEncodeError, OverflowError) as exc:
            # Raised by sqlite3 while binding a value it cannot store (a lone surrogate in a
            # name, an integer past 64 bits); the transaction was rolled back.
            raise StoreError(f"{what}: a value cannot be stored in SQLite: {exc}") from None

    async def _snapshot(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn``'s reads in one read transaction, so they all see one state of the file."""
        try:
            return await self._link.snapshot(what, fn)
        except (UnicodeEncodeError, OverflowError) as exc:
            raise StoreError(f"{what}: a value cannot be looked up in SQLite: {exc}") from None

    # -- helpers (run in the worker thread) --------------------------------------------------

    def _missing(self, book_uuid: str) -> LogBookNotFound:
        return LogBookNotFound(f"no logbook {book_uuid!r} in this store")

    def _set_token(
        self, conn: sqlite3.Connection, book_uuid: str, stored: int | None, new: int | None
    ) -> None:
        if new != stored:
            conn.execute(sql.SET_TOKEN, (new, self.namespace, book_uuid))

    def _insert_flow(self, conn: sqlite3.Connection, book_uuid: str, flow: EncodedFlow) -> None:
        ns = self.namespace
        conn.execute(
            sql.INSERT_FLOW,
            (ns, book_uuid, flow.uuid, flow.name, flow.state, flow.version, flow.meta),
        )
        conn.executemany(
            sql.UPSERT_ATOM,
            [(ns, book_uuid, flow.uuid, a.name, a.version, a.detail) for a in flow.atoms],
        )

    def _load(self, conn: sqlite3.Connection, books: Sequence[Sequence[Any]]) -> list[LogBook]:
        """The logbooks of ``books`` (rows of ``BOOK_COLUMNS``) with their flows and atoms."""
        if not books:
            return []
        params = (self.namespace, *(row[0] for row in books))
        flows = conn.execute(sql.flows_of(len(books)), params).fetchall()
        atoms = conn.execute(sql.atoms_of(len(books)), params).fetchall()
        return assemble(books, flows, atoms)

    def _fetch(self, conn: sqlite3.Connection, book_uuid: str) -> LogBook:
        row = conn.execute(sql.BOOK, (self.namespace, book_uuid)).fetchone()
        if row is None:
            raise self._missing(book_uuid)
        return self._load(conn, [row])[0]

    def _atoms_of(self, conn: sqlite3.Connection, book_uuid: str, flow_uuid: str) -> list[Any]:
        return conn.execute(sql.ATOMS_OF_FLOW, (self.namespace, book_uuid, flow_uuid)).fetchall()

    # -- primitives --------------------------------------------------------------------------

    async def _save_logbook(self, book: LogBook, token: int | None) -> LogBook:
        meta = dumps(f"logbook {book.uuid} meta", book.meta)
        flows = [EncodedFlow(flow) for flow in book.flows.values()]
        ns = self.namespace

        def save(conn: sqlite3.Connection) -> LogBook:
            # A new logbook (the usual case) is one insert, holding the token given.
            new = (ns, book.uuid, book.name, book.created_at, book.updated_at, meta, token)
            if conn.execute(sql.CREATE_BOOK, new).rowcount:
                for flow in flows:
                    self._insert_flow(conn, book.uuid, flow)
                return created_book(book, token)
            (stored,) = conn.execute(sql.BOOK_TOKEN, (ns, book.uuid)).fetchone()
            new_token = check_token(book.uuid, stored, token)
            conn.execute(
                sql.UPDATE_BOOK, (book.name, meta, book.updated_at, new_token, ns, book.uuid)
            )
            known = {uuid for (uuid,) in conn.execute(sql.FLOW_UUIDS, (ns, book.uuid))}
            for flow in flows:
                if flow.uuid not in known:
                    self._insert_flow(conn, book.uuid, flow)
                    known.add(flow.uuid)
            return self._fetch(conn, book.uuid)

        return await self._write("save_logbook", save)

    async def _get_logbook(self, book_uuid: str) -> LogBook:
        return await self._snapshot("get_logbook", lambda conn: self._fetch(conn, book_uuid))

    async def _update_flow_detail(
        self, book_uuid: str, flow: FlowDetail, token: int | None, atoms: tuple[AtomDetail, ...]
    ) -> FlowDetail:
        write = self.flow_writer(book_uuid, flow, token, atoms, read_back=True)

        def update(conn: sqlite3.Connection) -> FlowDetail:
            saved = write(conn)
            assert saved is not None
            return saved

        return await self._write("update_flow_detail", update)

    def flow_writer(
        self,
        book_uuid: str,
        flow: FlowDetail,
        token: int | None,
        atoms: tuple[AtomDetail, ...],
        *,
        read_back: bool,
    ) -> Callable[[sqlite3.Connection], FlowDetail | None]:
        """``update_flow_detail``'s write, encoded now, to run in a write transaction on a
        connection to this store's file (this store's own, or a board's: a fused ending).

        It checks the token, the flow's version and its atoms' before it writes anything but
        atoms, and raises on a refusal: the caller rolls back what it wrote (the link runs
        each write in a savepoint). With ``read_back`` it returns the flow as saved, version
        bumped, with its atoms as stored; without, None (a fused ending has no use for it).
        """
        # A flow's own atoms are saved only if it is new: encoded then (a refusal raises in
        # the write, rolled back), not for every flow end, which gives its atoms to write.
        encoded = EncodedFlow(flow, atoms=False)
        details = [EncodedAtom(atom) for atom in atoms]
        ns = self.namespace

        def write(conn: sqlite3.Connection) -> FlowDetail | None:
            row = conn.execute(sql.FLOW_CHECK, (flow.uuid, ns, book_uuid)).fetchone()
            if row is None:
                raise self._missing(book_uuid)
            stored_token, stored_version = row
            new_token = check_token(book_uuid, stored_token, token)
            check_version(f"flow {flow.name!r}", stored_version or 0, flow.version)
            version = flow.version + 1
            if stored_version is None:
                if details:
                    raise LogBookNotFound(f"logbook {book_uuid!r} has no flow {flow.uuid!r}")
                encoded.version = version
                encoded.atoms = [EncodedAtom(atom) for atom in flow.atoms.values()]
                self._insert_flow(conn, book_uuid, encoded)
            else:
                # In this transaction: a failed check below rolls back every atom written.
                for detail in details:
                    self._put_atom(conn, book_uuid, flow.uuid, detail)
                conn.execute(
                    sql.UPDATE_FLOW,
                    (flow.name, encoded.state, version, encoded.meta, ns, book_uuid, flow.uuid),
                )
            self._set_token(conn, book_uuid, stored_token, new_token)
            if not read_back:
                return None
            if stored_version is None:
                return copy_flow(flow, version)
            stored = map(atom_from_row, self._atoms_of(conn, book_uuid, flow.uuid))
            return evolve(
                flow,
                version=version,
                meta=copy_json(flow.meta),
                atoms={atom.name: atom for atom in stored},
            )

        return write

    def run_creator(
        self, template: RunTemplate
    ) -> Callable[[sqlite3.Connection, str, str, int, float], FlowDetail | None]:
        """A write (run in a write transaction on a connection to this store's file: a fused
        claim's) that creates a new run's logbook from ``template`` (see
        :mod:`aioconductor.persistence.runs`): ``create(conn, book_uuid, name, token, now)``
        returns the run's flow detail, or None (and writes nothing) if the logbook exists."""
        ns = self.namespace

        def create(
            conn: sqlite3.Connection, book_uuid: str, name: str, token: int, now: float
        ) -> FlowDetail | None:
            new = (ns, book_uuid, name, now, now, "{}", token)
            if not conn.execute(sql.CREATE_BOOK, new).rowcount:
                return None
            flow = new_run(new_flow_uuid(), template.detail, template.first, now)
            self._insert_flow(conn, book_uuid, EncodedFlow(flow))
            return flow

        return create

    def fused_claim(self, board: object, templates: Mapping[str, RunTemplate]) -> FusedClaim | None:
        """Jobs claimed and the runs of those of ``templates``' flows that never ran created in
        one transaction (see :mod:`aioconductor._backends.sqlite.fused`); None unless ``board``
        is a SQLite board on this store's file."""
        from aioconductor._backends.sqlite.fused import fused_claim

        return fused_claim(self, board, templates)

    def fused_ending(self, board: object) -> Callable[..., Awaitable[Job]] | None:
        """The flow's end saved and the job consumed in one transaction (see
        :mod:`aioconductor._backends.sqlite.fused`); None unless ``board`` is a SQLite board
        on this store's file.

        Once fused, and while ``board`` is open, this store's writes run on the board's
        connection too: one connection writes the file, so the two never wait for each
        other's write lock, and their writes share group commits. A write that finds the
        board closed (it never ran then) runs on the store's own connection, as do reads.
        """
        from aioconductor._backends.sqlite.fused import fused_ending

        fused = fused_ending(self, board)
        if fused is not None:
            self._shared = board._link  # type: ignore[attr-defined]
        return fused

    def _put_atom(
        self, conn: sqlite3.Connection, book_uuid: str, flow_uuid: str, atom: EncodedAtom
    ) -> None:
        """Write an atom of a flow known to exist, if its version is the stored one."""
        key = (self.namespace, book_uuid, flow_uuid, atom.name)
        # Most writes are of a saved atom at its stored version: one statement.
        if conn.execute(
            sql.UPDATE_ATOM, (atom.version + 1, atom.detail, *key, atom.version)
        ).rowcount:
            return
        row = conn.execute(sql.ATOM_VERSION, key).fetchone()
        check_version(f"atom {atom.name!r}", row[0] if row else 0, atom.version)
        conn.execute(sql.UPSERT_ATOM, (*key, atom.version + 1, atom.detail))

    async def _update_atom_detail(
        self, book_uuid: str, flow_uuid: str, atom: AtomDetail, token: int | None
    ) -> AtomDetail:
        detail = atom_json(atom)
        ns = self.namespace

        def update(conn: sqlite3.Connection) -> AtomDetail:
            # One read for all three checks: the logbook (and its token), the flow, the atom.
            row = conn.execute(sql.ATOM_CHECK, (flow_uuid, atom.name, ns, book_uuid)).fetchone()
            if row is None:
                raise self._missing(book_uuid)
            stored_token, flow_seq, stored_version = row
            new_token = check_token(book_uuid, stored_token, token)
            if flow_seq is None:
                raise LogBookNotFound(f"logbook {book_uuid!r} has no flow {flow_uuid!r}")
            check_version(f"atom {atom.name!r}", stored_version or 0, atom.version)
            conn.execute(
                sql.UPSERT_ATOM, (ns, book_uuid, flow_uuid, atom.name, atom.version + 1, detail)
            )
            self._set_token(conn, book_uuid, stored_token, new_token)
            return copy_atom(atom, atom.version + 1)

        return await self._write("update_atom_detail", update)

    async def _update_atom_details(
        self, book_uuid: str, flow_uuid: str, atoms: tuple[AtomDetail, ...], token: int | None
    ) -> list[AtomDetail]:
        encoded = [EncodedAtom(atom) for atom in atoms]
        ns = self.namespace

        def update(conn: sqlite3.Connection) -> list[AtomDetail]:
            row = conn.execute(sql.FLOW_EXISTS, (flow_uuid, ns, book_uuid)).fetchone()
            if row is None:
                raise self._missing(book_uuid)
            stored_token, flow_seq = row
            new_token = check_token(book_uuid, stored_token, token)
            if flow_seq is None:
                raise LogBookNotFound(f"logbook {book_uuid!r} has no flow {flow_uuid!r}")
            # In this transaction: a failed check rolls back the atoms written before it.
            for atom in encoded:
                self._put_atom(conn, book_uuid, flow_uuid, atom)
            self._set_token(conn, book_uuid, stored_token, new_token)
            return [copy_atom(atom, atom.version + 1) for atom in atoms]

        return await self._write("update_atom_details", update)

    async def _destroy_logbook(self, book_uuid: str) -> None:
        def destroy(conn: sqlite3.Connection) -> None:
            key = (self.namespace, book_uuid)
            if not conn.execute(sql.DELETE_BOOK, key).rowcount:
                raise self._missing(book_uuid)
            conn.execute(sql.DELETE_FLOWS, key)
            conn.execute(sql.DELETE_ATOMS, key)

        await self._write("destroy_logbook", destroy)

    async def _destroy_logbooks(self, book_uuids: list[str]) -> int:
        def destroy(conn: sqlite3.Connection) -> int:
            keys = [(self.namespace, book_uuid) for book_uuid in book_uuids]
            deleted = conn.executemany(sql.DELETE_BOOK, keys).rowcount
            conn.executemany(sql.DELETE_FLOWS, keys)
            conn.executemany(sql.DELETE_ATOMS, keys)
            return deleted

        return await self._write("destroy_logbooks", destroy)

    async def _logbooks(self) -> AsyncIterator[LogBook]:
        after: tuple[float, int] | None = None
        while True:
            page, after = await self._snapshot(
                "logbooks", functools.partial(self._page, after=after)
            )
            for book in page:
                yield book
            if after is None:
                return

    def _page(
        self, conn: sqlite3.Connection, *, after: tuple[float, int] | None
    ) -> tuple[list[LogBook], tuple[float, int] | None]:
        """One page of logbooks, oldest first, after the cursor; and the next cursor (or None)."""
        if after is None:
            rows = conn.execute(sql.FIRST_PAGE, (self.namespace, _PAGE)).fetchall()
        else:
            rows = conn.execute(sql.NEXT_PAGE, (self.namespace, *after, _PAGE)).fetchall()
        cursor = (rows[-1][2], rows[-1][6]) if len(rows) == _PAGE else None
        return self._load(conn, [row[:6] for row in rows]), cursor


def _url_path(driver_url: str) -> str:
    """The database path of a ``sqlite://`` URL as ``parse_url`` hands it on."""
    scheme, _, rest = driver_url.partition(":")
    base, _, query = rest.partition("?")
    if scheme.lower() == "sqlite" and base.lstrip("/") in ("", MEMORY):
        if query:
            raise ConfigurationError(f"{redact_url(driver_url)!r}: SQLite takes no driver options")
        return MEMORY
    return sqlite_path(driver_url)
