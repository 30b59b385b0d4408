"""The migrations of the PostgreSQL board's schema, one list of statements a version.

``{s}`` stands for the quoted schema. Each version only adds (columns with constant defaults or
NULL, indexes, tables, functions), so a migration never rewrites the jobs table and a job
written by an older version reads as new.
"""

from __future__ import annotations

from aioconductor._backends.postgres.limits_sql import CLAIM_LIMITED
from aioconductor._backends.postgres.limits_sql import FUNCTIONS
from aioconductor._backends.postgres.schema import Migrations

__all__ = ["MIGRATIONS"]

MIGRATIONS: Migrations = [
    [
        """CREATE TABLE IF NOT EXISTS {s}.jobs (
            seq bigserial PRIMARY KEY,
            namespace text NOT NULL,
            id text NOT NULL,
            name text NOT NULL,
            flow text NOT NULL,
            args json NOT NULL,
            priority integer NOT NULL,
            created_at float8 NOT NULL,
            updated_at float8 NOT NULL,
            not_before float8,
            attempts integer NOT NULL DEFAULT 0,
            max_attempts integer NOT NULL,
            token bigint NOT NULL DEFAULT 0,
            state text NOT NULL CHECK (state IN
                ('SCHEDULED', 'UNCLAIMED', 'CLAIMED', 'COMPLETE', 'TRASHED')),
            owner text,
            expires_at float8,
            outcome text,
            result json,
            trash_reason text,
            ready_at float8,
            UNIQUE (namespace, id)
        )""",
        # claim_next and full sweeps: the best claimable job without wading through finished
        # ones (ready_at is NULL once a job is final).
        """CREATE INDEX IF NOT EXISTS jobs_ready ON {s}.jobs (namespace, priority DESC, seq)
            WHERE ready_at IS NOT NULL""",
        # Sweeps: delays and leases that came due in a window.
        """CREATE INDEX IF NOT EXISTS jobs_due ON {s}.jobs (namespace, ready_at)
            WHERE ready_at IS NOT NULL AND state <> 'UNCLAIMED'""",
        # iterjobs (page by page) and job_count by state.
        "CREATE INDEX IF NOT EXISTS jobs_state ON {s}.jobs (namespace, state, priority DESC, seq)",
        """CREATE TABLE IF NOT EXISTS {s}.conductors (
            namespace text NOT NULL,
            owner text NOT NULL,
            name text NOT NULL,
            started_at float8 NOT NULL,
            heartbeat_at float8 NOT NULL,
            expires_at float8 NOT NULL,
            meta json NOT NULL,
            PRIMARY KEY (namespace, owner)
        )""",
    ],
    # 2: headers, metadata carried with a job (a trace context), not given to its flow.
    ["ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS headers json NOT NULL DEFAULT '{}'"],
    # 3: how runs ended (releases, abandons, retries), the retry policy (NULL for none) and the
    # latest retried runs' failures. Constant defaults: no table rewrite, old rows read as new.
    [
        """ALTER TABLE {s}.jobs
            ADD COLUMN IF NOT EXISTS releases integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS abandons integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS retries integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS retry json,
            ADD COLUMN IF NOT EXISTS failures json NOT NULL DEFAULT '[]'"""
    ],
    # 4: idempotency keys (NULL for none: old jobs hold no key) unique per namespace, and the
    # finished jobs in the order they ended, for purge (old finished jobs are indexed too).
    [
        "ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS job_key text",
        """CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON {s}.jobs (namespace, job_key)
            WHERE job_key IS NOT NULL""",
        """CREATE INDEX IF NOT EXISTS jobs_ended ON {s}.jobs (namespace, state, updated_at)
            WHERE state IN ('COMPLETE', 'TRASHED')""",
    ],
    # 5: each schedule's last posted tick, apart from the jobs (a purge never removes one).
    [
        """CREATE TABLE IF NOT EXISTS {s}.schedule_ticks (
            namespace text NOT NULL,
            name text NOT NULL,
            last_tick float8 NOT NULL,
            PRIMARY KEY (namespace, name)
        )"""
    ],
    # 6: cancels and concurrency limits. A job's cancel_reason (NULL: not cancelled) and limit
    # key (NULL: none); the limits of each namespace, a row a key (max_claims NULL: no limit;
    # version 6 kept such rows as keys' locks); the live claims of a key, counted by every
    # limited claim (partial: jobs without a key never enter it); and the functions of the
    # limited claims and renewals (made again by version 7).
    [
        """ALTER TABLE {s}.jobs
            ADD COLUMN IF NOT EXISTS cancel_reason text,
            ADD COLUMN IF NOT EXISTS limit_key text""",
        """CREATE INDEX IF NOT EXISTS jobs_limit_claims
            ON {s}.jobs (namespace, limit_key, expires_at)
            WHERE state = 'CLAIMED' AND limit_key IS NOT NULL""",
        """CREATE TABLE IF NOT EXISTS {s}.limits (
            namespace text NOT NULL,
            limit_key text NOT NULL,
            max_claims integer,
            PRIMARY KEY (namespace, limit_key)
        )""",
        *FUNCTIONS,
    ],
    # 7: limits rows only for keys with a limit (the namespace's limits gate, an advisory lock,
    # guards keys without one, see limits_sql): the rows version 6's claims left for keys
    # without a limit go, and the functions are replaced (claims and renewals take the gate;
    # set_limit takes it exclusive and deletes a removed limit's row). The jobs table is not
    # touched; NULL rows a version-6 process may still write read as no limit.
    [
        "DELETE FROM {s}.limits WHERE max_claims IS NULL",
        *FUNCTIONS,
    ],
    # 8: search (see ``searching``): the jobs newest first, and by flow, by stored state
    # (``jobs_state`` is in claim order) and by outcome (finished jobs only), each in post
    # order, so a page is one short walk down an index; ``jobs_ended`` takes the outcome along
    # (INCLUDE), so ``ended_counts`` may read the index alone. Built in the migration's
    # transaction (writes wait for the build: about 2 s per million jobs an index).
    [
        "CREATE INDEX IF NOT EXISTS jobs_seq ON {s}.jobs (namespace, seq)",
        "CREATE INDEX IF NOT EXISTS jobs_flow ON {s}.jobs (namespace, flow, seq)",
        "CREATE INDEX IF NOT EXISTS jobs_state_seq ON {s}.jobs (namespace, state, seq)",
        """CREATE INDEX IF NOT EXISTS jobs_outcome ON {s}.jobs (namespace, outcome, seq)
            WHERE outcome IS NOT NULL""",
        "DROP INDEX IF EXISTS {s}.jobs_ended",
        """CREATE INDEX jobs_ended ON {s}.jobs (namespace, state, updated_at) INCLUDE (outcome)
            WHERE state IN ('COMPLETE', 'TRASHED')""",
    ],
    # 9: claim_limited reads the ready jobs a pass of at most the claim's size at a time, in
    # claim order, so its plan no longer rests on how many jobs the planner thinks are ready
    # (see limits_sql). Same arguments, rows, locks and order: a version-8 process calls it as
    # before. Nothing else changes.
    [CLAIM_LIMITED],
]
