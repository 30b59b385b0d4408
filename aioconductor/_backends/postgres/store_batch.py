"""The PostgreSQL store's batched statements: the calls of concurrent jobs made in one event-loop
turn, one statement for all (the link's batcher, :mod:`.batch`), each job's outcome its own.

Each statement is its unbatched one (``store_sql``) over rows (``unnest ... WITH
ORDINALITY``), a row per item in the items' order, shaped as the unbatched statement's row, so
the store reads either alike. Logbooks are locked or inserted in uuid order, so two batched
statements (or a batched and an unbatched one, which takes one logbook) wait in one order.
``{s}`` stands for the quoted schema; ``$1`` is the namespace.

The items' values go to the server as one JSON document per set of rows (:func:`rows_json`,
read by :func:`json_rows`), not as arrays: asyncpg spends about a microsecond of the
conductor's CPU on each element of an array argument (some 17 a job), msgspec a fraction of
that on the whole document. What the document cannot carry exactly (:func:`document`: a
string msgspec refuses, such as one with a lone surrogate; a float that is not finite and
positive) goes as arrays, the same statement but for its sources of rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from aioconductor._backends.postgres.batch import Kind

__all__ = [
    "CREATE_BOOKS",
    "CREATE_BOOKS_JSON",
    "GIVEN",
    "UPDATE_ATOMS_BATCH",
    "UPDATE_ATOMS_BATCH_JSON",
    "WRITE",
    "atom_writing",
    "book_creation",
    "document",
    "given",
    "given_json",
    "joined",
    "json_rows",
    "rows_json",
]


def joined(
    items: Sequence[tuple[Any, ...]], owner: Callable[[int, tuple[Any, ...]], Any], at: range
) -> list[list[Any]]:
    """The arrays at positions ``at`` of each item's parameters (its flows' or atoms'),
    joined, after an array naming each row's item: ``owner(ordinal, parameters)``."""
    arrays: list[list[Any]] = [[] for _ in range(len(at) + 1)]
    for n, args in enumerate(items, 1):
        arrays[0].extend([owner(n, args)] * len(args[at[0]]))
        for array, index in zip(arrays[1:], at, strict=True):
            array.extend(args[index])
    return arrays


# The atoms to write of several writes, as arrays at $A-$D (the write's ordinal first), then
# their upsert where the write's verdict (CTE ``ok``: its ``x_n``, ``x_book``, ``x_flow``) is
# 'ok', under the same version re-check as ``store_sql._WRITE_ATOMS``; {ns} is the namespace.
GIVEN = """given AS (
        SELECT * FROM unnest($A::bigint[], $B::text[], $C::integer[], $D::text[])
            WITH ORDINALITY AS g(x_n, name, version, detail, k)
    )"""
WRITE = """ok AS (
        SELECT i.* FROM i JOIN verdict AS v USING (x_n) WHERE v.status = 'ok'
    ), atoms_written AS (
        INSERT INTO {s}.atom_details AS a (namespace, book_uuid, flow_uuid, name, version, detail)
        SELECT {ns}, ok.x_book, ok.x_flow, g.name, g.version + 1, g.detail::json
        FROM given AS g JOIN ok USING (x_n)
        ORDER BY ok.x_book, g.k
        ON CONFLICT (namespace, book_uuid, flow_uuid, name) DO UPDATE
            SET version = excluded.version, detail = excluded.detail
            WHERE a.version = excluded.version - 1
        RETURNING a.book_uuid
    )"""


def given(first: int) -> str:
    """``GIVEN`` with its arrays at parameters ``first`` and on."""
    return re.sub(r"\$([A-D])", lambda m: f"${first + 'ABCD'.index(m[1])}", GIVEN)


def given_json(param: int) -> str:
    """``GIVEN`` with its rows read from the JSON document at parameter ``param``."""
    rows = json_rows(param, "x_n bigint, name text, version integer, detail text")
    return f"""given AS (
        SELECT * FROM {rows} AS g(x_n, name, version, detail, k)
    )"""


def json_rows(param: int, columns: str) -> str:
    """The rows of the JSON document at parameter ``param`` (:func:`rows_json`: an array of
    rows, each an array of values in the order of ``columns``, ``"name type, ..."``), typed,
    with their ordinal last: what ``unnest`` of the columns' arrays ``WITH ORDINALITY`` gives.
    (``jsonb``: parsed once, each value then read in place; a value is read as its text,
    exact for a string and for a number as written.)"""
    kinds = [column.split()[1] for column in columns.split(",")]
    picks = ", ".join(
        f"e->>{n}" if kind == "text" else f"(e->>{n})::{kind}" for n, kind in enumerate(kinds)
    )
    return (
        f"(SELECT {picks}, o FROM jsonb_array_elements(${param}::jsonb) WITH ORDINALITY AS r(e, o))"
    )


_encode = msgspec.json.Encoder().encode


def rows_json(rows: Iterable[Sequence[Any]]) -> str:
    """``rows`` as the JSON document :func:`json_rows` reads (msgspec's; it raises on a
    string with a lone surrogate)."""
    return _encode(list(rows)).decode("utf-8")


def document(*sets: Iterable[Sequence[Any]], floats: Sequence[float] = ()) -> list[str] | None:
    """Each set of rows as :func:`rows_json`'s document; None when one cannot carry them
    exactly (a string msgspec refuses; one of ``floats`` not finite and positive: JSON has
    no NaN nor infinity, and the server reads a number as ``numeric``, which has no -0.0), for
    the caller to send arrays instead."""
    if floats:
        # Finite (a sum is, unless one is NaN or infinite, or the sum overflows: arrays then
        # too, needlessly) and each above zero; two passes in C, no loop here.
        total = sum(floats)
        if total - total != 0.0 or not min(floats) > 0.0:
            return None
    try:
        return [rows_json(rows) for rows in sets]
    except (msgspec.EncodeError, UnicodeEncodeError, TypeError, ValueError, OverflowError):
        return None


# CREATE_BOOK for several logbooks (the batcher's, the link's batcher): $2-$7 the logbooks' columns
# as arrays, $8-$13 their flows' (each with its logbook's uuid first), $14-$18 their atoms' (the
# logbook's and the flow's uuids first). A row per logbook, in their order: its seq (NULL: it
# existed, nothing of it written), its flows and its atoms written. Inserted in uuid order, so
# two such statements wait for each other's new keys in one order.
_CREATE_BOOKS = """WITH x AS (
        SELECT * FROM {books} AS x(uuid, name, created_at, updated_at, meta, token, n)
    ), b AS (
        INSERT INTO {s}.logbooks (namespace, uuid, name, created_at, updated_at, meta, token)
        SELECT $1, x.uuid, x.name, x.created_at, x.updated_at, x.meta::json, x.token FROM x
        ORDER BY x.uuid
        ON CONFLICT (namespace, uuid) DO NOTHING
        RETURNING uuid, seq
    ), f AS (
        INSERT INTO {s}.flow_details (namespace, book_uuid, uuid, name, state, version, meta)
        SELECT $1, b.uuid, y.uuid, y.name, y.state, y.version, y.meta::json
        FROM {flows} AS y(book, uuid, name, state, version, meta, k)
        JOIN b ON b.uuid = y.book
        ORDER BY y.k
        RETURNING book_uuid
    ), a AS (
        INSERT INTO {s}.atom_details (namespace, book_uuid, flow_uuid, name, version, detail)
        SELECT $1, b.uuid, z.flow_uuid, z.name, z.version, z.detail::json
        FROM {atoms} AS z(book, flow_uuid, name, version, detail, k)
        JOIN b ON b.uuid = z.book
        ORDER BY z.k
        RETURNING book_uuid
    )
    SELECT b.seq, (SELECT count(*) FROM f WHERE f.book_uuid = x.uuid),
        (SELECT count(*) FROM a WHERE a.book_uuid = x.uuid)
    FROM x LEFT JOIN b ON b.uuid = x.uuid
    ORDER BY x.n"""
_BOOK_COLUMNS = (
    "uuid text, name text, created_at float8, updated_at float8, meta text, token bigint"
)
_FLOW_COLUMNS = "book text, uuid text, name text, state text, version integer, meta text"
_ATOM_COLUMNS = "book text, flow_uuid text, name text, version integer, detail text"
CREATE_BOOKS = (
    _CREATE_BOOKS.replace(
        "{books}",
        """unnest($2::text[], $3::text[], $4::float8[], $5::float8[], $6::text[],
            $7::bigint[]) WITH ORDINALITY""",
    )
    .replace(
        "{flows}",
        """unnest($8::text[], $9::text[], $10::text[], $11::text[], $12::integer[],
            $13::text[]) WITH ORDINALITY""",
    )
    .replace(
        "{atoms}",
        """unnest($14::text[], $15::text[], $16::text[], $17::integer[], $18::text[])
            WITH ORDINALITY""",
    )
)
#: ``CREATE_BOOKS`` with its logbooks, flows and atoms as JSON documents at $2, $3 and $4
#: (:func:`json_rows`), each row the values of that statement's arrays, in their order.
CREATE_BOOKS_JSON = (
    _CREATE_BOOKS.replace("{books}", json_rows(2, _BOOK_COLUMNS))
    .replace("{flows}", json_rows(3, _FLOW_COLUMNS))
    .replace("{atoms}", json_rows(4, _ATOM_COLUMNS))
)


def book_creation(create_book: str, create_books: str, create_books_json: str) -> Kind:
    """The batcher's kind for ``CREATE_BOOK`` (its row the reply), several run as one
    ``CREATE_BOOKS_JSON`` (``CREATE_BOOKS`` for what JSON cannot carry; all with the schema
    put in). An item is ``CREATE_BOOK``'s $1-$7, then the logbook's flows and its atoms as rows
    of ``CREATE_BOOKS``'s columns (the logbook's uuid first), as the documents take them."""

    async def alone(conn: Any, args: tuple[Any, ...]) -> Any:
        flows, atoms = _columns(args[7], 6)[1:], _columns(args[8], 5)[1:]
        return await conn.fetchrow(create_book, *args[:7], *flows, *atoms)

    async def together(conn: Any, items: list[tuple[Any, ...]]) -> list[Any]:
        documents = document(
            [args[1:7] for args in items],
            [row for args in items for row in args[7]],
            [row for args in items for row in args[8]],
            floats=[value for args in items for value in args[3:5]],
        )
        if documents is not None:
            return list(await conn.fetch(create_books_json, items[0][0], *documents))
        books = [[args[at] for args in items] for at in range(1, 7)]
        flows = _columns([row for args in items for row in args[7]], 6)
        atoms = _columns([row for args in items for row in args[8]], 5)
        return list(await conn.fetch(create_books, items[0][0], *books, *flows, *atoms))

    return Kind("save_logbook", lambda args: (args[1],), alone, together)


# UPDATE_ATOMS for several logbooks' flows: $2-$4 a write each (logbook, flow, token), $5-$8 the
# atoms (the write's ordinal first). The same checks per write, before it writes anything:
# its logbook (locked, by uuid), its token, its flow, the versions of its atoms. A row per write,
# as UPDATE_ATOMS's: verdict, stored token, first stale atom and its stored version, atoms
# written. ``book``, ``flow`` and ``stale`` look each row up by its key, as the fused ending's
# do (see ``fused.py``): a join read every logbook, flow and atom of the namespace on tables not
# analysed yet.
_UPDATE_ATOMS_BATCH = """WITH i AS (
        SELECT * FROM {writes} AS i(x_book, x_flow, x_token, x_n)
    ), book AS MATERIALIZED (
        SELECT l.uuid, l.token FROM (SELECT i.x_book FROM i ORDER BY i.x_book) AS b
        CROSS JOIN LATERAL (
            SELECT l.uuid, l.token FROM {s}.logbooks AS l
            WHERE l.namespace = $1 AND l.uuid = b.x_book LIMIT 1 FOR UPDATE
        ) AS l
    ), flow AS (
        SELECT i.x_book AS book_uuid FROM i CROSS JOIN LATERAL (
            SELECT FROM {s}.flow_details AS f
            WHERE f.namespace = $1 AND f.book_uuid = i.x_book AND f.uuid = i.x_flow LIMIT 1
        ) AS f
    ), {given}, stale AS (
        SELECT DISTINCT ON (g.x_n) g.x_n, g.name, coalesce(a.version, 0) AS stored
        FROM given AS g JOIN i USING (x_n)
        LEFT JOIN LATERAL (
            SELECT a.version FROM {s}.atom_details AS a WHERE a.namespace = $1
                AND a.book_uuid = i.x_book AND a.flow_uuid = i.x_flow AND a.name = g.name LIMIT 1
        ) AS a ON TRUE
        WHERE coalesce(a.version, 0) <> g.version
        ORDER BY g.x_n, g.k
    ), verdict AS (
        SELECT i.x_n, CASE
            WHEN bk.uuid IS NULL THEN 'notfound'
            WHEN i.x_token < bk.token THEN 'lost'
            WHEN fl.book_uuid IS NULL THEN 'noflow'
            WHEN st.x_n IS NOT NULL THEN 'atomconflict'
            ELSE 'ok' END AS status
        FROM i LEFT JOIN book AS bk ON bk.uuid = i.x_book
        LEFT JOIN flow AS fl ON fl.book_uuid = i.x_book
        LEFT JOIN stale AS st ON st.x_n = i.x_n
    ), {write}, fenced AS (
        UPDATE {s}.logbooks AS l SET token = ok.x_token FROM ok
        WHERE l.namespace = $1 AND l.uuid = ok.x_book
            AND EXISTS (SELECT FROM atoms_written AS aw WHERE aw.book_uuid = ok.x_book)
            AND (l.token IS NULL OR l.token < ok.x_token)
    )
    SELECT v.status, bk.token, st.name, st.stored,
        (SELECT count(*) FROM atoms_written AS aw WHERE aw.book_uuid = i.x_book)
    FROM i JOIN verdict AS v USING (x_n) LEFT JOIN book AS bk ON bk.uuid = i.x_book
    LEFT JOIN stale AS st ON st.x_n = i.x_n
    ORDER BY i.x_n"""
_UPDATE_ATOMS_BATCH = _UPDATE_ATOMS_BATCH.replace("{write}", WRITE.replace("{ns}", "$1"))
UPDATE_ATOMS_BATCH = _UPDATE_ATOMS_BATCH.replace(
    "{writes}", "unnest($2::text[], $3::text[], $4::bigint[]) WITH ORDINALITY"
).replace("{given}", given(5))
#: ``UPDATE_ATOMS_BATCH`` with its writes and their atoms as JSON documents at $2 and $3.
UPDATE_ATOMS_BATCH_JSON = _UPDATE_ATOMS_BATCH.replace(
    "{writes}", json_rows(2, "book text, flow text, token bigint")
).replace("{given}", given_json(3))


def atom_writing(update_atoms: str, update_atoms_batch: str, update_atoms_json: str) -> Kind:
    """The batcher's kind for ``UPDATE_ATOMS`` (its parameters the item; its row the reply),
    several run as one ``UPDATE_ATOMS_BATCH_JSON`` (``UPDATE_ATOMS_BATCH`` for what JSON
    cannot carry; all with the schema put in)."""

    async def alone(conn: Any, args: tuple[Any, ...]) -> Any:
        return await conn.fetchrow(update_atoms, *args)

    async def together(conn: Any, items: list[tuple[Any, ...]]) -> list[Any]:
        documents = document(
            [args[1:4] for args in items],
            [
                (n, *atom)
                for n, args in enumerate(items, 1)
                for atom in zip(args[4], args[5], args[6], strict=True)
            ],
        )
        if documents is not None:
            return list(await conn.fetch(update_atoms_json, items[0][0], *documents))
        writes = [[args[at] for args in items] for at in (1, 2, 3)]
        atoms = joined(items, _ordinal, range(4, 7))
        return list(await conn.fetch(update_atoms_batch, items[0][0], *writes, *atoms))

    return Kind("update_atom_details", lambda args: (args[1],), alone, together)


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """``rows`` of ``width`` values as ``width`` arrays, a column each."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def _ordinal(n: int, args: tuple[Any, ...]) -> int:
    """An item's ordinal in its statement."""
    return n
