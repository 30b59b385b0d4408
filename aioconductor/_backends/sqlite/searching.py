"""Search on the SQLite board: the indexed overrides of
:class:`~aioconductor.boards._searching.Searching`'s primitives.

A page is one statement: ``WHERE namespace = :ns AND seq < :before AND <filters> ORDER BY seq
DESC LIMIT :limit``, which SQLite answers by walking one index of schema version 7 downwards
(``jobs_seq``, ``jobs_flow``, ``jobs_state_seq`` or ``jobs_outcome``) and stopping at the
limit. States are those readers see, with ``iterjobs``' own conditions
(:func:`~aioconductor._backends.sqlite.board_schema.state_where`): ``UNCLAIMED`` holds the
SCHEDULED jobs whose time came, so it is two walks of ``jobs_state_seq`` (stored UNCLAIMED and
stored SCHEDULED) merged by a ``UNION ALL`` in the same statement. A count is one statement too.

Text: a piece of the name or key, as ``JobFilter.matches`` finds it (``str.casefold``).
SQLite's ``LIKE`` folds ASCII letters only, so for a needle that is ASCII once folded a row
matches by ``LIKE '%needle%' ESCAPE '\\'`` (``%``, ``_`` and ``\\`` escaped), or, for a name or
key holding a non-ASCII character (its UTF-8 bytes outnumber its characters), by
``aioc_casefold(column)`` (Python's ``casefold``, a function this module gives the connection)
containing the needle; any other needle is looked for in ``aioc_casefold`` of every row. The
results are the same as ``matches``'; the cost differs: a text filter reads the jobs newest
first until the page is full, so a rare or absent piece reads every job of the namespace
(about 45 ms per 100,000 on this machine, more with a non-ASCII needle).

``ended_counts`` groups the finished jobs since ``since`` by bucket and ending in one statement
on ``jobs_ended`` (state, ``updated_at``, outcome: the index alone is read).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from aioconductor._backends.sqlite.board_schema import FINAL
from aioconductor._backends.sqlite.board_schema import state_where
from aioconductor._backends.sqlite.link import SqliteLink
from aioconductor.boards._support import JOB_COLUMNS
from aioconductor.boards._support import job_from_row
from aioconductor.boards._support import visible
from aioconductor.models import EndedCount
from aioconductor.models import Job
from aioconductor.models import JobFilter
from aioconductor.models import JobState

__all__ = ["SqliteSearching"]

#: Above every ``seq``: ``before`` when none is given.
_TOP = 2**63 - 1
_FOLD = "aioc_casefold"


def _casefold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def prepare(conn: sqlite3.Connection) -> None:
    """Give the connection ``aioc_casefold`` (idempotent, cheap: done before each search)."""
    conn.create_function(_FOLD, 1, _casefold, deterministic=True)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _folded(column: str) -> str:
    """``column`` holds a non-ASCII character and, casefolded, the needle ``:fold``."""
    return (
        f"(length(CAST({column} AS BLOB)) > length({column})"
        f" AND instr({_FOLD}({column}), :fold) > 0)"
    )


def _filters(where: JobFilter, params: dict[str, Any]) -> str:
    """The conditions of ``where`` but its state, filling ``params``."""
    terms = ["1"]
    if where.outcome is not None:
        terms.append("outcome = :outcome")
        params["outcome"] = where.outcome.value
    if where.flow is not None:
        terms.append("flow = :flow")
        params["flow"] = where.flow
    if where.text is not None:
        needle = where.text.casefold()
        params["fold"] = needle
        if needle.isascii():
            params["like"] = f"%{_escape(needle)}%"
            terms.append(
                "(name LIKE :like ESCAPE '\\' OR job_key LIKE :like ESCAPE '\\'"
                f" OR {_folded('name')} OR {_folded('job_key')})"
            )
        else:
            terms.append(f"(instr({_FOLD}(name), :fold) > 0 OR instr({_FOLD}(job_key), :fold) > 0)")
    return " AND ".join(terms)


def _branches(state: JobState | None, params: dict[str, Any]) -> list[str]:
    """One condition per index walk for ``state`` as readers see it: each names one stored
    state, so it walks ``jobs_state_seq``."""
    if state is None:
        return ["1"]
    params["state"] = state.value
    where = state_where(state)
    if state is JobState.UNCLAIMED:
        return [f"state = 'UNCLAIMED' AND {where}", f"state = 'SCHEDULED' AND {where}"]
    return [where]


def search_query(
    where: JobFilter, before: int | None, limit: int, now: float, namespace: str
) -> tuple[str, dict[str, Any]]:
    """The statement of one page and its parameters."""
    params: dict[str, Any] = {
        "ns": namespace,
        "now": now,
        "before": _TOP if before is None else before,
        "limit": limit,
    }
    filters = _filters(where, params)
    selects = [
        f"""SELECT {JOB_COLUMNS} FROM jobs
            WHERE namespace = :ns AND seq < :before AND {branch} AND {filters}
            ORDER BY seq DESC LIMIT :limit"""
        for branch in _branches(where.state, params)
    ]
    if len(selects) == 1:
        return selects[0], params
    union = " UNION ALL ".join(f"SELECT * FROM ({select})" for select in selects)
    return f"{union} ORDER BY seq DESC LIMIT :limit", params


def search_count_query(where: JobFilter, now: float, namespace: str) -> tuple[str, dict[str, Any]]:
    """The statement counting the jobs ``where`` matches, and its parameters."""
    params: dict[str, Any] = {"ns": namespace, "now": now}
    filters = _filters(where, params)
    counts = [
        f"(SELECT COUNT(*) FROM jobs WHERE namespace = :ns AND {branch} AND {filters})"
        for branch in _branches(where.state, params)
    ]
    return f"SELECT {' + '.join(counts)}", params


#: ``floor(updated_at / :bucket)`` (CAST truncates toward zero), the ending, the count: the
#: jobs that ended since ``:since``, per bucket and ending.
_BUCKET = "CAST(updated_at / :bucket AS INTEGER)"
ENDED_COUNTS = f"""SELECT {_BUCKET} - (updated_at / :bucket < {_BUCKET}) AS bucket,
        CASE state WHEN 'TRASHED' THEN 'TRASHED' ELSE outcome END AS ending, COUNT(*)
    FROM jobs INDEXED BY jobs_ended
    WHERE namespace = :ns AND {FINAL} AND updated_at >= :since
        AND (state = 'TRASHED' OR outcome IS NOT NULL)
    GROUP BY bucket, ending"""


def ended_counts_query(since: float, bucket: float, namespace: str) -> tuple[str, dict[str, Any]]:
    """The ``ended_counts`` statement and its parameters."""
    return ENDED_COUNTS, {"ns": namespace, "since": since, "bucket": bucket}


#: Live claims by owner, through ``jobs_state`` (namespace, state): the CLAIMED rows only.
HELD_CLAIMS = """SELECT owner, count(*) FROM jobs
    WHERE namespace = :ns AND state = 'CLAIMED' AND expires_at > :now GROUP BY owner"""


class SqliteSearching:
    """The search primitives of :class:`~aioconductor.boards.sqlite.SqliteJobBoard` (a base
    class of it, ahead of ``JobBoard``, whose defaults read every job)."""

    _link: SqliteLink
    namespace: str

    async def _search(self, where: JobFilter, before: int | None, limit: int) -> list[Job]:
        now = time.time()
        statement, params = search_query(where, before, limit, now, self.namespace)

        def search(conn: sqlite3.Connection) -> list[Any]:
            prepare(conn)
            return conn.execute(statement, params).fetchall()

        rows = await self._link.read("search", search)
        return [visible(job_from_row(row), now) for row in rows]

    async def _search_count(self, where: JobFilter) -> int:
        statement, params = search_count_query(where, time.time(), self.namespace)

        def search_count(conn: sqlite3.Connection) -> int:
            prepare(conn)
            return int(conn.execute(statement, params).fetchone()[0])

        return await self._link.read("search_count", search_count)

    async def _ended_counts(self, since: float, bucket: float) -> list[EndedCount]:
        statement, params = ended_counts_query(since, bucket, self.namespace)

        def ended_counts(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(statement, params).fetchall()

        rows = await self._link.read("ended_counts", ended_counts)
        return [EndedCount(start=k * bucket, ending=e, count=n) for k, e, n in rows]

    async def _held_claims(self) -> dict[str, int]:
        params = {"ns": self.namespace, "now": time.time()}

        def held_claims(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(HELD_CLAIMS, params).fetchall()

        return {owner: n for owner, n in await self._link.read("held_claims", held_claims)}
