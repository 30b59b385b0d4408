"""Nox sessions: tests, lint, types, bench, chaos, retention, cancel, pages, docs."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "types", "tests"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The full test suite (needs Redis and PostgreSQL; skips them outside CI when missing)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check (ruff as pinned in the ``dev`` extra)."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", "aioconductor", "tests", "benchmarks")
    session.run("ruff", "format", "--check", "aioconductor", "tests", "benchmarks")


@nox.session
def types(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[dev]")
    session.run("mypy", "aioconductor")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark harness: aioconductor and its peers side by side (``-- --quick`` for a
    short run). Peers are installed by the harness into their own venvs, never here."""
    session.install("-e", ".[dev]")
    session.run("python", "benchmarks/engine_overhead.py")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def chaos(session: nox.Session) -> None:
    """The fault tests at the issue's scale: the chaos scenarios of ``tests/chaos`` (8 processes
    x 5,000 jobs, 20 SIGKILLs, 1,000 good jobs among poison ones, ...), killed conductor
    processes, poison jobs, cancellation at every await. Every ``pytest`` run includes the
    bounded version; this session runs the full one (``AIOCONDUCTOR_CHAOS_SCALE=full``) and
    prints each scenario's figures."""
    session.install("-e", ".[dev]")
    report = Path(session.create_tmp()) / "chaos-report.jsonl"
    report.unlink(missing_ok=True)
    env = {"AIOCONDUCTOR_CHAOS_SCALE": "full", "AIOCONDUCTOR_CHAOS_REPORT": str(report)}
    try:
        session.run(
            "pytest",
            "tests/chaos",
            "tests/test_security.py",
            "tests/test_conductor_processes.py",
            "tests/test_cancellation.py",
            "tests/boards/test_redis.py",
            *session.posargs,
            env=env,
        )
    finally:
        if report.exists():
            session.log(f"chaos figures ({report}):\n{report.read_text()}")


@nox.session
def retention(session: nox.Session) -> None:
    """The bounded-size run of retention: 200,000 jobs through the SQLite, Redis, PostgreSQL
    and Kafka boards with a 1-second retention, each board in a process of its own; fails if a
    board ever held more finished jobs than one retention window's plus one purge batch
    (``-- --jobs N`` for a shorter run)."""
    session.install("-e", ".[dev]")
    for backend in ("sqlite", "redis", "postgres", "kafka"):
        session.run("python", "-m", "benchmarks.retention", "--backends", backend, *session.posargs)


@nox.session
def cancel(session: nox.Session) -> None:
    """Cancel latency on every board: from ``board.cancel()`` to the flow stopped, and to the
    job consumed CANCELLED (p50/p99), 50 jobs each (``-- --jobs N`` to change)."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "benchmarks.cancel", *session.posargs)


@nox.session
def pages(session: nox.Session) -> None:
    """The dashboard's pages over 100,000 jobs on SQLite and PostgreSQL: each page a user opens
    (lists, filters, a deep page, a job, the API the pages poll) fetched over HTTP from the
    served dashboard, p50/p99 per page, a p99 of 200 ms or more flagged (``-- --profile`` also
    times each index page's board calls; ``-- --jobs N`` for a smaller board)."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "benchmarks.dashboard_pages", "--jobs", "100000", *session.posargs)


#: mkdocs-material prints a banner about its successor on every build; the build is what counts.
_QUIET_MKDOCS = {"NO_MKDOCS_2_WARNING": "1"}


@nox.session
def docs(session: nox.Session) -> None:
    """The docs' examples run as written, every page is linked from the index, and the site
    (mkdocs, material theme, API reference from the docstrings) builds with no warning."""
    session.install("-e", ".[dev,docs]")
    session.run("pytest", "tests/test_docs.py", *session.posargs)
    site = Path(session.create_tmp()) / "site"
    session.run("mkdocs", "build", "--strict", "--site-dir", str(site), env=_QUIET_MKDOCS)
    session.log(f"the site is in {site}")
