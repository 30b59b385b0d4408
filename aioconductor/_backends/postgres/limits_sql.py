"""The SQL of cancels and concurrency limits on the PostgreSQL board.

A limit is a row of ``limits`` (namespace, key, ``max_claims``); its row is also the key's lock.
A claim of a job posted with a limit key locks the rows of its jobs' keys (``FOR UPDATE``, in
key order, so claims never wait for each other in a cycle) and only then, in a statement of its
own, counts the key's live claims (``CLAIMED``, lease not expired) and takes no more of the key's
jobs than its free slots. The count must come after the lock: under ``READ COMMITTED`` a
statement sees the database as of its start, so a count taken in the statement that waited
for the lock would miss the claim of the transaction it waited for (and ``SKIP LOCKED`` alone
lets two claimers each count the other's claim as not there). The count, the lock and the
claim are one transaction: the PL/pgSQL function ``claim_limited``, whose statements each see
what committed before they started.

Only keys with a limit have a row: ``set_limit`` makes it, removing the limit deletes it, and
claims never write to ``limits`` (so keys that never had a limit, one per tenant or order,
leave nothing behind). A key without a row has nothing to lock, yet a limit set while a claim
of that key is under way must wait for the claim, or the next claim (counting under the new
row's lock) would miss it and overshoot. That is the namespace's limits gate, a transaction
advisory lock on (``GATE``, hash of schema and namespace): every limited claim and every
renewal of a limited job takes it shared before any key row (``lock_limit``), and
``set_limit`` (the function of that name) takes it exclusive before it writes. So a claim that
found a key without a limit commits before the limit does, and is counted by every claim after
it; claims share the gate, so they never wait for each other on it; a ``set_limit`` waits for
the limited claims under way (milliseconds) and holds the next ones back meanwhile. One gate a
namespace rather than one a key: a claim takes one advisory lock, not one per key of a batch
of up to 256 jobs (each a slot of the server's shared lock table, sized at 64 locks a
connection by default), at the price of ``set_limit`` pausing the claims of other keys for as
long as it waits; limits are set rarely.

Renewals: a plain UPDATE renews a job without a limit key; every renewal of a limited job goes
through ``renew_limited``, which locks the job's row, then the gate and the key's row, and only
then reads the clock: a lease still live then is renewed (every claim counting after this
commit sees it, every claim that counted earlier counted it live), a lapsed one re-takes a
slot only if the key has one free. (Deciding "still live" by a clock read before a lock wait,
as a plain UPDATE does, would let a renewal that waited across the lease's end skip the count
while another claim took the slot.)

Who waits for whom: a claim locks job rows first (``SKIP LOCKED``, or the one job claimed by
id), then the gate, then key rows in key order; ``renew_limited`` one job row, then the gate
and its key's row; ``set_limit`` the gate, then one key row. Nobody holding the gate or a key
row waits for a job row, and ``set_limit`` holds no lock while it waits for the gate, so no
cycle forms.

The board routes a claim here only when a job it would take has a limit key (``claim_next``
and ``claim_batch`` decide inside their statement, see ``board_sql._claim_best``), and a
renewal only when its job has one (``board_sql.RENEW``): a namespace whose jobs have no limit
keys never calls these functions.

Rows with ``max_claims`` NULL (left by schema version 6, and by a version-6 process's removal
of a limit during a rolling upgrade) mean no limit: every read skips them.

``{s}`` stands for the quoted schema; ``$1`` is the namespace.
"""

from __future__ import annotations

from aioconductor.boards._support import JOB_COLUMNS

__all__ = [
    "CANCEL",
    "CLAIM_LIMITED",
    "CLAIM_ONE",
    "FUNCTIONS",
    "GATE",
    "LIMITS",
    "SET_LIMIT",
    "live",
]

_NOW = "extract(epoch from clock_timestamp())::float8"
_CLAIMABLE = "j.ready_at IS NOT NULL AND (j.state = 'UNCLAIMED' OR j.ready_at <= v_now)"


def live(namespace: str, key: str, now: str) -> str:
    """How many jobs of limit key ``key`` hold a live claim at ``now`` (reads the partial index
    ``jobs_limit_claims``)."""
    return f"""(SELECT count(*) FROM {{s}}.jobs AS x WHERE x.namespace = {namespace}
        AND x.limit_key = {key} AND x.state = 'CLAIMED' AND x.expires_at > {now})"""


#: The first key of the limits gate's advisory lock ("AIOL"); the second is ``_GATE_OF``.
GATE = 0x41494F4C
#: The second key of the gate of namespace ``p_ns`` (the schema in, so schemas never share it).
_GATE_OF = "hashtext('{s}.' || p_ns)"

#: Take the namespace's limits gate (shared: once a transaction, then from the session's own
#: lock table), then lock the row of key ``p_key`` till the transaction ends, if the key has
#: one (a key without a row has no limit: the gate alone keeps ``set_limit`` from changing
#: that until the transaction ends).
LOCK_LIMIT = f"""CREATE OR REPLACE FUNCTION {{s}}.lock_limit(p_ns text, p_key text)
RETURNS void LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({GATE}, {_GATE_OF});
    PERFORM FROM {{s}}.limits AS l WHERE l.namespace = p_ns AND l.limit_key = p_key FOR UPDATE;
END $fn$"""

#: Store the limit ``p_limit`` of key ``p_key`` (NULL deletes the key's row), the gate held
#: exclusive: it waits for the limited claims and renewals under way, whatever their keys.
SET_LIMIT_FUNCTION = f"""CREATE OR REPLACE FUNCTION {{s}}.set_limit(
    p_ns text, p_key text, p_limit integer)
RETURNS void LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    PERFORM pg_advisory_xact_lock({GATE}, {_GATE_OF});
    IF p_limit IS NULL THEN
        DELETE FROM {{s}}.limits AS l WHERE l.namespace = p_ns AND l.limit_key = p_key;
    ELSE
        INSERT INTO {{s}}.limits AS l (namespace, limit_key, max_claims)
            VALUES (p_ns, p_key, p_limit)
            ON CONFLICT (namespace, limit_key) DO UPDATE SET max_claims = excluded.max_claims;
    END IF;
END $fn$"""

#: Claim up to ``p_n`` jobs for ``p_owner`` (lease ``p_lease``) in claim order, passing over the
#: jobs of full keys; or (``p_one``, a job id) that one job, waiting for its row. Three steps:
#: pick and lock the jobs (an estimate of each key's free slots, from this statement's view,
#: lets the pick pass full keys over: the scan starts again past the last job seen, without
#: the key, when a key fills); lock their keys' rows; count each key's live claims again and
#: take the picked jobs that fit (the rest stay unclaimed: a concurrent claim took the slots).
#:
#: The pick's work must not grow with the backlog, whatever the table's statistics, so no plan
#: of it may rest on an estimate of how many jobs are ready. The loop reads the ready jobs a
#: pass at a time, ``LIMIT (SELECT p_n)`` (a value the planner cannot read: it plans to read a
#: tenth of the matches, so walking ``jobs_ready`` in claim order is cheapest), each pass going
#: on past the last job seen (``j.priority <= v_priority``, an index bound, where an ``IS NULL
#: OR`` left generic plans nothing to bound), until it has ``p_n`` jobs or a pass ends short.
#: Bitmap scans are off in the function (its own setting, restored on return): guessing from
#: no statistics that a job or two were ready, the planner fetched every ready job through
#: the bitmap and sorted them, reckoning that cheaper than the walk (3,000 rows read for 64);
#: the other statements read by primary key or small indexes, which plain index scans serve.
#: Before schema version 9 the loop had no limit: 11 ms a claim of 64 at 30,000 ready jobs,
#: with no statistics or (generic plans, after five calls) with them, not 3.
CLAIM_LIMITED = f"""CREATE OR REPLACE FUNCTION {{s}}.claim_limited(
    p_ns text, p_owner text, p_lease float8, p_n integer, p_one text)
RETURNS SETOF {{s}}.jobs LANGUAGE plpgsql VOLATILE SET enable_bitmapscan = off AS $fn$
DECLARE
    v_now float8 := {_NOW};
    v_free jsonb;
    v_full text[];
    v_picked bigint[] := '{{}}';
    v_row record;
    v_priority integer := 2147483647;
    v_seq bigint := 0;
    v_refill boolean;
    v_read integer;
    v_key text;
BEGIN
    IF p_one IS NOT NULL THEN
        SELECT j.seq INTO v_seq FROM {{s}}.jobs AS j
            WHERE j.namespace = p_ns AND j.id = p_one AND {_CLAIMABLE} FOR UPDATE OF j;
        IF FOUND THEN
            v_picked := ARRAY[v_seq];
        END IF;
    ELSE
        SELECT coalesce(jsonb_object_agg(l.limit_key,
                l.max_claims - {live("p_ns", "l.limit_key", "v_now")}), '{{}}')
            INTO v_free FROM {{s}}.limits AS l
            WHERE l.namespace = p_ns AND l.max_claims IS NOT NULL;
        SELECT coalesce(array_agg(e.key), '{{}}') INTO v_full
            FROM jsonb_each_text(v_free) AS e WHERE e.value::integer <= 0;
        <<pick>>
        LOOP
            v_refill := false;
            v_read := 0;
            FOR v_row IN SELECT j.seq, j.priority, j.limit_key FROM {{s}}.jobs AS j
                WHERE j.namespace = p_ns AND {_CLAIMABLE}
                    AND (j.limit_key IS NULL OR j.limit_key <> ALL (v_full))
                    AND j.priority <= v_priority AND (j.priority < v_priority OR j.seq > v_seq)
                ORDER BY j.priority DESC, j.seq
                LIMIT (SELECT p_n)
            LOOP
                v_read := v_read + 1;
                v_priority := v_row.priority;
                v_seq := v_row.seq;
                PERFORM FROM {{s}}.jobs AS j WHERE j.seq = v_row.seq AND {_CLAIMABLE}
                    FOR UPDATE OF j SKIP LOCKED;
                CONTINUE WHEN NOT FOUND;
                v_picked := v_picked || v_row.seq;
                IF v_row.limit_key IS NOT NULL AND v_free ? v_row.limit_key THEN
                    v_free := jsonb_set(v_free, ARRAY[v_row.limit_key],
                        to_jsonb((v_free ->> v_row.limit_key)::integer - 1));
                    IF (v_free ->> v_row.limit_key)::integer <= 0 THEN
                        v_full := v_full || v_row.limit_key;
                        v_refill := true;
                    END IF;
                END IF;
                EXIT WHEN cardinality(v_picked) >= p_n OR v_refill;
            END LOOP;
            EXIT pick WHEN cardinality(v_picked) >= p_n OR NOT (v_refill OR v_read >= p_n);
        END LOOP;
    END IF;
    FOR v_key IN SELECT DISTINCT j.limit_key FROM {{s}}.jobs AS j
        WHERE j.seq = ANY (v_picked) AND j.limit_key IS NOT NULL ORDER BY 1
    LOOP
        PERFORM {{s}}.lock_limit(p_ns, v_key);
    END LOOP;
    RETURN QUERY WITH c AS (SELECT {_NOW} AS now),
        ranked AS (SELECT j.seq, j.limit_key, row_number() OVER (
                PARTITION BY j.limit_key ORDER BY j.priority DESC, j.seq) AS rank
            FROM {{s}}.jobs AS j WHERE j.seq = ANY (v_picked)),
        free AS (SELECT l.limit_key, l.max_claims - {live("p_ns", "l.limit_key", "c.now")} AS slots
            FROM {{s}}.limits AS l, c WHERE l.namespace = p_ns AND l.max_claims IS NOT NULL
                AND l.limit_key IN (SELECT r.limit_key FROM ranked AS r)),
        fits AS (SELECT r.seq FROM ranked AS r LEFT JOIN free AS f ON f.limit_key = r.limit_key
            WHERE f.limit_key IS NULL OR r.rank <= f.slots)
    UPDATE {{s}}.jobs AS t SET attempts = t.attempts + 1, token = t.token + 1,
        state = 'CLAIMED', owner = p_owner, expires_at = c.now + p_lease,
        ready_at = c.now + p_lease, updated_at = c.now
    FROM c, fits WHERE t.seq = fits.seq
    RETURNING t.*;
END $fn$"""

#: Renew the claim (``p_id``, ``p_owner``, ``p_token``) for ``p_lease`` seconds. With the job's
#: row, the gate and the key's row locked, and only then the clock read: a live lease is
#: renewed; one that ran out re-takes its key's slot, so it renews only if the key has a slot
#: besides it. Nothing if the claim is not current or the key is full.
RENEW_LIMITED_FUNCTION = f"""CREATE OR REPLACE FUNCTION {{s}}.renew_limited(
    p_ns text, p_id text, p_owner text, p_token bigint, p_lease float8)
RETURNS SETOF {{s}}.jobs LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_key text;
BEGIN
    SELECT j.limit_key INTO v_key FROM {{s}}.jobs AS j
        WHERE j.namespace = p_ns AND j.id = p_id AND j.state = 'CLAIMED'
            AND j.owner = p_owner AND j.token = p_token
        FOR UPDATE OF j;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_key IS NOT NULL THEN
        PERFORM {{s}}.lock_limit(p_ns, v_key);
    END IF;
    RETURN QUERY WITH c AS (SELECT {_NOW} AS now)
    UPDATE {{s}}.jobs AS t SET expires_at = c.now + p_lease, ready_at = c.now + p_lease,
        updated_at = c.now
    FROM c WHERE t.namespace = p_ns AND t.id = p_id
        AND (t.limit_key IS NULL OR t.expires_at > c.now OR NOT EXISTS (
            SELECT FROM {{s}}.limits AS l WHERE l.namespace = p_ns
                AND l.limit_key = t.limit_key
                AND l.max_claims <= {live("p_ns", "t.limit_key", "c.now")}))
    RETURNING t.*;
END $fn$"""

#: The functions, made (or replaced) by the schema's migrations to versions 6 and 7 (and
#: ``claim_limited`` by version 9).
FUNCTIONS = [LOCK_LIMIT, CLAIM_LIMITED, RENEW_LIMITED_FUNCTION, SET_LIMIT_FUNCTION]

#: A limited claim of one job: $2 its id, $3 the owner, $4 the lease.
CLAIM_ONE = f"SELECT {JOB_COLUMNS} FROM {{s}}.claim_limited($1, $3, $4::float8, 1, $2)"

#: $2 id, $3 reason, $4 the channel. An UNCLAIMED or SCHEDULED job ends COMPLETE/CANCELLED with
#: its claim cleared; a CLAIMED one (live or expired lease) is flagged only, and its owner told
#: on commit. A job flagged already, or final, is not touched (no row: the caller reads it).
#: Every SET expression reads the row as it was, so ``state = 'CLAIMED'`` is the old state.
CANCEL = f"""WITH c AS (SELECT {_NOW} AS now),
    j AS (UPDATE {{s}}.jobs SET cancel_reason = $3, updated_at = c.now,
            state = CASE WHEN state = 'CLAIMED' THEN state ELSE 'COMPLETE' END,
            outcome = CASE WHEN state = 'CLAIMED' THEN outcome ELSE 'CANCELLED' END,
            result = CASE WHEN state = 'CLAIMED' THEN result ELSE '{{}}'::json END,
            owner = CASE WHEN state = 'CLAIMED' THEN owner END,
            expires_at = CASE WHEN state = 'CLAIMED' THEN expires_at END,
            ready_at = CASE WHEN state = 'CLAIMED' THEN ready_at END
        FROM c WHERE namespace = $1 AND id = $2 AND cancel_reason IS NULL
            AND state IN ('UNCLAIMED', 'SCHEDULED', 'CLAIMED')
        RETURNING {JOB_COLUMNS}),
    n AS (SELECT pg_notify($4, 'cancel ' || j.priority || ' ' || j.id) FROM j
        WHERE j.state = 'CLAIMED')
    SELECT {JOB_COLUMNS}, (SELECT count(*) FROM n) FROM j"""

#: $2 key, $3 the limit (NULL removes it, and the key's row). Waits for the limited claims
#: under way (the gate), so the next claim counts their jobs.
SET_LIMIT = "SELECT {s}.set_limit($1, $2, $3::integer)"

#: Every limit of the namespace with its key's live claims.
LIMITS = f"""WITH c AS (SELECT {_NOW} AS now)
    SELECT l.limit_key, l.max_claims, {live("$1", "l.limit_key", "c.now")}
    FROM {{s}}.limits AS l, c WHERE l.namespace = $1 AND l.max_claims IS NOT NULL"""
