"""The SQL of the PostgreSQL board: its schema and the statements of its transitions.

``{s}`` stands for the quoted schema (validated by ``schema.quote_schema``); everything else is a
bind parameter: ``$1`` is always the namespace. The board's clock is the server's, read once per
statement as ``c.now`` (epoch seconds, ``float8``).

The board looks its statements up as attributes of :class:`BoardStatements` (the schema put in
once), and builds the parameters of its posts with :func:`post_args` and :func:`post_many_args`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aioconductor._backends.postgres import limits_sql
from aioconductor._backends.postgres.migrations import MIGRATIONS as MIGRATIONS
from aioconductor.boards._support import JOB_COLUMNS
from aioconductor.boards._support import PostSpec
from aioconductor.models import MAX_KEPT_FAILURES
from aioconductor.models import JobState
from aioconductor.models import NotificationKind

#: The longest lease, delay or ttl the board stores (a century): the server's float8 time
#: arithmetic refuses to overflow, where Python's would quietly give infinity.
LONGEST = 100 * 365.25 * 86400

NOW = "extract(epoch from clock_timestamp())::float8"
#: Every column a ``Job`` is built from, in ``_job``'s order.
COLUMNS = JOB_COLUMNS
_CLOCK = f"WITH c AS (SELECT {NOW} AS now)"
#: Claimable at ``c.now``: UNCLAIMED, or SCHEDULED or CLAIMED with ``ready_at`` (not_before or
#: the lease's end) passed.
_CLAIMABLE = "ready_at IS NOT NULL AND (state = 'UNCLAIMED' OR ready_at <= c.now)"
#: A pg_notify of job row ``j`` on channel ``$2`` ("<kind> <priority> <id>").
_NOTIFY = "pg_notify($2, {kind} || ' ' || j.priority || ' ' || j.id)"

FETCH = f"SELECT {COLUMNS}, {NOW} FROM {{s}}.jobs WHERE namespace = $1 AND id = $2"
NOW_QUERY = f"SELECT {NOW}"

# $2 channel, $3 id, $4 name, $5 flow, $6 args, $7 priority, $8 max_attempts, $9 delay,
# $10 not_before, $11 headers, $12 the retry policy (or NULL), $13 the key (or NULL), $14 the
# limit key (or NULL). ON CONFLICT
# with no target covers every unique index: a post retried after a lost reply finds its job
# already there (the id is the client's), and a post whose key is held (or being inserted by a
# transaction not yet ended: the insert waits for it) writes nothing. Either returns no row.
POST = f"""{_CLOCK},
    v AS (SELECT c.now, CASE WHEN $9::float8 > 0 THEN c.now + $9::float8
            ELSE $10::float8 END AS nb FROM c),
    j AS (
        INSERT INTO {{s}}.jobs AS t (namespace, id, name, flow, args, priority, created_at,
            updated_at, not_before, max_attempts, state, ready_at, headers, retry, job_key,
            limit_key)
        SELECT $1, $3, $4, $5, $6::json, $7, v.now, v.now, v.nb, $8,
            CASE WHEN v.nb > v.now THEN 'SCHEDULED' ELSE 'UNCLAIMED' END,
            CASE WHEN v.nb > v.now THEN v.nb ELSE v.now END, $11::json, $12::json, $13::text,
            $14::text
        FROM v
        ON CONFLICT DO NOTHING
        RETURNING {COLUMNS}),
    n AS (SELECT {_NOTIFY.format(kind="'posted'")} FROM j WHERE j.state = 'UNCLAIMED')
    SELECT {COLUMNS}, (SELECT count(*) FROM n) FROM j"""

# The same for many jobs in one statement, in the order given (their seq follows it): $3..$11
# are arrays of ids, names, flows, args, priorities, max_attempts, delays, not_befores and keys;
# $12 the headers and $13 the retry policy (or NULL) of every job; $14 the limit keys. Rows are
# inserted in that order, so of two items with one key the first is written and the second
# conflicts with it.
POST_MANY = f"""{_CLOCK},
    v AS (SELECT c.now, x.*, CASE WHEN x.delay > 0 THEN c.now + x.delay ELSE x.at END AS nb
        FROM c, unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::integer[],
            $8::integer[], $9::float8[], $10::float8[], $11::text[], $14::text[])
            WITH ORDINALITY AS x(id, name, flow, args, priority, max_attempts, delay, at, k, lk,
                n)),
    j AS (
        INSERT INTO {{s}}.jobs AS t (namespace, id, name, flow, args, priority, created_at,
            updated_at, not_before, max_attempts, state, ready_at, headers, retry, job_key,
            limit_key)
        SELECT $1, v.id, v.name, v.flow, v.args::json, v.priority, v.now, v.now, v.nb,
            v.max_attempts,
            CASE WHEN v.nb > v.now THEN 'SCHEDULED' ELSE 'UNCLAIMED' END,
            CASE WHEN v.nb > v.now THEN v.nb ELSE v.now END, $12::json, $13::json, v.k, v.lk
        FROM v ORDER BY v.n
        ON CONFLICT DO NOTHING
        RETURNING {COLUMNS}),
    n AS (SELECT {_NOTIFY.format(kind="'posted'")} FROM j WHERE j.state = 'UNCLAIMED')
    SELECT {COLUMNS}, (SELECT count(*) FROM n) FROM j"""
# What a post that wrote nothing finds, in a statement of its own (a snapshot taken after the
# insert waited for the holder's transaction): the jobs with ids $2 or keys $3, and the time.
HOLDERS = f"""SELECT {COLUMNS}, {NOW} FROM {{s}}.jobs
    WHERE namespace = $1 AND (id = ANY($2::text[]) OR job_key = ANY($3::text[]))"""
# $2 the schedule, $3 the tick, $4 the id of its job. Whether the schedule's last tick moved to
# $3 (it was earlier, or there was none), and whether the job exists: an earlier try of this
# same call, whose reply was lost, committed it. The upsert locks the schedule's row till the
# transaction ends; a concurrent one waits, then re-checks its WHERE on the committed row.
TICK = """WITH t AS (INSERT INTO {s}.schedule_ticks AS st (namespace, name, last_tick)
        VALUES ($1, $2, $3::float8)
        ON CONFLICT (namespace, name) DO UPDATE SET last_tick = excluded.last_tick
        WHERE st.last_tick < excluded.last_tick
        RETURNING 1)
    SELECT EXISTS (SELECT FROM t),
        EXISTS (SELECT FROM {s}.jobs WHERE namespace = $1 AND id = $4)"""
TICKS = "SELECT name, last_tick FROM {s}.schedule_ticks WHERE namespace = $1"
# $2 the key.
BY_KEY = f"SELECT {COLUMNS}, {NOW} FROM {{s}}.jobs WHERE namespace = $1 AND job_key = $2"


def _take(owner: str, lease: str) -> str:
    """The SET of a claim: owner ``owner``, a lease of ``lease`` seconds from ``c.now``."""
    return f"""UPDATE {{s}}.jobs SET attempts = attempts + 1, token = token + 1,
        state = 'CLAIMED', owner = {owner}, expires_at = c.now + {lease}::float8,
        ready_at = c.now + {lease}::float8, updated_at = c.now"""


# $2 id, $3 owner, $4 lease. Waits for a row lock another claim holds, then re-checks. A job
# with a limit key (it never changes: read from this statement's view) is claimed by
# claim_limited instead, which counts its key's live claims under the key's lock (limits_sql).
CLAIM = f"""{_CLOCK},
    k AS (SELECT id AS one FROM {{s}}.jobs
        WHERE namespace = $1 AND id = $2 AND limit_key IS NOT NULL),
    t AS ({_take("$3", "$4")} FROM c
        WHERE namespace = $1 AND id = $2 AND limit_key IS NULL AND {_CLAIMABLE}
        RETURNING {COLUMNS})
    SELECT * FROM t
    UNION ALL
    SELECT {COLUMNS} FROM k, LATERAL {{s}}.claim_limited($1, $3, $4::float8, 1, k.one) AS f"""


def _claim_best(limit: str) -> str:
    """Claim the ``limit`` best claimable jobs for owner $2 with lease $3, in claim order.

    SKIP LOCKED: concurrent claimers each take different jobs at once. The picked rows are
    locked by the MATERIALIZED CTE, so the UPDATE takes exactly those. If a picked job has a
    limit key, the UPDATE takes none and ``claim_limited`` (called only then: the LATERAL call
    runs once per row of ``route`` that passes its WHERE) claims instead, passing full keys
    over; jobs without limit keys cost one more aggregate over the picked rows, nothing else.

    The claim's work must not grow with the backlog, whatever the table's statistics (a table
    autovacuum has not analysed yet, new or just filled by a burst of posts, has none), so no
    step's plan may rest on an estimate of how many jobs are ready. ``LIMIT (SELECT n)``: the
    planner cannot read a sub-select's value, so it plans to read a tenth of what the pick
    matches, and walking ``jobs_ready`` in claim order (which stops once it has its jobs) is
    the cheapest plan. Told ``n``, and guessing from no statistics that the namespace held
    0.5% of the table, it fetched and sorted every ready job whenever it guessed fewer than
    ``n``: 45 ms a claim at 100,000 ready jobs, not 1.5. The UPDATE finds the picked jobs by
    ``seq = ANY (array)``, which the planner reckons at ten rows whatever the pick's estimate:
    joined to the pick, it read the whole table (a hash join) when that estimate was large, as
    a generic plan's is (a tenth of the backlog).
    """
    ctes, rows = claim_best_parts(limit)
    return f"""{ctes}
    {rows}
    {"ORDER BY priority DESC, seq" if limit != "1" else ""}"""


def claim_best_parts(limit: str) -> tuple[str, str]:
    """:func:`_claim_best`'s statement in two parts, for a statement that goes on with the
    claimed rows (the fused claim, ``fused_claim.py``): its CTEs (``WITH`` ... ``taken``), and
    the query of the claimed jobs' rows (:data:`COLUMNS`, in no order)."""
    ctes = f"""{_CLOCK},
    picked AS MATERIALIZED (
        SELECT j.seq AS picked_seq, j.limit_key AS picked_key FROM {{s}}.jobs AS j, c
        WHERE j.namespace = $1 AND j.ready_at IS NOT NULL
            AND (j.state = 'UNCLAIMED' OR j.ready_at <= c.now)
        ORDER BY j.priority DESC, j.seq
        LIMIT (SELECT {limit}::integer)
        FOR UPDATE OF j SKIP LOCKED),
    route AS (SELECT count(picked_key) = 0 AS plain, {limit}::integer AS n,
        array_agg(picked_seq) AS seqs FROM picked),
    taken AS ({_take("$2", "$3")} FROM c, route
        WHERE route.plain AND jobs.seq = ANY (route.seqs)
        RETURNING {COLUMNS})"""
    rows = f"""SELECT * FROM taken
    UNION ALL
    SELECT {COLUMNS} FROM route,
        LATERAL {{s}}.claim_limited($1, $2, $3::float8, route.n, NULL) AS f
    WHERE NOT route.plain"""
    return ctes, rows


CLAIM_NEXT = _claim_best("1")
# $4 how many at most.
CLAIM_BATCH = _claim_best("$4")

#: The claim's job is $2, its owner $3 and token $4.
CURRENT = "namespace = $1 AND id = $2 AND state = 'CLAIMED' AND owner = $3 AND token = $4"


def freed(channel: str) -> str:
    """A pg_notify on ``channel`` of SLOT_FREED for an updated row ``j`` that held a claim of a
    limit key (other claimers may now take that key's jobs)."""
    notify = _NOTIFY.replace("$2", channel).format(kind=f"'{NotificationKind.SLOT_FREED}'")
    return f"SELECT {notify} FROM j WHERE j.limit_key IS NOT NULL"


def _ending(sets: str, channel: str) -> str:
    """End the claim ($2 id, $3 owner, $4 token) if current with ``sets`` (and ``ready_at``
    NULL), announcing its freed slot on ``channel`` when the transaction commits."""
    return f"""{_CLOCK},
    j AS (UPDATE {{s}}.jobs SET {sets}, ready_at = NULL, updated_at = c.now FROM c
        WHERE {CURRENT} RETURNING {COLUMNS}),
    n AS ({freed(channel)})
    SELECT {COLUMNS}, (SELECT count(*) FROM n) FROM j"""


# $5 the new lease. A job without a limit key is renewed by the plain UPDATE; one with a key (it
# never changes: read from this statement's view) by renew_limited, which reads its clock only
# once it holds the job's row and its key's lock (limits_sql): a clock read before a lock wait
# could call a lease live that ran out meanwhile, and skip the count a lapsed claim needs.
RENEW = f"""{_CLOCK},
    k AS (SELECT id AS one FROM {{s}}.jobs
        WHERE namespace = $1 AND id = $2 AND limit_key IS NOT NULL),
    t AS (UPDATE {{s}}.jobs SET expires_at = c.now + $5::float8, ready_at = c.now + $5::float8,
            updated_at = c.now FROM c
        WHERE {CURRENT} AND limit_key IS NULL RETURNING {COLUMNS})
    SELECT * FROM t
    UNION ALL
    SELECT {COLUMNS} FROM k, LATERAL {{s}}.renew_limited($1, $2, $3, $4, $5::float8) AS f"""
#: What a consume sets: $5 outcome, $6 result (shared with the fused ending, ``fused.py``).
CONSUME_SETS = "state = 'COMPLETE', outcome = $5, result = $6::json"
# $5 outcome, $6 result, $7 the channel.
CONSUME = _ending(CONSUME_SETS, "$7")
# $5 reason, $6 the channel.
TRASH = _ending("state = 'TRASHED', trash_reason = $5", "$6")


def _give_back(sets: str) -> str:
    """Apply ``sets`` and make the job UNCLAIMED at once if the claim ($2 id, $3 owner, $4 token)
    is current; $5 is the channel, notified when (and only if) the transaction commits."""
    return f"""{_CLOCK},
    j AS (UPDATE {{s}}.jobs SET {sets}, state = 'UNCLAIMED', owner = NULL, expires_at = NULL,
            ready_at = c.now, updated_at = c.now FROM c
        WHERE {CURRENT} RETURNING {COLUMNS}),
    n AS (SELECT {_NOTIFY.replace("$2", "$5").format(kind="'abandoned'")} FROM j)
    SELECT {COLUMNS}, (SELECT count(*) FROM n) FROM j"""


ABANDON = _give_back("abandons = abandons + 1")
# The attempt given back while the job had fewer than max_attempts give-backs, else spent as by
# ABANDON (every SET expression reads the row as it was before the update).
RELEASE = _give_back(
    """releases = releases + (releases < max_attempts)::integer,
        attempts = attempts - (releases < max_attempts)::integer,
        abandons = abandons + (releases >= max_attempts)::integer"""
)
# $5 the delay, $6 the run's failure (JSON, or NULL: none to add), $7 the channel. SCHEDULED,
# the attempt given back; of the failures, the latest MAX_KEPT_FAILURES are kept. A retry due at
# once is notified on commit: a sweep that read its clock before this commit would miss it. A
# job cancelled meanwhile (cancel_reason set: "go" is false) ends COMPLETE/CANCELLED instead,
# its claim kept as consume keeps it, the failure kept all the same.
_GO = "(cancel_reason IS NULL)"
RETRY = f"""{_CLOCK},
    j AS (UPDATE {{s}}.jobs SET
            state = CASE WHEN {_GO} THEN 'SCHEDULED' ELSE 'COMPLETE' END,
            owner = CASE WHEN {_GO} THEN NULL ELSE owner END,
            expires_at = CASE WHEN {_GO} THEN NULL ELSE expires_at END,
            outcome = CASE WHEN {_GO} THEN outcome ELSE 'CANCELLED' END,
            result = CASE WHEN {_GO} THEN result ELSE '{{}}'::json END,
            attempts = attempts - {_GO}::integer, retries = retries + {_GO}::integer,
            not_before = CASE WHEN {_GO} THEN c.now + $5::float8 ELSE not_before END,
            ready_at = CASE WHEN {_GO} THEN c.now + $5::float8 END, updated_at = c.now,
            failures = CASE WHEN $6::json IS NULL THEN failures ELSE (
                SELECT json_agg(k.e ORDER BY k.n) FROM (
                    SELECT a.e, a.n FROM json_array_elements(failures) WITH ORDINALITY AS a(e, n)
                    UNION ALL SELECT $6::json, json_array_length(failures) + 1
                    ORDER BY 2 DESC LIMIT {MAX_KEPT_FAILURES}) AS k) END
        FROM c WHERE {CURRENT} RETURNING {COLUMNS}),
    n AS (SELECT {_NOTIFY.replace("$2", "$7").format(kind="'due'")} FROM j
            WHERE $5::float8 = 0 AND j.state = 'SCHEDULED'
        UNION ALL {freed("$7")})
    SELECT {COLUMNS}, (SELECT count(*) FROM n) FROM j"""
# $2 id, $3 reason, $4 the channel: an operator's trash of any job not finished yet. A job not
# final holds an owner only while CLAIMED (give-backs and retries clear it): its slot is freed.
TRASH_BY_ID = f"""{_CLOCK},
    j AS (UPDATE {{s}}.jobs
        SET state = 'TRASHED', trash_reason = $3, ready_at = NULL, updated_at = c.now FROM c
        WHERE namespace = $1 AND id = $2 AND state NOT IN ('COMPLETE', 'TRASHED')
        RETURNING {COLUMNS}),
    n AS ({freed("$4")} AND j.owner IS NOT NULL)
    SELECT {COLUMNS}, (SELECT count(*) FROM n) FROM j"""


def state_condition(state: JobState | None, param: str) -> str:
    """The condition selecting jobs in ``state`` as readers see them, or ``TRUE`` for all.

    ``param`` is the board time for UNCLAIMED and SCHEDULED (a SCHEDULED job whose time came
    counts as UNCLAIMED), the state's name for the other states, unused for None.
    """
    if state is None:
        return "TRUE"
    if state is JobState.UNCLAIMED:
        return f"(state = 'UNCLAIMED' OR (state = 'SCHEDULED' AND ready_at <= {param}))"
    if state is JobState.SCHEDULED:
        return f"state = 'SCHEDULED' AND ready_at > {param}"
    return f"state = {param}"


def state_params(state: JobState | None, now: float) -> tuple[Any, ...]:
    """The parameter :func:`state_condition` takes for ``state`` at board time ``now``."""
    if state is None:
        return ()
    if state in (JobState.UNCLAIMED, JobState.SCHEDULED):
        return (now,)
    return (state.value,)


def page(state: JobState | None) -> str:
    """A page of ``iterjobs``: jobs in ``state`` (``$5``) after (``$2``, ``$3``), ``$4`` rows."""
    return f"""SELECT {COLUMNS} FROM {{s}}.jobs
        WHERE namespace = $1 AND {state_condition(state, "$5")}
            AND (priority < $2::bigint OR (priority = $2::bigint AND seq > $3))
        ORDER BY priority DESC, seq LIMIT $4"""


def count(state: JobState | None) -> str:
    """How many jobs are in ``state`` (``$2``), as ``iterjobs`` would list them."""
    return f"""SELECT count(*) FROM {{s}}.jobs
        WHERE namespace = $1 AND {state_condition(state, "$2")}"""


# Up to $4 finished jobs in states $2 that ended $3 seconds ago or earlier, oldest first: one
# short range scan of jobs_ended per state (the IN repeats the index's predicate, so the
# planner may use it).
PURGEABLE = f"""{_CLOCK} SELECT e.id FROM c, unnest($2::text[]) AS s(state),
    LATERAL (SELECT id, updated_at, seq FROM {{s}}.jobs
        WHERE namespace = $1 AND state = s.state AND state IN ('COMPLETE', 'TRASHED')
            AND updated_at <= c.now - $3::float8
        ORDER BY updated_at LIMIT $4) AS e
    ORDER BY e.updated_at, e.seq LIMIT $4"""
# Those of the ids $2 that are finished: row locks on those rows only (claims never wait).
PURGE = """WITH d AS (DELETE FROM {s}.jobs
        WHERE namespace = $1 AND id = ANY($2::text[]) AND state IN ('COMPLETE', 'TRASHED')
        RETURNING 1)
    SELECT count(*) FROM d"""

#: The board time, and when the next delay or lease ends after it.
SWEEP_CLOCK = f"""{_CLOCK} SELECT c.now, (SELECT min(ready_at) FROM {{s}}.jobs
        WHERE namespace = $1 AND ready_at > c.now AND state <> 'UNCLAIMED') FROM c"""
#: Every job claimable at ``$2``, in claim order.
SWEEP_ALL = """SELECT id, priority, state FROM {s}.jobs
    WHERE namespace = $1 AND ready_at IS NOT NULL AND (state = 'UNCLAIMED' OR ready_at <= $2)
    ORDER BY priority DESC, seq"""
#: Delays and leases that ended in (``$3``, ``$2``]: jobs no notification announces.
SWEEP_SINCE = """SELECT id, priority, state FROM {s}.jobs
    WHERE namespace = $1 AND ready_at > $3 AND ready_at <= $2 AND state <> 'UNCLAIMED'
    ORDER BY priority DESC, seq"""

# $2 owner, $3 name, $4 ttl, $5 meta.
REGISTER = f"""{_CLOCK} INSERT INTO {{s}}.conductors
        (namespace, owner, name, started_at, heartbeat_at, expires_at, meta)
    SELECT $1, $2, $3, c.now, c.now, c.now + $4::float8, $5::json FROM c
    ON CONFLICT (namespace, owner) DO UPDATE SET name = excluded.name,
        heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at,
        meta = excluded.meta"""
UNREGISTER = "DELETE FROM {s}.conductors WHERE namespace = $1 AND owner = $2"
ALIVE = f"""{_CLOCK} SELECT owner, name, started_at, heartbeat_at, expires_at, meta
    FROM {{s}}.conductors, c WHERE namespace = $1 AND expires_at > c.now"""


@dataclass(frozen=True, slots=True)
class BoardStatements:
    """The board's statements, looked up as attributes (a misspelt one is a type error, not a
    ``KeyError`` at run time); :func:`~.schema.with_schema` puts the schema in."""

    fetch: str = FETCH
    now: str = NOW_QUERY
    post: str = POST
    post_many: str = POST_MANY
    holders: str = HOLDERS
    by_key: str = BY_KEY
    tick: str = TICK
    ticks: str = TICKS
    purgeable: str = PURGEABLE
    purge: str = PURGE
    claim: str = CLAIM
    claim_next: str = CLAIM_NEXT
    claim_batch: str = CLAIM_BATCH
    renew: str = RENEW
    consume: str = CONSUME
    trash: str = TRASH
    abandon: str = ABANDON
    release: str = RELEASE
    retry: str = RETRY
    trash_by_id: str = TRASH_BY_ID
    sweep_clock: str = SWEEP_CLOCK
    sweep_all: str = SWEEP_ALL
    sweep_since: str = SWEEP_SINCE
    register: str = REGISTER
    unregister: str = UNREGISTER
    alive: str = ALIVE
    cancel: str = limits_sql.CANCEL
    set_limit: str = limits_sql.SET_LIMIT
    limits: str = limits_sql.LIMITS
    claim_one: str = limits_sql.CLAIM_ONE


def channel_name(schema: str, namespace: str) -> str:
    """The LISTEN/NOTIFY channel of ``namespace`` in ``schema`` (at most 62 characters)."""
    return f"aioc_{namespace}_{zlib.crc32(schema.encode()):08x}"


def seconds(value: float) -> float:
    """A lease, delay or ttl as the board stores it: at most :data:`LONGEST`."""
    return min(float(value), LONGEST)


def json_text(data: bytes | None) -> str | None:
    """JSON bytes as the text asyncpg binds to a ``json`` parameter (None stays NULL)."""
    return None if data is None else data.decode("utf-8")


def sweep_kind(state: str) -> NotificationKind:
    """Why a job a sweep found in a time window (``SWEEP_SINCE``) became claimable."""
    return NotificationKind.DUE if state == JobState.SCHEDULED else NotificationKind.EXPIRED


def post_args(channel: str, spec: PostSpec) -> tuple[Any, ...]:
    """The parameters of ``POST`` after the namespace ($2 to $14)."""
    return (
        channel,
        spec.id,
        spec.name,
        spec.flow,
        spec.args_json.decode("utf-8"),
        spec.priority,
        spec.max_attempts,
        seconds(spec.delay),
        spec.not_before,
        spec.headers_json.decode("utf-8"),
        json_text(spec.retry_json),
        spec.key,
        spec.limit_key,
    )


def post_many_args(namespace: str, channel: str, specs: Sequence[PostSpec]) -> tuple[Any, ...]:
    """The parameters of ``POST_MANY``, the namespace first; the headers and retry policy are
    the first spec's (a batch shares them)."""
    return (
        namespace,
        channel,
        [spec.id for spec in specs],
        [spec.name for spec in specs],
        [spec.flow for spec in specs],
        [spec.args_json.decode("utf-8") for spec in specs],
        [spec.priority for spec in specs],
        [spec.max_attempts for spec in specs],
        [seconds(spec.delay) for spec in specs],
        [spec.not_before for spec in specs],
        [spec.key for spec in specs],
        specs[0].headers_json.decode("utf-8"),
        json_text(specs[0].retry_json),
        [spec.limit_key for spec in specs],
    )
