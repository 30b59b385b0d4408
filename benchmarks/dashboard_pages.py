"""The dashboard's pages over a big board, as a browser gets them: HTTP GET times per page.

``python -m benchmarks.dashboard_pages [--jobs 100000] [--backends sqlite,postgres] [--runs 20]
[--keep DIR]``. Each board is filled as ``benchmarks/search.py`` fills it (the same mixed jobs:
four flows, a third keyed, 68 % SUCCESS ... 4.3 % SCHEDULED; ANALYZE on PostgreSQL), then served
by the real ``aioconductor dashboard`` command (uvicorn, a process of its own, a free loopback
port, actions off, no store) and every page a user opens is fetched with httpx ``--runs`` times
after 2 warm-ups (p50 and p99 in ms): the index page (first page; a deep page in the middle of
the board, its URL the one the "older" links lead to; filtered by each state, by outcome
FAILURE, by flow ``audits``, by text common / rare / none, and by a combined filter), a finished
job's page and its JSON, a missing job's page, ``/api/summary`` (what an open index page polls
every second, for the first page and the deep one), ``/api/count`` (the bulk confirmation's
count, with no filter and with a text filter) and the static script and style sheet. Every GET
route of ``aioconductor/dashboard/app.py`` is there; its POST routes (actions) are not timed.

Each index page and ``/api/summary`` make the same board calls (``_Dashboard.summary``): a
``job_count`` per state, every CLAIMED job read (``iterjobs``) for the conductors' live claims,
``conductors`` (twice), ``search`` and ``search_count`` of the filter, ``ended_counts`` of the
last hour, ``schedule_ticks`` and ``limits``. With ``--profile`` those calls are also timed one
by one, in this process, for each index page (the board's share of the page).

Prints one JSON line per board, then a markdown table (page | p50 / p99 per board); a page whose
p99 is 200 ms or more is flagged. ``--keep DIR`` keeps the SQLite board (``DIR/pages.db``) and
the PostgreSQL schema (named in ``DIR/postgres-schema``) and reuses them on the next run with
the same ``DIR`` instead of filling again (drop the schema by hand when done; the throughput
chart of a board filled over an hour ago is empty).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
import httpx

from aioconductor import open_board
from aioconductor.boards import JobBoard
from aioconductor.dashboard._views import PAGE_SIZE, ListQuery
from aioconductor.models import JobFilter, JobState
from benchmarks import services
from benchmarks.search import _ms, analyze, fill

BACKENDS = ("sqlite", "postgres")
#: A page at or over this p99 is flagged (the issue's bound).
BOUND_MS = 200.0
WARMUPS = 2


@contextlib.contextmanager
def kept_url(backend: str, keep: Path) -> Iterator[str]:
    """The board URL of ``backend`` kept in ``keep`` (created on first use, never dropped)."""
    keep.mkdir(parents=True, exist_ok=True)
    if backend == "sqlite":
        yield f"sqlite:///{keep / 'pages.db'}"
    elif backend == "postgres":
        named = keep / "postgres-schema"
        if not named.exists():
            named.write_text(f"aioc_pages_{os.urandom(5).hex()}\n")
        yield f"{services.POSTGRES_URL}?namespace=bench&schema={named.read_text().strip()}"
    else:
        raise SystemExit(f"unknown backend {backend!r} (this benchmark: {', '.join(BACKENDS)})")


def _path(params: dict[str, str]) -> str:
    return "/?" + urlencode(params) if params else "/"


def pages(deep: str, job_id: str) -> dict[str, str]:
    """The timed GETs: name -> path and query string."""
    found = {"first page": "/", "deep page (middle)": "/" + deep}
    for state in JobState:
        found[f"state {state.value}"] = _path({"state": state.value})
    found |= {
        "outcome FAILURE": _path({"outcome": "FAILURE"}),
        "flow audits": _path({"flow": "audits"}),
        "text common (orders)": _path({"text": "orders"}),
        "text rare (key-4242)": _path({"text": "key-4242"}),
        "text none (zzz)": _path({"text": "zzz"}),
        "flow audits + TRASHED": _path({"flow": "audits", "state": "TRASHED"}),
        "flow + outcome + text": _path({"flow": "orders", "outcome": "FAILURE", "text": "key"}),
        "job page (finished)": f"/jobs/{job_id}",
        "job page (missing, 404)": "/jobs/nope",
        "/api/jobs/{id}": f"/api/jobs/{job_id}",
        "/api/summary (poll, first page)": "/api/summary",
        "/api/summary (poll, deep page)": "/api/summary" + deep,
        "/api/count (no filter)": "/api/count",
        "/api/count (text key-4)": "/api/count?text=key-4",
        "/static/dashboard.js": "/static/dashboard.js",
        "/static/dashboard.css": "/static/dashboard.css",
    }
    return found


async def older_walk(board: JobBoard, pages: int) -> str:
    """The query string of the page ``pages`` "older" links from the newest, the keyset cursors
    of each page walked as the pages' own links carry them (``ListQuery.links``)."""
    query, before = ListQuery(), None
    for _ in range(pages):
        page = await board.search(JobFilter(), before=before, limit=PAGE_SIZE)
        older = query.links(page.next_before)["older"]
        if older is None:
            break
        query = ListQuery.parse(dict(parse_qsl(older[1:])))
        before = query.before
    return query.href(query.before, query.trail)


def follow_older(base: str, pages: int) -> str:
    """The same walk over HTTP: ``links.older`` of ``/api/summary``, ``pages`` times."""
    query = ""
    for _ in range(pages):
        summary = httpx.get(f"{base}/api/summary{query}", timeout=60).json()
        query = summary["links"]["older"]
    return query


async def prepare(backend: str, url: str, jobs: int) -> dict[str, Any]:
    """Fill the board unless it holds jobs already; what the pages need from it."""
    async with open_board(url) as board:
        filled = None
        if not await board.search_count():
            started = time.perf_counter()
            await fill(board, jobs)
            filled = round(time.perf_counter() - started, 1)
            if backend == "postgres":
                await analyze(board)
        done = await board.search(JobFilter(state=JobState.COMPLETE), limit=1)
        return {
            "jobs": await board.search_count(),
            "fill_s": filled,
            "job_id": done.jobs[0].id,
            # The middle of the board: about 1,000 pages down at 100,000 jobs.
            "deep": await older_walk(board, await board.search_count() // PAGE_SIZE // 2),
            "third": await older_walk(board, 3),
        }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def dashboard(url: str) -> Iterator[str]:
    """``aioconductor dashboard`` on ``url``'s board, served on a free loopback port; its base
    URL once it answers. Stopped (SIGINT, as Ctrl-C) afterwards."""
    port = _free_port()
    command = [sys.executable, "-m", "aioconductor.cli", "dashboard", "--board", url]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise SystemExit(f"the dashboard did not start:\n{log.read().decode()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "/static/dashboard.css", timeout=5).status_code == 200:
                    break
            time.sleep(0.2)
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def time_pages(base: str, wanted: dict[str, str], runs: int) -> dict[str, dict[str, Any]]:
    """GET each page ``WARMUPS`` + ``runs`` times in a row; p50/p99 ms, status and size."""
    figures: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=base, timeout=60) as client:
        for name, path in wanted.items():
            times: list[float] = []
            for i in range(WARMUPS + runs):
                started = time.perf_counter()
                response = client.get(path)
                took = time.perf_counter() - started
                expected = 404 if "missing" in name else 200
                if response.status_code != expected:
                    raise SystemExit(f"GET {path}: HTTP {response.status_code}")
                if i >= WARMUPS:
                    times.append(took)
            figures[name] = {**_ms(times), "kb": round(len(response.content) / 1024, 1)}
    return figures


async def profile(url: str, wanted: dict[str, str], runs: int) -> dict[str, dict[str, Any]]:
    """Each index page's board calls, timed one by one (p50 ms per call and their count)."""
    from aioconductor.dashboard import create_app

    async with open_board(url, migrate=False) as board:
        spent: dict[str, list[float]] = {}
        for verb in (
            "job_count",
            "conductors",
            "search",
            "search_count",
            "ended_counts",
            "schedule_ticks",
            "limits",
        ):
            original = getattr(board, verb)

            async def timed(*args: Any, _o: Any = original, _v: str = verb, **kw: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await _o(*args, **kw)
                finally:
                    spent.setdefault(_v, []).append(time.perf_counter() - started)

            setattr(board, verb, timed)
        iterjobs = board.iterjobs

        async def timed_iter(*args: Any, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                async for job in iterjobs(*args, **kw):
                    yield job
            finally:
                spent.setdefault("iterjobs CLAIMED", []).append(time.perf_counter() - started)

        board.iterjobs = timed_iter  # type: ignore[method-assign]
        app = create_app(board)
        found: dict[str, dict[str, Any]] = {}
        for name, path in wanted.items():
            parts = urlsplit(path)
            if parts.path != "/":
                continue
            query = ListQuery.parse(dict(parse_qsl(parts.query)))
            await app.state.dashboard.summary(query)
            totals: list[float] = []
            per_page: dict[str, list[float]] = {}
            counts: dict[str, int] = {}
            for _ in range(runs):
                spent.clear()
                started = time.perf_counter()
                await app.state.dashboard.summary(query)
                totals.append(time.perf_counter() - started)
                for verb, took in spent.items():
                    per_page.setdefault(verb, []).append(sum(took))
                    counts[verb] = len(took)
            found[name] = {"summary": _ms(totals)["p50"]} | {
                f"{verb} x{counts[verb]}": _ms(took)["p50"] for verb, took in per_page.items()
            }
    return found


def table(lines: list[dict[str, Any]]) -> str:
    """The markdown table of the JSON lines: page | p50 / p99 per board; ! flags p99 >= bound."""
    head = "| page | " + " | ".join(f"{f['backend']} p50 / p99 ms" for f in lines) + " |"
    rows = [head, "| --- |" + " ---: |" * len(lines)]
    for name in lines[0]["times_ms"]:
        cells = []
        for figures in lines:
            t = figures["times_ms"][name]
            flag = " **!**" if t["p99"] >= BOUND_MS else ""
            cells.append(f"{t['p50']:.1f} / {t['p99']:.1f}{flag}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    over = [
        f"{f['backend']}: {name}"
        for f in lines
        for name, t in f["times_ms"].items()
        if t["p99"] >= BOUND_MS
    ]
    rows.append("")
    rows.append(f"p99 >= {BOUND_MS:.0f} ms: " + ("; ".join(over) if over else "none"))
    return "\n".join(rows)


def profile_table(line: dict[str, Any]) -> str:
    """One board's ``--profile`` figures as a markdown table: page | summary | each call."""
    found = line["board_calls_p50_ms"]
    verbs = list(dict.fromkeys(verb for calls in found.values() for verb in calls))
    rows = [f"{line['backend']}: board calls per index page, p50 ms (calls x count)"]
    rows += ["| page | " + " | ".join(verbs) + " |", "| --- |" + " ---: |" * len(verbs)]
    for name, calls in found.items():
        cells = [f"{calls[v]:.1f}" if v in calls else "-" for v in verbs]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def run_one(backend: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fill (or reuse) one board, serve it, time every page; its figures."""
    board = anyio.run(prepare, backend, url, args.jobs)
    wanted = pages(board["deep"], board["job_id"])
    with dashboard(url) as base:
        if follow_older(base, 3) != board["third"]:
            raise SystemExit("the pages' older links do not lead where the board walk did")
        figures = time_pages(base, wanted, args.runs)
    line = {
        "backend": backend,
        "jobs": board["jobs"],
        "fill_s": board["fill_s"],
        "deep": board["deep"][:80] + "...",
        "times_ms": figures,
    }
    if args.profile:
        line["board_calls_p50_ms"] = anyio.run(profile, url, wanted, args.runs)
    return line


def main(argv: list[str] | None = None) -> int:
    """Run each board asked for; one JSON line each, then the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--keep", type=Path, help="keep and reuse the boards (see the module)")
    parser.add_argument("--profile", action="store_true", help="time each page's board calls")
    args = parser.parse_args(argv)
    for backend in args.backends.split(","):
        if backend not in BACKENDS:
            # The memory board lives in one process: the dashboard's could not see its jobs.
            raise SystemExit(f"unknown backend {backend!r} (this benchmark: {', '.join(BACKENDS)})")
    lines = []
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aioc-pages-")))
        for backend in args.backends.split(","):
            # Outside the event loop: the services' set-up and clean-up run loops of their own.
            place = (
                kept_url(backend, args.keep)
                if args.keep
                else services.board_url(backend, folder, "pages")
            )
            with place as url:
                lines.append(run_one(backend, url, args))
            print(json.dumps(lines[-1]), flush=True)
    print(table(lines))
    for line in lines:
        if "board_calls_p50_ms" in line:
            print("\n" + profile_table(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
