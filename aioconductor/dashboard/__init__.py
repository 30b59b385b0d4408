"""A web dashboard for a job board (``pip install 'aioconductor-taskflow[dashboard]'``).

Live counts by state, charts of the jobs finished per minute (by outcome) and of the jobs in
each state, the conductors alive with their load, the concurrency limits and the schedules;
the job list with a badge per outcome, filters (state, outcome, flow, name or key) kept in the
URL and keyset paging newest first; each job's page (args, headers, attempts, claim, outcome,
result, and the flow's task states in run order and failure tracebacks when a store is
given); and (only when enabled) actions to cancel, trash or re-post a job, or many at once.

Serve it from the command line::

    aioconductor dashboard --board sqlite:///jobs.db --store sqlite:///jobs.db --port 8080

or mount it in your own FastAPI / Starlette app::

    from aioconductor.dashboard import create_app

    app.mount("/jobs", create_app(board, store=store, allowed_hosts=["ops.example.com"]))

It answers only requests whose ``Host`` is the address they came in on (``localhost`` too on a
loopback address) or one of ``allowed_hosts``: a DNS-rebinding page gets 400.

Everything it renders is escaped: job names, args and results are untrusted. It loads nothing
from the internet (its script and stylesheet are served by the app itself).
"""

from __future__ import annotations

from aioconductor.dashboard.app import create_app

__all__ = ["create_app"]
