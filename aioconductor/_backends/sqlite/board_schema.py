"""The SQL of the SQLite board: its schema and the statements its transitions share.

Schema (``aioc_schema`` records its version, component ``board``):

- ``jobs``: a row per job. ``seq`` (the INTEGER PRIMARY KEY, AUTOINCREMENT so never reused) is
  the post order. ``ready_at`` is when the job is claimable from: its post (or abandon) time
  when UNCLAIMED, ``not_before`` when SCHEDULED, the lease's ``expires_at`` when CLAIMED, NULL
  once final. A job is claimable when ``ready_at`` is set and it is UNCLAIMED or ``ready_at`` has
  passed. ``rev`` is the namespace's change counter at the job's last write. ``retry`` (the
  policy) and ``failures`` (the latest retried runs') are JSON text. ``job_key`` is the
  idempotency key (``Job.key``), unique per namespace when set. ``cancel_reason`` is set once,
  by ``cancel``; ``cancel_rev`` is the change counter when a CLAIMED job was flagged (what a
  sweep tells its owner of). ``limit_key`` is the concurrency limit the job counts against.
- ``job_limits``: each namespace's concurrency limits, by key (``max_claims``).
- ``board_revs``: the change counter of each namespace, bumped by every write to a job (a
  purge's deletes included).
- ``conductors``: live conductors, by namespace and owner.
- ``schedule_ticks``: each schedule's last posted tick, by namespace and schedule name. Apart
  from the jobs, so a purge never takes it (a purged tick's job is never posted again).
- Indexes of ``jobs``: besides those of claims, sweeps and limits, ``jobs_order`` and
  ``jobs_state`` (iterjobs, claim order), ``jobs_ended`` (purge, ended_counts) and the search
  indexes of version 7 (``jobs_seq``, ``jobs_flow``, ``jobs_state_seq``, ``jobs_outcome``).

Named parameters: ``:ns`` the namespace, ``:now`` the board time, ``:id`` a job id, ``:owner``
and ``:token`` a claim, ``:expires`` a new lease's end, ``:reason`` a cancel's reason.
"""

from __future__ import annotations

from aioconductor._backends.sqlite.migrations import Migrations
from aioconductor.boards._support import JOB_COLUMNS
from aioconductor.models import MAX_KEPT_FAILURES
from aioconductor.models import JobState
from aioconductor.models import NotificationKind

#: The finished states, as a condition on a row (the ``jobs_ended`` index holds these rows).
FINAL = "state IN ('COMPLETE', 'TRASHED')"
#: A claimed job with a limit key, live lease or not (the ``jobs_limited`` index holds these).
HOLDS_SLOT = "state = 'CLAIMED' AND limit_key IS NOT NULL"

SCHEMA: Migrations = [
    [
        """CREATE TABLE IF NOT EXISTS jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            namespace TEXT NOT NULL,
            id TEXT NOT NULL,
            name TEXT NOT NULL,
            flow TEXT NOT NULL,
            args TEXT NOT NULL,
            priority INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            not_before REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            token INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL,
            owner TEXT,
            expires_at REAL,
            outcome TEXT,
            result TEXT,
            trash_reason TEXT,
            ready_at REAL,
            rev INTEGER NOT NULL,
            UNIQUE (namespace, id)
        )""",
        # claim_next: the best claimable job, without wading through finished ones.
        """CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (namespace, priority DESC, seq)
            WHERE ready_at IS NOT NULL""",
        # Sweeps: delays and leases that came due in a window.
        """CREATE INDEX IF NOT EXISTS jobs_due ON jobs (namespace, ready_at)
            WHERE ready_at IS NOT NULL""",
        # Sweeps: jobs written since a cursor.
        "CREATE INDEX IF NOT EXISTS jobs_rev ON jobs (namespace, rev)",
        # iterjobs, page by page.
        "CREATE INDEX IF NOT EXISTS jobs_order ON jobs (namespace, priority DESC, seq)",
        # job_count and iterjobs by state.
        "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (namespace, state, priority DESC, seq)",
        """CREATE TABLE IF NOT EXISTS board_revs (
            namespace TEXT PRIMARY KEY,
            rev INTEGER NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS conductors (
            namespace TEXT NOT NULL,
            owner TEXT NOT NULL,
            name TEXT NOT NULL,
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            meta TEXT NOT NULL,
            PRIMARY KEY (namespace, owner)
        )""",
    ],
    # 2: headers, metadata carried with a job (a trace context), not given to its flow.
    ["ALTER TABLE jobs ADD COLUMN headers TEXT NOT NULL DEFAULT '{}'"],
    # 3: how runs ended (releases, abandons, retries), the retry policy (JSON, or NULL) and
    # the latest retried runs' failures (a JSON list).
    [
        "ALTER TABLE jobs ADD COLUMN releases INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN abandons INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN retry TEXT",
        "ALTER TABLE jobs ADD COLUMN failures TEXT NOT NULL DEFAULT '[]'",
    ],
    # 4: the idempotency key (NULL for none), unique per namespace among the jobs on the board,
    # and the finished jobs in the order they ended, for purge. Jobs finished before this step
    # are in that index too: their ``updated_at`` is when they ended.
    [
        "ALTER TABLE jobs ADD COLUMN job_key TEXT",
        """CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON jobs (namespace, job_key)
            WHERE job_key IS NOT NULL""",
        f"""CREATE INDEX IF NOT EXISTS jobs_ended ON jobs (namespace, state, updated_at)
            WHERE {FINAL}""",
    ],
    # 5: each schedule's last posted tick (epoch seconds), per namespace.
    [
        """CREATE TABLE IF NOT EXISTS schedule_ticks (
            namespace TEXT NOT NULL,
            name TEXT NOT NULL,
            last_tick REAL NOT NULL,
            PRIMARY KEY (namespace, name)
        ) WITHOUT ROWID""",
    ],
    # 6: cancel and concurrency limits. ``cancel_reason`` (set once, by ``cancel``) and
    # ``cancel_rev`` (the change counter when a CLAIMED job was flagged, for sweeps), the job's
    # ``limit_key``, the live claims of each key (``jobs_limited``: only claimed jobs with a
    # key, so a board without limits keeps no entry there) and the limits themselves.
    [
        "ALTER TABLE jobs ADD COLUMN cancel_reason TEXT",
        "ALTER TABLE jobs ADD COLUMN cancel_rev INTEGER",
        "ALTER TABLE jobs ADD COLUMN limit_key TEXT",
        f"""CREATE INDEX IF NOT EXISTS jobs_limited ON jobs (namespace, limit_key, expires_at)
            WHERE {HOLDS_SLOT}""",
        """CREATE TABLE IF NOT EXISTS job_limits (
            namespace TEXT NOT NULL,
            limit_key TEXT NOT NULL,
            max_claims INTEGER NOT NULL,
            PRIMARY KEY (namespace, limit_key)
        ) WITHOUT ROWID""",
    ],
    # 7: search (see ``searching``): the jobs newest first (``seq`` is the rowid, so this is
    # the namespace in post order), and by flow, by state (stored state; ``jobs_state`` is in
    # claim order) and by outcome (finished jobs only), each in post order, so a page is one
    # short walk down an index. ``jobs_ended`` takes the outcome too, so ``ended_counts`` reads
    # the index alone (after ``seq``: ``purge`` walks it in (updated_at, seq) order as before).
    [
        "CREATE INDEX IF NOT EXISTS jobs_seq ON jobs (namespace, seq)",
        "CREATE INDEX IF NOT EXISTS jobs_flow ON jobs (namespace, flow, seq)",
        "CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs (namespace, state, seq)",
        """CREATE INDEX IF NOT EXISTS jobs_outcome ON jobs (namespace, outcome, seq)
            WHERE outcome IS NOT NULL""",
        "DROP INDEX IF EXISTS jobs_ended",
        f"""CREATE INDEX jobs_ended ON jobs (namespace, state, updated_at, seq, outcome)
            WHERE {FINAL}""",
    ],
]

#: Every column a ``Job`` is built from, then ``rev``.
COLUMNS = f"{JOB_COLUMNS}, rev"
#: Claimable now: UNCLAIMED, or SCHEDULED or CLAIMED with ``ready_at`` (not_before or the
#: lease's end) passed. Finished jobs have no ``ready_at``.
CLAIMABLE = "ready_at IS NOT NULL AND (state = 'UNCLAIMED' OR ready_at <= :now)"
#: The namespace's change counter after this write; ``BUMP`` then moves the counter there.
NEXT_REV = "(SELECT rev + 1 FROM board_revs WHERE namespace = :ns)"
BUMP = "UPDATE board_revs SET rev = rev + 1 WHERE namespace = :ns"
REV = "SELECT rev FROM board_revs WHERE namespace = :ns"
ADD_NAMESPACE = "INSERT OR IGNORE INTO board_revs (namespace, rev) VALUES (:ns, 0)"

FETCH = f"SELECT {COLUMNS} FROM jobs WHERE namespace = :ns AND id = :id"
# A post whose ``:key`` a job of the namespace holds inserts nothing and returns no row (the
# unique index decides, under the transaction's write lock); a NULL key never conflicts.
POST = f"""INSERT INTO jobs (namespace, id, name, flow, args, priority, created_at, updated_at,
        not_before, max_attempts, state, ready_at, rev, headers, retry, job_key, limit_key)
    VALUES (:ns, :id, :name, :flow, :args, :priority, :now, :now, :not_before,
        :max_attempts, :state, :ready_at, {NEXT_REV}, :headers, :retry, :key, :limit_key)
    ON CONFLICT (namespace, job_key) WHERE job_key IS NOT NULL DO NOTHING
    RETURNING seq, rev"""
BY_KEY = f"SELECT {COLUMNS} FROM jobs WHERE namespace = :ns AND job_key = :key"
# Moves :schedule's last tick forward to :tick; a row comes back only if it moved (a tick at or
# before the last one updates nothing and returns nothing).
ADVANCE_TICK = """INSERT INTO schedule_ticks (namespace, name, last_tick)
    VALUES (:ns, :schedule, :tick)
    ON CONFLICT (namespace, name) DO UPDATE SET last_tick = excluded.last_tick
        WHERE last_tick < excluded.last_tick
    RETURNING last_tick"""
TICKS = "SELECT name, last_tick FROM schedule_ticks WHERE namespace = :ns"


def live_claims(key: str) -> str:
    """How many jobs of the namespace with limit key ``key`` (an SQL expression, qualified by
    its table: a bare ``limit_key`` would name the counted job's) hold a live claim at
    ``:now``: a range of the ``jobs_limited`` index, as long as the key's limit."""
    return f"""(SELECT COUNT(*) FROM jobs AS held INDEXED BY jobs_limited
        WHERE held.namespace = :ns AND held.limit_key = {key}
            AND held.state = 'CLAIMED' AND held.limit_key IS NOT NULL
            AND held.expires_at > :now)"""


#: The limit keys of the namespace with no slot left at ``:now``. Nothing in it refers to an
#: outer row, so SQLite runs it once per statement (an empty read when no limit is set).
FULL_KEYS = f"""SELECT lim.limit_key FROM job_limits AS lim
    WHERE lim.namespace = :ns AND lim.max_claims <= {live_claims("lim.limit_key")}"""
#: The row's limit key has a slot for it. A claim's own lapsed lease is not live, so a job is
#: never counted against itself.
HAS_SLOT = f"(limit_key IS NULL OR limit_key NOT IN ({FULL_KEYS}))"
#: The same for a statement that writes one job by id: only its own key is counted (however
#: many keys the namespace limits).
OWN_SLOT = f"""(limit_key IS NULL OR NOT EXISTS (SELECT 1 FROM job_limits AS lim
    WHERE lim.namespace = :ns AND lim.limit_key = jobs.limit_key
        AND lim.max_claims <= {live_claims("lim.limit_key")}))"""

TAKE = f"""UPDATE jobs SET attempts = attempts + 1, token = token + 1, state = 'CLAIMED',
    owner = :owner, expires_at = :expires, ready_at = :expires, updated_at = :now,
    rev = {NEXT_REV}"""
CLAIM = f"""{TAKE} WHERE namespace = :ns AND id = :id AND {CLAIMABLE} AND {OWN_SLOT}
    RETURNING {COLUMNS}"""
# One statement picks and takes the job, so nobody can take it in between. The partial index
# holds only unfinished jobs; without INDEXED BY the planner may take jobs_order (same columns)
# and wade through every finished job.
CLAIM_NEXT = f"""{TAKE} WHERE seq = (
        SELECT seq FROM jobs INDEXED BY jobs_ready
        WHERE namespace = :ns AND {CLAIMABLE} AND {HAS_SLOT}
        ORDER BY priority DESC, seq LIMIT 1)
    RETURNING {COLUMNS}"""

# The same for up to :limit jobs, on a namespace without limits (see ``limiting``). SQLite runs
# the subquery before the UPDATE writes a row.
CLAIM_BATCH = f"""{TAKE} WHERE seq IN (
        SELECT seq FROM jobs INDEXED BY jobs_ready
        WHERE namespace = :ns AND {CLAIMABLE}
        ORDER BY priority DESC, seq LIMIT :limit)
    RETURNING {COLUMNS}"""


def update_current(sets: str, where: str = "1") -> str:
    """An UPDATE applying ``sets`` to the job if the claim (``:owner``, ``:token``) is current
    (and ``where`` holds)."""
    return f"""UPDATE jobs SET {sets}, updated_at = :now, rev = {NEXT_REV}
        WHERE namespace = :ns AND id = :id AND state = 'CLAIMED'
            AND owner = :owner AND token = :token AND {where}
        RETURNING {COLUMNS}"""


# A lapsed lease re-takes its slot: refused while the key is full without it.
RENEW = update_current(
    "expires_at = :expires, ready_at = :expires", f"(expires_at > :now OR {OWN_SLOT})"
)
CONSUME = update_current(
    "state = 'COMPLETE', outcome = :outcome, result = :result, ready_at = NULL"
)
_GIVE_BACK = "state = 'UNCLAIMED', owner = NULL, expires_at = NULL, ready_at = :now"
ABANDON = update_current(f"{_GIVE_BACK}, abandons = abandons + 1")
# Every right-hand side sees the row as it was before the UPDATE, so the three counters test
# the same ``releases``. A comparison is 0 or 1 in SQLite.
RELEASE = update_current(
    f"""{_GIVE_BACK},
    attempts = attempts - (releases < max_attempts),
    releases = releases + (releases < max_attempts),
    abandons = abandons + (releases >= max_attempts)"""
)
# ``:failure`` (JSON text, or NULL for none) joins the list, whose oldest entry makes room once
# it holds MAX_KEPT_FAILURES: in the UPDATE itself, so the step stays one statement.
_FAILURES = f"""failures = CASE WHEN :failure IS NULL THEN failures ELSE json_insert(
        CASE WHEN json_array_length(failures) < {MAX_KEPT_FAILURES} THEN failures
            ELSE json_remove(failures, '$[0]') END,
        '$[#]', json(:failure)) END"""
RETRY = update_current(
    f"""state = 'SCHEDULED', owner = NULL, expires_at = NULL,
    not_before = :now + :delay, ready_at = :now + :delay,
    attempts = attempts - 1, retries = retries + 1, {_FAILURES}""",
    "cancel_reason IS NULL",
)
#: ``retry`` of a flagged job: it ends CANCELLED (its claim kept, as ``consume`` keeps it).
RETRY_CANCELLED = update_current(
    f"state = 'COMPLETE', outcome = 'CANCELLED', result = '{{}}', ready_at = NULL, {_FAILURES}",
    "cancel_reason IS NOT NULL",
)
_TRASHED = "state = 'TRASHED', trash_reason = :reason, ready_at = NULL"
TRASH = update_current(_TRASHED)
TRASH_BY_ID = f"""UPDATE jobs SET {_TRASHED}, updated_at = :now, rev = {NEXT_REV}
    WHERE namespace = :ns AND id = :id AND state NOT IN ('COMPLETE', 'TRASHED')
    RETURNING {COLUMNS}"""

# cancel: a job nobody runs ends at once; a CLAIMED one is flagged, with the change counter
# of the flag kept in ``cancel_rev`` so that sweeps tell its owner once (a renew writes the row
# again, the flag stays where it was). A flagged or final job matches neither.
_NOT_FLAGGED = "namespace = :ns AND id = :id AND cancel_reason IS NULL"
CANCEL_WAITING = f"""UPDATE jobs SET state = 'COMPLETE', outcome = 'CANCELLED', result = '{{}}',
        cancel_reason = :reason, owner = NULL, expires_at = NULL, ready_at = NULL,
        updated_at = :now, rev = {NEXT_REV}
    WHERE {_NOT_FLAGGED} AND state IN ('UNCLAIMED', 'SCHEDULED')
    RETURNING {COLUMNS}"""
FLAG = f"""UPDATE jobs SET cancel_reason = :reason, cancel_rev = {NEXT_REV},
        updated_at = :now, rev = {NEXT_REV}
    WHERE {_NOT_FLAGGED} AND state = 'CLAIMED'
    RETURNING {COLUMNS}"""

# The finished jobs of one :state that ended at or before :cutoff, oldest first. FINAL is
# spelled out so that the partial index applies (SQLite matches its terms, it does not infer
# them from ``state = :state``); INDEXED BY, so the planner never sorts every finished job.
PURGEABLE = f"""SELECT updated_at, seq, id FROM jobs INDEXED BY jobs_ended
    WHERE namespace = :ns AND {FINAL} AND state = :state AND updated_at <= :cutoff
    ORDER BY updated_at, seq LIMIT :limit"""
# :ids is a JSON array (one parameter, however long the batch). Unfinished jobs stay. CROSS
# JOIN makes SQLite look each id up by (namespace, id); asked for ``id IN (...)`` it would walk
# every finished job of the namespace on jobs_ended. (json_each has an ``id`` column too.)
PURGE = f"""DELETE FROM jobs WHERE seq IN (
        SELECT jobs.seq FROM json_each(:ids) AS wanted CROSS JOIN jobs
        WHERE jobs.namespace = :ns AND jobs.id = wanted.value AND {FINAL})
    RETURNING seq"""

#: Which rows ``iterjobs`` and ``job_count`` take for a state, as readers see states (a
#: SCHEDULED job whose time came counts as UNCLAIMED), and the index that lists them in order
#: without reading finished jobs.
_STATE_FILTERS: dict[JobState | None, tuple[str, str]] = {
    None: ("", "1"),
    JobState.UNCLAIMED: (
        "INDEXED BY jobs_ready",
        "ready_at IS NOT NULL AND state IN ('UNCLAIMED', 'SCHEDULED')"
        " AND (state = 'UNCLAIMED' OR not_before IS NULL OR not_before <= :now)",
    ),
    JobState.SCHEDULED: ("", "state = 'SCHEDULED' AND not_before > :now"),
}


def state_where(state: JobState | None) -> str:
    """The condition on a row for jobs in ``state`` as readers see it (``:now``; ``:state``
    the state's name for the states that need it)."""
    return _STATE_FILTERS.get(state, ("", "state = :state"))[1]


def page(state: JobState | None) -> str:
    """A page of ``iterjobs``: the jobs in ``state`` after (``:p``, ``:s``) in claim order."""
    index, where = _STATE_FILTERS.get(state, ("", "state = :state"))
    return f"""SELECT {COLUMNS} FROM jobs {index}
        WHERE namespace = :ns AND {where} AND (priority < :p OR (priority = :p AND seq > :s))
        ORDER BY priority DESC, seq LIMIT :limit"""


def count(state: JobState | None) -> str:
    """How many jobs are in ``state``, as ``iterjobs`` would list them."""
    return f"SELECT COUNT(*) FROM jobs WHERE namespace = :ns AND {state_where(state)}"


#: The write ended a limited claim: consumed, trashed or cancelled with its claim on the row,
#: or retried (a job given back is claimable, so announced already).
_FREED = f"""limit_key IS NOT NULL
    AND ({FINAL} AND owner IS NOT NULL OR state = 'SCHEDULED' AND token > 0)"""
#: What a sweep reads of a job: (id, priority, state, token, rev, seq, claimable now,
#: cancel_rev, whether its last write freed a slot).
_NOTE = f"SELECT id, priority, state, token, rev, seq, {CLAIMABLE}, cancel_rev, {_FREED} FROM jobs"
#: Every job claimable now, in claim order.
SWEEP_ALL = f"""{_NOTE} INDEXED BY jobs_ready WHERE namespace = :ns AND {CLAIMABLE}
    ORDER BY priority DESC, seq"""
#: A write since ``:rev`` that a sweep tells of though it made no job claimable: a CLAIMED job
#: flagged (``CANCEL``, to its owner), or the end of a limited claim (``SLOT_FREED``).
_TOLD = f"(cancel_rev > :rev AND state = 'CLAIMED' OR {_FREED})"
#: Jobs claimable now that were written since the cursor's ``:rev`` (posts and abandons), or
#: told of (above), or whose delay or lease ended in its window (``:since``, ``:now``].
SWEEP_SINCE = f"""{_NOTE} WHERE namespace = :ns AND rev > :rev AND ({CLAIMABLE} OR {_TOLD})
    UNION
    {_NOTE} WHERE namespace = :ns AND ready_at > :since AND ready_at <= :now
        AND state != 'UNCLAIMED'
    ORDER BY priority DESC, seq"""


def sweep_kind(state: str, token: int) -> NotificationKind:
    """Why a job ``SWEEP_SINCE`` found became claimable, from its row's state and token."""
    if state == JobState.SCHEDULED:
        return NotificationKind.DUE
    if state == JobState.CLAIMED:
        return NotificationKind.EXPIRED
    # From the token, not attempts: a released job gave its attempt back, yet was claimed.
    return NotificationKind.ABANDONED if token else NotificationKind.POSTED


#: When the next delay or lease ends.
NEXT_DUE = """SELECT MIN(ready_at) FROM jobs
    WHERE namespace = :ns AND ready_at > :now AND state != 'UNCLAIMED'"""

REGISTER = """INSERT INTO conductors
        (namespace, owner, name, started_at, heartbeat_at, expires_at, meta)
    VALUES (:ns, :owner, :name, :now, :now, :expires, :meta)
    ON CONFLICT (namespace, owner) DO UPDATE SET name = excluded.name,
        heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at,
        meta = excluded.meta"""
UNREGISTER = "DELETE FROM conductors WHERE namespace = :ns AND owner = :owner"
ALIVE = """SELECT owner, name, started_at, heartbeat_at, expires_at, meta FROM conductors
    WHERE namespace = :ns AND expires_at > :now"""
