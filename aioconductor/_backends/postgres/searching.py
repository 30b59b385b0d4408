"""Search on the PostgreSQL board: the indexed overrides of
:class:`~aioconductor.boards._searching.Searching`'s primitives.

A page is one statement: ``WHERE namespace = $1 AND seq < $2 AND <filters> ORDER BY seq DESC
LIMIT $3``, which the server answers by walking one index of schema version 8 backwards
(``jobs_seq``, ``jobs_flow``, ``jobs_state_seq`` or ``jobs_outcome``) and stopping at the
limit. States are those readers see, with ``iterjobs``' own condition
(:func:`~aioconductor._backends.postgres.board_sql.state_condition`) at the server's clock, read
once in the statement: ``UNCLAIMED`` holds the SCHEDULED jobs whose time came, so it is two
walks of ``jobs_state_seq`` (stored UNCLAIMED and stored SCHEDULED) merged by a ``UNION ALL``
(a Merge Append). A count is one statement too.

Text: ``name ILIKE '%piece%' ESCAPE '\\' OR job_key ILIKE ...`` (``%``, ``_`` and ``\\``
escaped). ``ILIKE`` folds case character by character as the database's ``LC_CTYPE`` does
(under ``C.UTF-8`` or a UTF-8 locale, ``É`` matches ``é``; under the plain ``C`` locale ASCII
letters only), where ``JobFilter.matches`` uses Python's ``casefold``: the two differ on the
characters whose folding is not one to one (``ß`` is ``ss`` to ``casefold``, itself to
``ILIKE``; ``ﬁ``, ``İ``). No index serves a piece of a string (``pg_trgm``'s trigram index
would, but the extension needs ``CREATE`` on the database, which a board's role may lack, and
the index costs every post): a text filter reads the jobs newest first until the page is
full, so a rare or absent piece reads every job of the namespace.

``ended_counts`` groups the finished jobs since ``since`` by bucket and ending in one statement
on ``jobs_ended`` (state, ``updated_at``, outcome included).
"""

from __future__ import annotations

from typing import Any

from aioconductor._backends.postgres.board_sql import NOW
from aioconductor._backends.postgres.board_sql import state_condition
from aioconductor.boards._support import JOB_COLUMNS
from aioconductor.models import JobFilter
from aioconductor.models import JobState

__all__ = ["ENDED_COUNTS", "HELD_CLAIMS", "matches_nothing", "search_count_query", "search_query"]

#: Live claims by owner at the server's clock, through ``jobs_state_seq``: CLAIMED rows only.
HELD_CLAIMS = f"""SELECT owner, count(*)::int FROM {{s}}.jobs
    WHERE namespace = $1 AND state = 'CLAIMED' AND expires_at > {NOW} GROUP BY owner"""

#: Above every ``seq``: ``before`` when none is given.
TOP = 2**63 - 1


def matches_nothing(where: JobFilter) -> bool:
    """``where`` holds a NUL character, which no ``text`` column can (nor a bind parameter)."""
    return "\x00" in (where.flow or "") + (where.text or "")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class _Params:
    """Bind parameters, numbered as they are added after the fixed ones."""

    def __init__(self, *fixed: Any) -> None:
        self.values = list(fixed)

    def add(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{cast}"


def _filters(where: JobFilter, params: _Params) -> str:
    """The conditions of ``where`` but its state."""
    terms = ["TRUE"]
    if where.outcome is not None:
        terms.append(f"outcome = {params.add(where.outcome.value)}")
    if where.flow is not None:
        terms.append(f"flow = {params.add(where.flow)}")
    if where.text is not None:
        like = params.add(f"%{_escape(where.text)}%", "::text")
        terms.append(f"(name ILIKE {like} ESCAPE '\\' OR job_key ILIKE {like} ESCAPE '\\')")
    return " AND ".join(terms)


def _branches(state: JobState | None, params: _Params) -> list[str]:
    """One condition per index walk for ``state`` as readers see it at ``c.now``."""
    if state is None:
        return ["TRUE"]
    if state in (JobState.UNCLAIMED, JobState.SCHEDULED):
        where = state_condition(state, "c.now")
    else:
        where = state_condition(state, params.add(state.value, "::text"))
    if state is JobState.UNCLAIMED:
        return [f"state = 'UNCLAIMED' AND {where}", f"state = 'SCHEDULED' AND {where}"]
    return [where]


_CLOCK = f"WITH c AS MATERIALIZED (SELECT {NOW} AS now)"


def search_query(where: JobFilter, before: int | None, limit: int) -> tuple[str, list[Any]]:
    """One page's statement (``{s}`` for the schema) and its parameters after the namespace:
    rows of ``JOB_COLUMNS`` and the board time."""
    params = _Params(None, TOP if before is None else before, limit)
    filters = _filters(where, params)
    selects = [
        f"""(SELECT {JOB_COLUMNS} FROM {{s}}.jobs
            WHERE namespace = $1 AND seq < $2::bigint AND {branch} AND {filters}
            ORDER BY seq DESC LIMIT $3)"""
        for branch in _branches(where.state, params)
    ]
    if len(selects) == 1:
        body = f"SELECT * FROM {selects[0]} AS one"
    else:
        body = f"{' UNION ALL '.join(selects)} ORDER BY seq DESC LIMIT $3"
    statement = f"""{_CLOCK} SELECT j.*, c.now FROM c CROSS JOIN LATERAL ({body}) AS j
        ORDER BY j.seq DESC"""
    return statement, params.values[1:]


def search_count_query(where: JobFilter) -> tuple[str, list[Any]]:
    """The count's statement (``{s}`` for the schema) and its parameters after the namespace."""
    params = _Params(None)
    filters = _filters(where, params)
    counts = [
        f"(SELECT count(*) FROM {{s}}.jobs WHERE namespace = $1 AND {branch} AND {filters})"
        for branch in _branches(where.state, params)
    ]
    return f"{_CLOCK} SELECT {' + '.join(counts)} FROM c", params.values[1:]


#: $2 since, $3 the bucket's width: (floor(updated_at / width), ending, count) per bucket and
#: ending. The IN repeats ``jobs_ended``'s predicate, so the planner may use it.
ENDED_COUNTS = """SELECT floor(updated_at / $3::float8) AS bucket,
        CASE state WHEN 'TRASHED' THEN 'TRASHED' ELSE outcome END AS ending, count(*)
    FROM {s}.jobs
    WHERE namespace = $1 AND state IN ('COMPLETE', 'TRASHED') AND updated_at >= $2::float8
        AND (state = 'TRASHED' OR outcome IS NOT NULL)
    GROUP BY 1, 2"""
