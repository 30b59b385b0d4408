"""The SQL of the SQLite store: its schema and its statements.

Schema (``aioc_schema`` records its version, component ``store``):

- ``logbooks``: a row per logbook; ``seq`` (the rowid) breaks ties of ``created_at``.
- ``flow_details``: a row per flow detail; ``seq`` keeps the order flows were added in.
- ``atom_details``: a row per atom; the atom (but its name and version) as JSON in ``detail``.
  An atom write is one upsert of this row, never a rewrite of its flow or logbook.

Every statement takes positional parameters, the namespace first.
"""

from __future__ import annotations

from aioconductor._backends.sqlite.migrations import Migrations

SCHEMA: Migrations = [
    [
        """CREATE TABLE IF NOT EXISTS logbooks (
            seq INTEGER PRIMARY KEY,
            namespace TEXT NOT NULL,
            uuid TEXT NOT NULL,
            name TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            meta TEXT NOT NULL,
            token INTEGER,
            UNIQUE (namespace, uuid)
        )""",
        "CREATE INDEX IF NOT EXISTS logbooks_age ON logbooks (namespace, created_at, seq)",
        """CREATE TABLE IF NOT EXISTS flow_details (
            seq INTEGER PRIMARY KEY,
            namespace TEXT NOT NULL,
            book_uuid TEXT NOT NULL,
            uuid TEXT NOT NULL,
            name TEXT NOT NULL,
            state TEXT NOT NULL,
            version INTEGER NOT NULL,
            meta TEXT NOT NULL,
            UNIQUE (namespace, book_uuid, uuid)
        )""",
        """CREATE TABLE IF NOT EXISTS atom_details (
            seq INTEGER PRIMARY KEY,
            namespace TEXT NOT NULL,
            book_uuid TEXT NOT NULL,
            flow_uuid TEXT NOT NULL,
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            detail TEXT NOT NULL,
            UNIQUE (namespace, book_uuid, flow_uuid, name)
        )""",
    ],
]

#: The columns a logbook, a flow detail and an atom detail are read from.
BOOK_COLUMNS = "uuid, name, created_at, updated_at, meta, token"
FLOW_COLUMNS = "book_uuid, uuid, name, state, version, meta"
ATOM_COLUMNS = "book_uuid, flow_uuid, name, version, detail"

#: A new logbook; nothing if the namespace holds one with its uuid (then ``rowcount`` is 0).
CREATE_BOOK = (
    "INSERT INTO logbooks (namespace, uuid, name, created_at, updated_at, meta, token)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (namespace, uuid) DO NOTHING"
)
INSERT_FLOW = (
    "INSERT INTO flow_details (namespace, book_uuid, uuid, name, state, version, meta)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
UPSERT_ATOM = (
    "INSERT INTO atom_details (namespace, book_uuid, flow_uuid, name, version, detail)"
    " VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (namespace, book_uuid, flow_uuid, name)"
    " DO UPDATE SET version = excluded.version, detail = excluded.detail"
)

BOOK = f"SELECT {BOOK_COLUMNS} FROM logbooks WHERE namespace = ? AND uuid = ?"
BOOK_TOKEN = "SELECT token FROM logbooks WHERE namespace = ? AND uuid = ?"
SET_TOKEN = "UPDATE logbooks SET token = ? WHERE namespace = ? AND uuid = ?"
UPDATE_BOOK = (
    "UPDATE logbooks SET name = ?, meta = ?, updated_at = ?, token = ?"
    " WHERE namespace = ? AND uuid = ?"
)
FLOW_UUIDS = "SELECT uuid FROM flow_details WHERE namespace = ? AND book_uuid = ?"
#: The logbook's token and the flow's version (NULL for a new flow): ``(flow, ns, book)``.
FLOW_CHECK = (
    "SELECT b.token, f.version FROM logbooks AS b LEFT JOIN flow_details AS f"
    " ON f.namespace = b.namespace AND f.book_uuid = b.uuid AND f.uuid = ?"
    " WHERE b.namespace = ? AND b.uuid = ?"
)
UPDATE_FLOW = (
    "UPDATE flow_details SET name = ?, state = ?, version = ?, meta = ?"
    " WHERE namespace = ? AND book_uuid = ? AND uuid = ?"
)
#: The logbook's token, and whether it has the flow (NULL if not): ``(flow, ns, book)``.
FLOW_EXISTS = (
    "SELECT b.token, f.seq FROM logbooks AS b LEFT JOIN flow_details AS f"
    " ON f.namespace = b.namespace AND f.book_uuid = b.uuid AND f.uuid = ?"
    " WHERE b.namespace = ? AND b.uuid = ?"
)
#: One read for all three checks of an atom write: the logbook's token, whether the flow is
#: there, the atom's version: ``(flow, atom, ns, book)``.
ATOM_CHECK = (
    "SELECT b.token, f.seq, a.version FROM logbooks AS b"
    " LEFT JOIN flow_details AS f"
    " ON f.namespace = b.namespace AND f.book_uuid = b.uuid AND f.uuid = ?"
    " LEFT JOIN atom_details AS a"
    " ON a.namespace = b.namespace AND a.book_uuid = b.uuid"
    " AND a.flow_uuid = f.uuid AND a.name = ?"
    " WHERE b.namespace = ? AND b.uuid = ?"
)
#: An atom's write if it holds the version given: ``(version, detail, ns, book, flow, atom,
#: given version)``.
UPDATE_ATOM = (
    "UPDATE atom_details SET version = ?, detail = ?"
    " WHERE namespace = ? AND book_uuid = ? AND flow_uuid = ? AND name = ? AND version = ?"
)
ATOM_VERSION = (
    "SELECT version FROM atom_details"
    " WHERE namespace = ? AND book_uuid = ? AND flow_uuid = ? AND name = ?"
)
ATOMS_OF_FLOW = (
    f"SELECT {ATOM_COLUMNS} FROM atom_details"
    " WHERE namespace = ? AND book_uuid = ? AND flow_uuid = ? ORDER BY seq"
)

DELETE_BOOK = "DELETE FROM logbooks WHERE namespace = ? AND uuid = ?"
DELETE_FLOWS = "DELETE FROM flow_details WHERE namespace = ? AND book_uuid = ?"
DELETE_ATOMS = "DELETE FROM atom_details WHERE namespace = ? AND book_uuid = ?"

#: A page of logbooks, oldest first (then ``seq``): ``(ns, limit)``; and the page after the
#: cursor ``(created_at, seq)``: ``(ns, created_at, seq, limit)``.
FIRST_PAGE = (
    f"SELECT {BOOK_COLUMNS}, seq FROM logbooks WHERE namespace = ? ORDER BY created_at, seq LIMIT ?"
)
NEXT_PAGE = (
    f"SELECT {BOOK_COLUMNS}, seq FROM logbooks WHERE namespace = ?"
    " AND (created_at, seq) > (?, ?) ORDER BY created_at, seq LIMIT ?"
)


def flows_of(books: int) -> str:
    """The flows of ``books`` logbooks, in the order they were added: ``(ns, *book_uuids)``."""
    marks = ", ".join("?" * books)
    return (
        f"SELECT {FLOW_COLUMNS} FROM flow_details"
        f" WHERE namespace = ? AND book_uuid IN ({marks}) ORDER BY seq"
    )


def atoms_of(books: int) -> str:
    """The atoms of ``books`` logbooks, in the order they were added: ``(ns, *book_uuids)``."""
    marks = ", ".join("?" * books)
    return (
        f"SELECT {ATOM_COLUMNS} FROM atom_details"
        f" WHERE namespace = ? AND book_uuid IN ({marks}) ORDER BY seq"
    )
