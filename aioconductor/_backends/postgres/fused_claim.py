"""One statement for a batch of claims on PostgreSQL and the creation of their jobs' runs, when
the board and the store share a server, a database and a login (as for the fused ending,
``fused.py``): see :mod:`aioconductor.persistence.runs`.

The statement is the board's batch claim as it is (``board_sql.claim_best_parts``: the same
pick, locks, limit keys and order), its claimed rows kept in ``claimed``, then the store's
writes, for each claimed job whose flow the templates name ($5, a JSON document) and that never
ran (its first claim, token 1, not cancelled, within its attempts):

1. ``books``: its logbook, fenced by the claim's token, in id order; one that exists already
   is left as it is (``ON CONFLICT DO NOTHING``), and nothing more is written for it: the
   engine reads it as usual.
2. ``flows``: the run's flow detail, RUNNING, version 0, its uuid the server's
   ``gen_random_uuid()``; ``atoms``: the template's first task, RUNNING, ``meta.started`` the
   claim's clock, version 0, as ``persistence.runs.new_run`` builds it.

All in the claim's transaction: a job is claimed with its run, or neither. Each row comes back
with the created flow's uuid (NULL: nothing created) and the clock, from which the conductor
builds the same detail (``new_run``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aioconductor._backends.postgres import board_sql
from aioconductor._backends.postgres.board_reads import PostgresBoardBase
from aioconductor._backends.postgres.link import PostgresLink
from aioconductor._backends.postgres.schema import refuse_nul
from aioconductor._fastjson import encode_plain
from aioconductor.boards._support import job_from_row
from aioconductor.errors import PayloadError
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.persistence.base import Store
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.runs import FusedClaim
from aioconductor.persistence.runs import RunTemplate
from aioconductor.persistence.runs import new_run

__all__ = ["fused_claim", "statement"]

# $1-$4 the board's (namespace, owner, lease, limit), $5 the templates, $6 the store's namespace;
# "{st}" the store's schema ("{s}" the board's, in the claim's parts).
_CREATE = """,
    claimed AS ({rows}),
    fresh AS MATERIALIZED (
        SELECT cl.id, cl.name, cl.token, t.detail, t.first, gen_random_uuid()::text AS flow_uuid
        FROM claimed AS cl
        JOIN json_to_recordset($5::json) AS t(flow text, detail text, first text)
            ON t.flow = cl.flow
        WHERE cl.token = 1 AND cl.cancel_reason IS NULL AND cl.attempts <= cl.max_attempts
    ), books AS (
        INSERT INTO {st}.logbooks (namespace, uuid, name, created_at, updated_at, meta, token)
        SELECT $6, fresh.id, fresh.name, c.now, c.now, '{{}}'::json, fresh.token FROM fresh, c
        ORDER BY fresh.id
        ON CONFLICT (namespace, uuid) DO NOTHING
        RETURNING uuid
    ), flows AS (
        INSERT INTO {st}.flow_details (namespace, book_uuid, uuid, name, state, version, meta)
        SELECT $6, fresh.id, fresh.flow_uuid, fresh.detail, 'RUNNING', 0, '{{}}'::json
        FROM books JOIN fresh ON fresh.id = books.uuid
        RETURNING book_uuid, uuid
    ), atoms AS (
        INSERT INTO {st}.atom_details (namespace, book_uuid, flow_uuid, name, version, detail)
        SELECT $6, fresh.id, fresh.flow_uuid, fresh.first, 0, json_build_object(
            'kind', 'task', 'state', 'RUNNING', 'intention', 'EXECUTE', 'result', NULL,
            'failure', NULL, 'revert_result', NULL, 'revert_failure', NULL,
            'meta', json_build_object('started', c.now))
        FROM books JOIN fresh ON fresh.id = books.uuid, c
        WHERE fresh.first IS NOT NULL
    )
    SELECT claimed.*, flows.uuid, c.now FROM claimed
    LEFT JOIN flows ON flows.book_uuid = claimed.id, c
    ORDER BY claimed.priority DESC, claimed.seq"""


def statement(board_schema: str, store_schema: str) -> str:
    """The fused claim for the board's and the store's quoted schemas."""
    ctes, rows = board_sql.claim_best_parts("$4")
    text = ctes + _CREATE.format(rows=rows, st=store_schema)
    return text.replace("{s}", board_schema)


def templates_json(templates: Mapping[str, RunTemplate]) -> str:
    """``templates`` as the statement's $5: ``[{"flow", "detail", "first"}, ...]``."""
    rows = [{"flow": f, "detail": t.detail, "first": t.first} for f, t in templates.items()]
    for row in rows:
        for name in row.values():
            if name is not None:
                refuse_nul(f"the name {name!r}", name, PayloadError)
    encoded = encode_plain(rows)
    if encoded is None:  # names are str: only a lone surrogate could get here
        raise PayloadError("a flow's or task's name cannot be sent to PostgreSQL as JSON")
    return encoded.decode("utf-8")


def fused_claim(
    store: Store, link: PostgresLink, board: object, templates: Mapping[str, RunTemplate]
) -> FusedClaim | None:
    """The fused claim of a PostgreSQL ``store`` (on ``link``) and ``board`` for the flows of
    ``templates`` (see the module), or None unless ``board`` is a PostgreSQL board with the
    store's URL (password aside).

    Raises:
        PayloadError: a name of ``templates`` holds a NUL character.
    """
    if not isinstance(board, PostgresBoardBase) or board._link.url != link.url:
        return None
    query = statement(board._link.q, link.q)
    encoded = templates_json(templates)

    async def claim(
        owner: str, limit: int, lease: float
    ) -> list[tuple[Job, Claim, FlowDetail | None]]:
        seconds, limit = board._claim_batch_args(owner, limit, lease)
        store._check_open()
        refuse_nul("the owner", owner, PayloadError)
        lease_seconds = board_sql.seconds(seconds)
        args = (board.namespace, owner, lease_seconds, limit, encoded, store.namespace)
        rows = await board._link.call("claim_batch", lambda conn: conn.fetch(query, *args))
        board._check_claimed(rows, limit)
        claimed = []
        for row in rows:
            job = job_from_row(row)
            claim = job.claim
            assert claim is not None
            claimed.append((job, claim, _created(row, templates, job.flow)))
        if claimed:
            board._due.note(claimed[0][1].expires_at, claimed[0][0].updated_at)
        return claimed

    return claim


def _created(row: Any, templates: Mapping[str, RunTemplate], flow: str) -> FlowDetail | None:
    """The run the statement created for a claimed job's row (its last two columns: the flow
    detail's uuid, NULL if none, and the claim's clock)."""
    flow_uuid, now = row[-2], row[-1]
    if flow_uuid is None:
        return None
    template = templates[flow]
    return new_run(flow_uuid, template.detail, template.first, now)
