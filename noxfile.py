"""Nox sessions: tests, lint, types, bench, chaos, docs."""

from __future__ import annotations

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
    """ruff lint and format check."""
    session.install("ruff")
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
    """The fault tests: killed conductor processes, poison jobs, cancellation at every await."""
    session.install("-e", ".[dev]")
    session.run(
        "pytest",
        "tests/test_conductor_processes.py",
        "tests/test_cancellation.py",
        "tests/boards/test_redis.py",
        *session.posargs,
    )


@nox.session
def docs(session: nox.Session) -> None:
    """The docs' examples run as written and every page is linked from the index."""
    session.install("-e", ".[dev]")
    session.run("pytest", "tests/test_docs.py", *session.posargs)
