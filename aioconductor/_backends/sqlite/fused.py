"""A job's ending in one SQLite transaction: the store's write of the flow's end and the board's
consume, when the board and the store are on the same database file; and a batch of claims with
the creation of their jobs' runs (:func:`fused_claim`, see :mod:`aioconductor.persistence.runs`).

Their tables do not overlap, so one connection can write both: the ending runs as one write on
the board's link (its group commit: one savepoint of the board's transaction, see
:mod:`.link`), in this order:

1. the board's consume, fenced by the claim (state, owner and token): a stale claim raises
   ``ClaimLost`` before the store's part runs;
2. the store's write of the flow's end (:meth:`SqliteStore.flow_writer`), which checks the
   logbook's token and the versions before it writes: a refusal raises, and the savepoint's
   rollback undoes the consume with it.

So a stale claim changes nothing, and a refused store write consumes nothing. The fused claim is
the board's batch claim, then the store's creation of each claimed job's run whose flow the
templates name and that never ran (its first claim, not cancelled, within its attempts; one
whose logbook exists gets nothing written), in the same write. Namespaces may differ: each part
filters by its own. The file's write lock is taken by ``BEGIN IMMEDIATE``
before the first read, so no other connection changes the job or the logbook in between.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aioconductor._backends.sqlite import board_schema as board_sql
from aioconductor._backends.sqlite.claiming import take_batch
from aioconductor._backends.sqlite.claiming import write_current
from aioconductor._payload import encode_object
from aioconductor.boards.sqlite import SqliteJobBoard
from aioconductor.errors import StoreError
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.models import Outcome
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.runs import FusedClaim
from aioconductor.persistence.runs import RunTemplate
from aioconductor.persistence.runs import is_first_run

__all__ = ["FlowEndWriter", "fused_claim", "fused_ending", "same_file"]

#: The path of a private in-memory database: a connection's own, never shared.
_MEMORY = ":memory:"


class FlowEndWriter(Protocol):
    """What the fused ending needs of the store (a SQLite store: named so, not imported, as
    the store imports this module)."""

    path: str

    def _check_open(self) -> None: ...

    def flow_writer(
        self,
        book_uuid: str,
        flow: FlowDetail,
        token: int | None,
        atoms: tuple[AtomDetail, ...],
        *,
        read_back: bool,
    ) -> Callable[[sqlite3.Connection], FlowDetail | None]: ...

    def run_creator(
        self, template: RunTemplate
    ) -> Callable[[sqlite3.Connection, str, str, int, float], FlowDetail | None]: ...


def same_file(one: str, other: str) -> bool:
    """Whether the paths ``one`` and ``other`` name one database file (never an in-memory
    database, which belongs to its connection alone)."""
    if _MEMORY in (one, other) or not one or not other:
        return False
    try:
        return os.path.samefile(one, other)
    except OSError:  # not created yet, or gone: compare the names
        return os.path.realpath(one) == os.path.realpath(other)


def fused_ending(store: FlowEndWriter, board: object) -> Callable[..., Awaitable[Job]] | None:
    """The fused ending of ``store`` and ``board`` (see the module), or None unless ``board``
    is a SQLite board on the store's file."""
    if not isinstance(board, SqliteJobBoard) or not same_file(board.path, store.path):
        return None

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
        # Refused before anything is written: a result too large for the board, a flow end
        # JSON cannot carry.
        data, _ = encode_object("the job's result", result, board.max_payload_bytes)
        write_flow_end = store.flow_writer(book_uuid, flow, token, atoms, read_back=False)
        params = {"ns": board.namespace, "outcome": outcome.value, "result": data.decode("utf-8")}

        def end(conn: sqlite3.Connection) -> Any:
            row = write_current(conn, board_sql.CONSUME, claim, "consume", params)
            write_flow_end(conn)
            return row

        try:
            row = await board._link.write("consume", end)
        except (UnicodeEncodeError, OverflowError) as exc:
            # As the store's own writes: a value sqlite3 cannot bind; the write was rolled back.
            raise StoreError(
                f"update_flow_detail: a value cannot be stored in SQLite: {exc}"
            ) from None
        job = board._ended(row)
        board._finished(job.id)
        return job

    return consume


def fused_claim(
    store: FlowEndWriter, board: object, templates: Mapping[str, RunTemplate]
) -> FusedClaim | None:
    """The fused claim of ``store`` and ``board`` for the flows of ``templates`` (see the
    module), or None unless ``board`` is a SQLite board on the store's file."""
    if not isinstance(board, SqliteJobBoard) or not same_file(board.path, store.path):
        return None
    creators = {flow: store.run_creator(template) for flow, template in templates.items()}

    async def claim(
        owner: str, limit: int, lease: float
    ) -> list[tuple[Job, Claim, FlowDetail | None]]:
        seconds, limit = board._claim_batch_args(owner, limit, lease)
        store._check_open()

        def claim_and_create(conn: sqlite3.Connection) -> list[tuple[Job, Claim, Any]]:
            now = time.time()
            params = board._params(owner=owner, expires=now + seconds, now=now, limit=limit)
            claimed = []
            for job in take_batch(conn, params):
                claim = job.claim
                assert claim is not None
                create = creators.get(job.flow)
                created = None
                if create is not None and is_first_run(job, claim):
                    created = create(conn, job.id, job.name, claim.token, now)
                claimed.append((job, claim, created))
            return claimed

        try:
            claimed = await board._link.write("claim_batch", claim_and_create)
        except (UnicodeEncodeError, OverflowError) as exc:
            raise StoreError(f"claim_batch: a value cannot be stored in SQLite: {exc}") from None
        board._check_claimed(claimed, limit)
        if claimed:
            board._due.note(claimed[0][1].expires_at, time.time())
        return claimed

    return claim
