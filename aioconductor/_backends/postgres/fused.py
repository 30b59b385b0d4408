"""One statement for a job's ending on PostgreSQL: the store's write of the flow's end and the
board's consume, when the board and the store share a server, a database and a login (the same
URL, password aside: so the same user, rights and settings), so one connection runs both.

The statement is the two as they are, each part from the module that owns it: the store's fast
path (``store_sql.FLOW_END``, parameters $1-$11) and the board's consume (``board_sql``'s claim
condition, its SET and its freed-slot notice, parameters shifted to $12-$18), chained so that
each part runs only if the one before it passed:

1. ``held``: the job's row, locked (``FOR UPDATE``) if the claim is current. Under READ
   COMMITTED a row changed since the statement's snapshot is read again as committed and
   checked again before it is locked, so the fence is checked on the newest row; locked, it
   stays so until the statement ends, and the consume's UPDATE of that row (which re-checks
   the newest row too) cannot find it changed after the flow was written.
2. the store's CTEs, whose verdict is ``'board'`` when ``held`` is empty: they check token,
   version and atoms before they write, so a stale claim or a refused flow end writes nothing.
   The logbook's row is locked under ``EXISTS (SELECT FROM held)``, so always after the job's:
   every other statement locks one of the two rows, so no lock cycle (deadlock) can form.
3. ``j``: the consume, only if the flow was written with every one of its atoms (the CTEs see
   each other's writes only through ``RETURNING``, never in their one snapshot); its clock is
   read once the job is held, and ``n`` is its slot-freed notice, sent at commit.

The board's and the store's schemas and namespaces may differ: each table is named with its own
schema and filtered by its own namespace, and the login is the same (the same rights on both).

Batched: the endings that concurrent jobs ask for in one event-loop turn go to the board's
server as one statement (the board link's batcher, :mod:`.batch`): ``_BATCH``, the same steps
over the jobs' rows (JSON documents, or arrays for what JSON cannot carry:
``store_batch.document``), each job checked and written on its own (a stale claim or a refused
flow end of one job changes nothing of it, and nothing of the others' outcomes), every job's
row locked before any logbook's, each kind in key order. A lone ending runs the statement
above.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aioconductor._backends.postgres import board_sql
from aioconductor._backends.postgres import store_batch
from aioconductor._backends.postgres import store_sql
from aioconductor._backends.postgres.batch import Kind
from aioconductor._backends.postgres.board_reads import PostgresBoardBase
from aioconductor._backends.postgres.link import PostgresLink
from aioconductor._payload import encode_json
from aioconductor.models import Claim
from aioconductor.models import Outcome
from aioconductor.persistence.base import Store
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import FlowDetail

__all__ = ["fused_ending", "statement"]

#: The store's parameters come first: the board's are shifted past them.
_STORE_PARAMETERS = 11
#: What the consume returns of the job's row: what its freed-slot notice (``n``) reads. The
#: job itself is not read back: the conductor does not use it.
_CONSUMED_COLUMNS = "id, priority, limit_key"

# The board's part ($1 namespace, $2 id, $3 owner, $4 token, $5 outcome, $6 result, $7 channel,
# before the shift), "{done}" standing for the store's part having written.
_HELD = f"""held AS MATERIALIZED (
        SELECT id FROM {{s}}.jobs WHERE {board_sql.CURRENT} FOR UPDATE
    )"""
_CONSUMED = f"""c AS (SELECT {board_sql.NOW} AS now FROM held),
    j AS (UPDATE {{s}}.jobs SET {board_sql.CONSUME_SETS}, ready_at = NULL, updated_at = c.now
        FROM c WHERE {board_sql.CURRENT}{{done}} RETURNING {_CONSUMED_COLUMNS}),
    n AS ({board_sql.freed("$7")})"""
# Written: the flow's row, and every atom given ($9, the atoms' names).
_DONE = """ AND EXISTS (SELECT FROM written)
            AND (SELECT count(*) FROM atoms_written) = cardinality($9::text[])"""
#: The statement, "{board}" and "{store}" standing for the two schemas. Its one row: whether the
#: claim was current, the store's verdict, the notices sent (read so that ``n`` runs), and
#: whether the job was consumed.
END_AND_CONSUME = """WITH {held}, {flow_end}, {consumed}
    SELECT EXISTS (SELECT FROM held), (SELECT status FROM verdict), (SELECT count(*) FROM n),
        EXISTS (SELECT FROM j)"""


def _shifted(text: str) -> str:
    """The board's ``text`` with its parameters numbered after the store's."""
    return re.sub(r"\$(\d+)", lambda m: f"${int(m[1]) + _STORE_PARAMETERS}", text)


def statement(board_schema: str, store_schema: str) -> str:
    """The fused statement for the board's and the store's quoted schemas."""
    flow_end = store_sql.FLOW_END.replace("{gate}", " AND EXISTS (SELECT FROM held)")
    flow_end = flow_end.replace(
        "{refusal}", "\n            WHEN NOT EXISTS (SELECT FROM held) THEN 'board'"
    )
    consumed = _shifted(_CONSUMED).replace("{done}", _DONE)
    return END_AND_CONSUME.format(
        held=_shifted(_HELD).replace("{s}", board_schema),
        flow_end=flow_end.replace("{s}", store_schema),
        consumed=consumed.replace("{s}", board_schema),
    )


# The fused statement for several jobs (the batcher's: ``batch.py``), the same steps and checks
# per job, each job's outcome its own. $1 the board's namespace, $2 the store's, $3 the channel;
# $4-$15 a job each (its claim, outcome and result, then its flow's end), $16-$19 their atoms
# (the job's ordinal first). Rows are locked in one order: every job's row (by id), then every
# logbook's (by uuid), so no lock cycle with another such statement nor with the unbatched ones.
# A row per job, in their order, as END_AND_CONSUME's. ``done`` is MATERIALIZED: inlined into
# the consume's UPDATE, its checks ran once for every pair of a claimed job and an ending.
# ``book``, ``flow`` and ``stale`` look each row up by its key (LATERAL, LIMIT 1: never
# flattened into a join; ``book`` locks its rows in the order of its sorted outer side, by
# uuid): on a table whose statistics say it is small (new, not analysed yet), a join read every
# logbook, flow and atom of the namespace, once per statement, as the tables grew.
_BATCH = """WITH i AS (
        SELECT * FROM {jobs} AS i(x_id, x_owner, x_claim, x_outcome, x_result,
            x_book, x_flow, x_name, x_state, x_version, x_token, x_meta, x_n)
    ), held AS MATERIALIZED (
        SELECT id FROM {b}.jobs, i WHERE {current_i}
        ORDER BY id FOR UPDATE OF jobs
    ), book AS MATERIALIZED (
        SELECT l.uuid, l.token FROM (
            SELECT i.x_book FROM i JOIN held AS h ON h.id = i.x_id ORDER BY i.x_book
        ) AS b CROSS JOIN LATERAL (
            SELECT l.uuid, l.token FROM {s}.logbooks AS l
            WHERE l.namespace = $2 AND l.uuid = b.x_book LIMIT 1 FOR UPDATE
        ) AS l
    ), flow AS (
        SELECT i.x_book AS book_uuid, f.version FROM i CROSS JOIN LATERAL (
            SELECT f.version FROM {s}.flow_details AS f
            WHERE f.namespace = $2 AND f.book_uuid = i.x_book AND f.uuid = i.x_flow LIMIT 1
        ) AS f
    ), {given}, stale AS (
        SELECT DISTINCT g.x_n FROM given AS g JOIN i USING (x_n)
        LEFT JOIN LATERAL (
            SELECT a.version FROM {s}.atom_details AS a WHERE a.namespace = $2
                AND a.book_uuid = i.x_book AND a.flow_uuid = i.x_flow AND a.name = g.name LIMIT 1
        ) AS a ON TRUE
        WHERE coalesce(a.version, 0) <> g.version
    ), verdict AS (
        SELECT i.x_n, CASE
            WHEN NOT EXISTS (SELECT FROM held AS h WHERE h.id = i.x_id) THEN 'board'
            WHEN bk.uuid IS NULL THEN 'notfound'
            WHEN i.x_token < bk.token THEN 'lost'
            WHEN fl.version IS NULL THEN 'noflow'
            WHEN fl.version <> i.x_version THEN 'conflict'
            WHEN EXISTS (SELECT FROM stale WHERE stale.x_n = i.x_n) THEN 'atomconflict'
            ELSE 'ok' END AS status
        FROM i LEFT JOIN book AS bk ON bk.uuid = i.x_book
        LEFT JOIN flow AS fl ON fl.book_uuid = i.x_book
    ), {write}, written AS (
        UPDATE {s}.flow_details AS f SET name = ok.x_name, state = ok.x_state,
            version = ok.x_version + 1, meta = ok.x_meta::json
        FROM ok WHERE f.namespace = $2 AND f.book_uuid = ok.x_book AND f.uuid = ok.x_flow
            AND f.version = ok.x_version
        RETURNING f.book_uuid, f.version
    ), fenced AS (
        UPDATE {s}.logbooks AS l SET token = ok.x_token
        FROM ok JOIN written AS w ON w.book_uuid = ok.x_book
        WHERE l.namespace = $2 AND l.uuid = ok.x_book AND (l.token IS NULL OR l.token < ok.x_token)
    ), done AS MATERIALIZED (
        SELECT ok.* FROM ok JOIN written AS w ON w.book_uuid = ok.x_book
        WHERE (SELECT count(*) FROM atoms_written AS aw WHERE aw.book_uuid = ok.x_book)
            = (SELECT count(*) FROM given AS g WHERE g.x_n = ok.x_n)
    ), c AS (SELECT {now} AS now FROM (SELECT count(*) FROM held) AS h),
    j AS (UPDATE {b}.jobs SET {sets}, ready_at = NULL, updated_at = c.now
        FROM c, done WHERE {current_done} RETURNING {columns}),
    n AS ({freed})
    SELECT EXISTS (SELECT FROM held AS h WHERE h.id = i.x_id), v.status, (SELECT count(*) FROM n),
        j.id IS NOT NULL
    FROM i JOIN verdict AS v USING (x_n) LEFT JOIN j ON j.id = i.x_id
    ORDER BY i.x_n"""


def _named(text: str, names: dict[int, str]) -> str:
    """The board's ``text`` with its parameters ``names`` gives put by name."""
    return re.sub(r"\$(\d+)", lambda m: names.get(int(m[1]), m[0]), text)


#: The jobs' arrays of the batched statement, $4-$15 (its atoms': ``store_batch.given(16)``).
_JOBS = """unnest($4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[],
            $9::text[], $10::text[], $11::text[], $12::text[], $13::integer[], $14::bigint[],
            $15::text[]) WITH ORDINALITY"""
#: The same as a JSON document at $4 (its atoms' at $5: ``store_batch.given_json(5)``).
_JOBS_JSON = store_batch.json_rows(
    4,
    "id text, owner text, claim bigint, outcome text, result text, book text, flow text,"
    " name text, state text, version integer, token bigint, meta text",
)


def batch_statement(board_schema: str, store_schema: str, *, json: bool = False) -> str:
    """The fused statement for several jobs, for the board's and the store's quoted schemas;
    ``json``: with the jobs and their atoms as JSON documents at $4 and $5 (``_JOB_ARRAYS``'s
    values a row each, and the atoms' rows), else as arrays. (The jobs' columns are named
    ``x_...`` so that the board's SQL, shared, names its own.)"""
    claim = {2: "{t}.x_id", 3: "{t}.x_owner", 4: "{t}.x_claim"}
    return _BATCH.format(
        jobs=_JOBS_JSON if json else _JOBS,
        given=store_batch.given_json(5) if json else store_batch.given(16),
        write=store_batch.WRITE.replace("{ns}", "$2").replace("{s}", store_schema),
        b=board_schema,
        s=store_schema,
        now=board_sql.NOW,
        current_i=_named(board_sql.CURRENT, claim).format(t="i"),
        sets=_named(board_sql.CONSUME_SETS, {5: "done.x_outcome", 6: "done.x_result"}),
        current_done=_named(board_sql.CURRENT, claim).format(t="done"),
        columns=_CONSUMED_COLUMNS,
        freed=board_sql.freed("$3"),
    )


#: Where each array of the batched statement ($4-$15) takes its value in a job's parameters
#: (the unbatched statement's); its atoms' arrays ($16-$19) are the job's 8-10.
_JOB_ARRAYS = (12, 13, 14, 15, 16, 1, 2, 3, 4, 5, 6, 7)


def _ending(board_schema: str, store_schema: str) -> Kind:
    """The batcher's kind for the fused ending: a job's parameters (the unbatched statement's)
    its item, its row the reply."""
    alone_query = statement(board_schema, store_schema)
    batch_query = batch_statement(board_schema, store_schema)
    json_query = batch_statement(board_schema, store_schema, json=True)
    job_row = operator.itemgetter(*_JOB_ARRAYS)

    async def alone(conn: Any, args: tuple[Any, ...]) -> Any:
        return await conn.fetchrow(alone_query, *args)

    async def together(conn: Any, items: list[tuple[Any, ...]]) -> list[Any]:
        first = items[0]
        documents = store_batch.document(
            [job_row(args) for args in items],
            [
                (n, *atom)
                for n, args in enumerate(items, 1)
                for atom in zip(args[8], args[9], args[10], strict=True)
            ],
        )
        if documents is not None:
            return list(await conn.fetch(json_query, first[11], first[0], first[17], *documents))
        jobs = [[args[at] for args in items] for at in _JOB_ARRAYS]
        atoms = store_batch.joined(items, lambda n, _: n, range(8, 11))
        return list(await conn.fetch(batch_query, first[11], first[0], first[17], *jobs, *atoms))

    return Kind("consume", lambda args: (("job", args[12]), ("book", args[1])), alone, together)


def fused_ending(
    store: Store, link: PostgresLink, board: object
) -> Callable[..., Awaitable[None]] | None:
    """The fused ending of a PostgreSQL ``store`` (on ``link``) and ``board`` (see the
    module), or None unless ``board`` is a PostgreSQL board with the store's URL (password
    aside). The ending returns nothing: the consumed job is not read back."""
    if not isinstance(board, PostgresBoardBase) or board._link.url != link.url:
        return None
    # Batched: the endings of concurrent jobs are one statement a turn.
    kind = _ending(board._link.q, link.q)

    async def consume(
        claim: Claim,
        outcome: Outcome,
        result: dict[str, Any],
        book_uuid: str,
        flow: FlowDetail,
        token: int | None,
        atoms: tuple[AtomDetail, ...],
    ) -> None:
        board._check_open()
        store._check_open()
        data = encode_json("the job's result", result, board.max_payload_bytes)
        args = store_sql.flow_end_args(store.namespace, book_uuid, flow, token, atoms)
        fence = await board._claim_args(claim, "consume")
        args += (board.namespace, *fence, outcome.value, data.decode("utf-8"), board.channel)
        held, _, _, consumed = await board._link.batched(kind, args)
        if consumed:
            board._finished(claim.job_id)
            return
        if not held:  # the claim is not current: nothing written; raises as consume does
            await board._checked(None, claim, "consume")
            return
        # The store refused the flow's end and nothing was written. Its own path raises the
        # exact error, writing nothing on a refusal; should it write after all (the flow was
        # not saved yet), the job is consumed as unfused.
        await store.update_flow_detail(book_uuid, flow, token=token, atoms=atoms)
        await board.consume(claim, outcome=outcome, result=result)

    return consume
