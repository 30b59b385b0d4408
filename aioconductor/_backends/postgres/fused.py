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
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from aioconductor._backends.postgres import board_sql
from aioconductor._backends.postgres import store_sql
from aioconductor._backends.postgres.board_reads import PostgresBoardBase
from aioconductor._backends.postgres.link import PostgresLink
from aioconductor._backends.postgres.schema import refuse_nul
from aioconductor._payload import encode_object
from aioconductor.boards._support import job_from_row
from aioconductor.errors import LogBookNotFound
from aioconductor.errors import StoreError
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.models import Outcome
from aioconductor.persistence._json import atom_json
from aioconductor.persistence._json import dumps
from aioconductor.persistence.base import Store
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import FlowDetail

__all__ = ["fused_ending", "statement"]

#: The store's parameters come first: the board's are shifted past them.
_STORE_PARAMETERS = 11
#: Where the consumed job's columns start in the statement's one row.
_JOB = 5

# The board's part ($1 namespace, $2 id, $3 owner, $4 token, $5 outcome, $6 result, $7 channel,
# before the shift), "{done}" standing for the store's part having written.
_HELD = f"""held AS MATERIALIZED (
        SELECT id FROM {{s}}.jobs WHERE {board_sql.CURRENT} FOR UPDATE
    )"""
_CONSUMED = f"""c AS (SELECT {board_sql.NOW} AS now FROM held),
    j AS (UPDATE {{s}}.jobs SET {board_sql.CONSUME_SETS}, ready_at = NULL, updated_at = c.now
        FROM c WHERE {board_sql.CURRENT}{{done}} RETURNING {board_sql.COLUMNS}),
    n AS ({board_sql.freed("$7")})"""
# Written: the flow's row, and every atom given ($9, the atoms' names).
_DONE = """ AND EXISTS (SELECT FROM written)
            AND (SELECT count(*) FROM atoms_written) = cardinality($9::text[])"""
#: The statement, "{board}" and "{store}" standing for the two schemas. Its one row: whether the
#: claim was current, the store's verdict, the flow's saved version, the atoms written, the
#: notices sent, then the consumed job's columns (NULL when it was not consumed).
END_AND_CONSUME = """WITH {held}, {flow_end}, {consumed}
    SELECT EXISTS (SELECT FROM held), (SELECT status FROM verdict),
        (SELECT version FROM written), (SELECT count(*) FROM atoms_written),
        (SELECT count(*) FROM n), j.*
    FROM (VALUES (0)) AS one LEFT JOIN j ON TRUE"""


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


def _flow_args(
    store: Store,
    book_uuid: str,
    flow: FlowDetail,
    token: int | None,
    atoms: tuple[AtomDetail, ...],
) -> tuple[Any, ...]:
    """The store part's parameters ($1-$11), after the checks ``PostgresStore`` makes before
    it writes a flow's end, in its order, raising what they raise."""
    if "\x00" in book_uuid:
        raise LogBookNotFound(f"no logbook {book_uuid!r} in this store")
    refuse_nul(f"flow {flow.uuid!r}", flow.uuid + flow.name, StoreError)
    for atom in flow.atoms.values():
        refuse_nul(f"atom {atom.name!r}", atom.name, StoreError)
    meta = dumps(f"flow {flow.name!r} meta", flow.meta)
    for atom in flow.atoms.values():
        atom_json(atom)
    for atom in atoms:
        refuse_nul(f"atom {atom.name!r}", atom.name, StoreError)
    return (
        store.namespace,
        book_uuid,
        flow.uuid,
        flow.name,
        flow.state.value,
        flow.version,
        token,
        meta,
        [atom.name for atom in atoms],
        [atom.version for atom in atoms],
        [atom_json(atom) for atom in atoms],
    )


def fused_ending(
    store: Store, link: PostgresLink, board: object
) -> Callable[..., Awaitable[Job]] | None:
    """The fused ending of a PostgreSQL ``store`` (on ``link``) and ``board`` (see the
    module), or None unless ``board`` is a PostgreSQL board with the store's URL (password
    aside)."""
    if not isinstance(board, PostgresBoardBase) or board._link.url != link.url:
        return None
    query = statement(board._link.q, link.q)

    async def consume(
        claim: Claim,
        outcome: Outcome,
        result: dict[str, Any],
        book_uuid: str,
        flow: FlowDetail,
        token: int | None,
        atoms: tuple[AtomDetail, ...],
    ) -> Job:
        board._check_open()
        store._check_open()
        data, _ = encode_object("the job's result", result, board.max_payload_bytes)
        args = _flow_args(store, book_uuid, flow, token, atoms)
        fence = await board._claim_args(claim, "consume")
        args += (board.namespace, *fence, outcome.value, data.decode("utf-8"), board.channel)
        row = await board._link.call("consume", lambda conn: conn.fetchrow(query, *args))
        if not row[0]:  # the claim is not current: nothing written; raises as consume does
            return await board._checked(None, claim, "consume")
        if row[_JOB] is None:
            # The store refused the flow's end (its verdict row[1]) and nothing was written.
            # Its own path raises the exact error, writing nothing on a refusal; should it
            # write after all (the flow was not saved yet), the job is consumed as unfused.
            await store.update_flow_detail(book_uuid, flow, token=token, atoms=atoms)
            return await board.consume(claim, outcome=outcome, result=result)
        job = job_from_row(row[_JOB:])
        board._finished(job.id)
        return job

    return consume
