"""The ``aioconductor`` command: every subcommand, and its errors as one clear line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aioconductor.cli import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def board_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_post_jobs_show_trash(capsys: pytest.CaptureFixture[str], board_url: str) -> None:
    status, out, _ = run_cli(capsys, "post", "greet", "noop", '{"key": 5}', "--board", board_url)
    assert status == 0
    job_id = out.strip()
    assert len(job_id) == 36

    status, out, _ = run_cli(capsys, "jobs", "--board", board_url)
    assert status == 0 and job_id in out and "UNCLAIMED" in out and "noop" in out

    status, out, _ = run_cli(capsys, "jobs", "--board", board_url, "--state", "complete")
    assert status == 0 and job_id not in out

    status, out, _ = run_cli(capsys, "show", job_id, "--json", "--board", board_url)
    shown = json.loads(out)
    assert status == 0 and shown["id"] == job_id and shown["args"] == {"key": 5}

    status, out, _ = run_cli(capsys, "trash", job_id, "--board", board_url, "--reason", "oops")
    assert status == 0 and "trashed: oops" in out
    status, out, _ = run_cli(capsys, "jobs", "--board", board_url, "--json")
    assert json.loads(out.splitlines()[0])["state"] == "TRASHED"


def test_post_with_retries_gives_the_job_a_retry_policy(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    argv = ["post", "j", "noop", "{}", "--retries", "4", "--retry-base", "0.5"]
    status, out, _ = run_cli(capsys, *argv, "--board", board_url)
    assert status == 0
    status, out, _ = run_cli(capsys, "show", out.strip(), "--json", "--board", board_url)
    assert json.loads(out)["retry"] == {
        "retries": 4, "base": 0.5, "factor": 2.0, "max_delay": 600.0, "jitter": 0.1,
    }  # fmt: skip


def test_run_processes_jobs_and_conductors_lists_nobody_after(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    for key in range(3):
        run_cli(capsys, "post", f"j{key}", "noop", json.dumps({"key": key}), "--board", board_url)
    status, out, _ = run_cli(
        capsys, "run", "--board", board_url, "--store", board_url, "--app", "tests.apps:flows",
        "--max-dispatches", "3",
    )  # fmt: skip
    assert status == 0 and "3 consumed" in out
    status, out, _ = run_cli(capsys, "jobs", "--board", board_url, "--state", "COMPLETE")
    assert out.count("COMPLETE") == 3
    status, out, _ = run_cli(capsys, "conductors", "--board", board_url)
    assert status == 0 and out.splitlines()[1:] == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["post", "j", "f", "{not json", "--board", "BOARD"], "not valid JSON"),
        (["post", "j", "f", "[1]", "--board", "BOARD"], "must be a JSON object"),
        (["post", "", "f", "--board", "BOARD"], "non-empty"),
        (["show", "00000000-0000-4000-8000-000000000000", "--board", "BOARD"], "no aioconductor"),
        (["trash", "nope", "--board", "BOARD"], "no job"),
        (["jobs"], "--board"),
        (["jobs", "--board", "ftp://x"], "no board backend for URL scheme 'ftp'"),
        (["jobs", "--board", "memory://?namespace=Bad-Name"], "namespace"),
        (["run", "--board", "BOARD", "--app", "no.such.module:flows"], "cannot import"),
        (["run", "--board", "BOARD", "--app", "tests.apps"], "module:registry"),
        (["demo", "--jobs", "0"], "--jobs"),
        (["post", "j", "f", "--retries", "-1", "--board", "BOARD"], "--retries"),
        (["post", "j", "f", "--retries", "2", "--retry-base", "nan", "--board", "BOARD"], "base"),
        (["run", "--board", "BOARD", "--app", "tests.apps:flows", "--name", "x" * 230], "222"),
        (["run", "--board", "BOARD", "--app", "tests.apps:flows", "--name", ""], "non-empty"),
        (["dashboard", "--board", "BOARD", "--allow-host", "http://ops"], "not a host name"),
    ],
)
def test_errors_are_one_line_and_a_non_zero_exit(
    capsys: pytest.CaptureFixture[str], board_url: str, argv: list[str], message: str
) -> None:
    argv = [board_url if arg == "BOARD" else arg for arg in argv]
    status, _, err = run_cli(capsys, *argv)
    assert status == 1
    assert len(err.strip().splitlines()) == 1 and message in err
    assert "Traceback" not in err


def test_demo_runs_and_prints_its_summary(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aioconductor", "demo", "--jobs", "40", "--folder", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()
    assert any(line.startswith("consumed 40 (") for line in summary)
    assert any("trashed 1" in line and "jobs/s" in line for line in summary)
    assert (tmp_path / "demo.db").exists()


def test_migrate_creates_the_tables_of_a_sqlite_board_and_store(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    status, out, _ = run_cli(capsys, "migrate", "--board", board_url)
    assert status == 0
    assert out.splitlines()[0].startswith("board: <SqliteJobBoard")
    assert out.splitlines()[1].startswith("store: <SqliteStore")
    status, out, _ = run_cli(capsys, "post", "j", "noop", "--board", board_url)
    assert status == 0


@pytest.mark.postgres
def test_two_migrate_commands_at_once_on_a_fresh_postgres_schema(tmp_path: Path) -> None:
    import anyio
    import asyncpg  # type: ignore[import-untyped]

    from tests.postgres_helpers import drop_schemas, require_postgres, unique_schema, url

    require_postgres()
    schema = unique_schema()
    board = url(schema, "cli")
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "aioconductor", "migrate", "--board", board],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert f"schema='{schema}'" in out and "up to date" in out

        async def versions() -> list[tuple[str, int]]:
            conn = await asyncpg.connect(board.split("?")[0])
            try:
                rows = await conn.fetch(
                    f'SELECT component, version FROM "{schema}".schema_version ORDER BY 1'
                )
            finally:
                await conn.close()
            return [tuple(row) for row in rows]

        assert anyio.run(versions) == [("board", 9), ("store", 1)]
    finally:
        anyio.run(drop_schemas, schema)


# -- tables, the run's output and the dashboard command ------------------------------------------


def test_jobs_and_conductors_print_aligned_columns(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    run_cli(capsys, "post", "a", "noop", '{"key": 1}', "--board", board_url)
    run_cli(capsys, "post", "a-much-longer-job-name", "noop", "--board", board_url)
    status, out, _ = run_cli(capsys, "jobs", "--board", board_url)
    header, *rows = out.splitlines()
    assert status == 0 and len(rows) == 2
    # Piped (not a terminal): plain columns, each starting where its header starts.
    for column in ("state", "flow", "name"):
        start = header.index(column)
        assert all(row[start - 2 : start] == "  " and row[start] != " " for row in rows)
    assert [row.split()[1] for row in rows] == ["UNCLAIMED", "UNCLAIMED"]
    status, out, _ = run_cli(capsys, "conductors", "--board", board_url)
    assert out.split() == ["name", "owner", "running", "heartbeat"]


def test_on_a_terminal_tables_are_drawn_with_rich(
    capsys: pytest.CaptureFixture[str], board_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from aioconductor.cli import output

    monkeypatch.setattr(output, "rich_console", lambda stream: Console(file=stream, width=200))
    run_cli(capsys, "post", "drawn", "noop", "--board", board_url)
    status, out, _ = run_cli(capsys, "jobs", "--board", board_url)
    assert status == 0 and "drawn" in out and "UNCLAIMED" in out
    assert "───" in out  # rich's rule under the header


def test_run_logs_a_line_per_finished_job_when_not_on_a_terminal(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    ids = [
        run_cli(
            capsys, "post", f"job-{key}", "noop", json.dumps({"key": key}), "--board", board_url
        )[1].strip()
        for key in range(2)
    ]
    status, out, err = run_cli(
        capsys, "run", "--board", board_url, "--app", "tests.apps:flows", "--max-dispatches", "2",
    )  # fmt: skip
    assert status == 0 and "2 consumed" in out
    lines = [line for line in err.splitlines() if "consumed SUCCESS" in line]
    assert len(lines) == 2
    for job_id in ids:
        # Each line carries its job's context (aioconductor.logs.FORMAT).
        assert sum(f"[job={job_id} flow=noop owner=conductor-" in line for line in lines) == 1


@pytest.mark.parametrize(("option", "young"), [([], 20_000), (["--gc-young", "0"], 700)])
def test_run_sets_the_garbage_collector_of_its_process_unless_told_not_to(
    capsys: pytest.CaptureFixture[str], board_url: str, option: list[str], young: int
) -> None:
    import gc

    gc.set_threshold(700, 10, 10)  # CPython's own (the fixture gives the test run's back)
    run_cli(capsys, "post", "j", "noop", '{"key": 1}', "--board", board_url)
    status, out, _ = run_cli(
        capsys, "run", "--board", board_url, "--app", "tests.apps:flows", "--max-dispatches", "1",
        *option,
    )  # fmt: skip
    assert status == 0 and "1 consumed" in out
    assert gc.get_threshold() == (young, 10, 10)


def test_run_refuses_a_negative_gc_threshold(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--board", "memory://", "--app", "tests.apps:flows", "--gc-young", "-5"])
    assert "not a whole number >= 0" in capsys.readouterr().err


def test_run_shows_a_live_status_line_on_a_terminal(
    capsys: pytest.CaptureFixture[str], board_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from rich.console import Console

    from aioconductor.cli import output

    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=200)
    monkeypatch.setattr(output, "rich_console", lambda stream: terminal)
    run_cli(capsys, "post", "j", "sleepy", '{"key": 1, "seconds": 0.6}', "--board", board_url)
    status, out, _ = run_cli(
        capsys, "run", "--board", board_url, "--app", "tests.apps:flows", "--max-dispatches", "1",
        "--name", "tty",
    )  # fmt: skip
    drawn = screen.getvalue()
    assert status == 0 and "1 consumed" in out
    assert "tty: running 1/64 | claimed 1 | consumed 0" in drawn  # while the job ran
    assert "claimed 1 | consumed 1 (ok 1" in drawn  # its last figures
    assert "consumed SUCCESS" in drawn  # the log line, printed above the status line


def test_dashboard_serves_the_board_until_interrupted(tmp_path: Path) -> None:
    import http.client
    import signal
    import socket
    import time
    import urllib.request

    board = f"sqlite:///{tmp_path / 'jobs.db'}"
    assert main(["post", "seen", "noop", "--board", board]) == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = ["dashboard", "--board", board, "--port", str(port)]
    argv += ["--allow-host", "ops.example", "--allow-host", "admin.example:8443"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "aioconductor", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                url = f"http://127.0.0.1:{port}/api/summary"
                with urllib.request.urlopen(url, timeout=2) as response:
                    summary = json.load(response)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
                time.sleep(0.1)
        assert summary["counts"]["UNCLAIMED"] == 1 and summary["jobs"][0]["name"] == "seen"

        def status_for(host: str) -> int:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                connection.request("GET", "/api/summary", headers={"Host": host})
                return connection.getresponse().status
            finally:
                connection.close()

        # A name rebound to this address is refused; loopback names and --allow-host answered.
        assert status_for(f"evil.example:{port}") == 400
        assert status_for("admin.example") == 400  # allowed on port 8443 only
        for host in (f"localhost:{port}", f"[::1]:{port}", "ops.example", "admin.example:8443"):
            assert status_for(host) == 200, host
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
        proc.wait()
    assert f"on http://127.0.0.1:{port}/ (actions off)" in out
    assert "Traceback" not in err


def test_run_on_uvloop(capsys: pytest.CaptureFixture[str], board_url: str) -> None:
    import asyncio
    import uuid

    from tests import apps

    loops: list[str] = []
    flow = f"which-loop-{uuid.uuid4().hex}"  # the registry is the module's: a name of our own

    @apps.flows.register(flow)
    def which_loop(**args: object) -> object:
        loops.append(type(asyncio.get_running_loop()).__module__)
        return apps.flows.get("noop")(**args)

    run_cli(capsys, "post", "k", flow, '{"key": 2}', "--board", board_url)
    status, out, _ = run_cli(
        capsys, "run", "--board", board_url, "--app", "tests.apps:flows", "--loop", "uvloop",
        "--max-dispatches", "1",
    )  # fmt: skip
    assert status == 0 and "1 consumed" in out
    assert loops and loops[0].startswith("uvloop")


# -- user data is printed as text: no markup, no control characters -----------------------------

#: Names a terminal would act on: clear the screen, an OSC 8 hyperlink, CSI in C1, DEL.
CLEAR = "\x1b[2J"
HYPERLINK = "\x1b]8;;https://evil.example\x07click\x1b]8;;\x07"
RAW = ("\x1b", "\x07", "\x9b", "\x7f", "\u202e")
#: Names rich would parse as markup: a crash, a clickable link, bold.
MARKUP = ("[/]", "[link=https://e.io]x[/link]", "[bold]b[/bold]")


def _register_conductor(board_url: str, owner: str, name: str) -> None:
    import anyio

    from aioconductor import open_board

    async def register() -> None:
        async with open_board(board_url) as board:
            await board.register_conductor(owner, name, ttl=60, meta={"running": 0})

    anyio.run(register)


def _terminal(monkeypatch: pytest.MonkeyPatch) -> object:
    """Send every rich console the CLI makes to a forced terminal; returns its screen."""
    import io

    from rich.console import Console

    from aioconductor.cli import output

    screen = io.StringIO()
    # Colours on whatever $TERM says: rich draws links only where it draws styles.
    terminal = Console(file=screen, force_terminal=True, color_system="truecolor", width=250)
    monkeypatch.setattr(output, "rich_console", lambda stream: terminal)
    return screen


def _unstyled(drawn: str) -> str:
    """``drawn`` less rich's own colours (SGR sequences), which split highlighted words."""
    return re.sub("\x1b\\[[0-9;]*m", "", drawn)


def test_on_a_terminal_names_like_markup_are_shown_as_they_are(
    capsys: pytest.CaptureFixture[str], board_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (*MARKUP, CLEAR):
        run_cli(capsys, "post", name, name, "--board", board_url)
    _register_conductor(board_url, "[link=https://evil.example]o[/link]", f"[/]{CLEAR}")
    screen = _terminal(monkeypatch)
    assert run_cli(capsys, "jobs", "--board", board_url)[0] == 0
    jobs = screen.getvalue()  # type: ignore[attr-defined]
    assert run_cli(capsys, "conductors", "--board", board_url)[0] == 0
    drawn = screen.getvalue()  # type: ignore[attr-defined]
    conductors = drawn[len(jobs) :]
    assert "───" in jobs and "───" in conductors  # drawn by rich
    for name in MARKUP:
        assert jobs.count(name) == 2  # as flow and as name, each as it was posted
    assert jobs.count("\\x1b[2J") == 2
    assert "[link=https://evil.example]o[/link]" in conductors and "[/]\\x1b[2J" in conductors
    assert "\x1b]8;" not in drawn  # no hyperlink was drawn
    assert CLEAR not in drawn


def test_on_a_terminal_the_status_and_log_lines_show_names_as_they_are(
    capsys: pytest.CaptureFixture[str], board_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_cli(capsys, "post", f"[bold]{HYPERLINK}", "noop", '{"key": 1}', "--board", board_url)
    screen = _terminal(monkeypatch)
    status, out, _ = run_cli(
        capsys, "run", "--board", board_url, "--app", "tests.apps:flows", "--max-dispatches", "1",
        "--name", f"[/]{CLEAR}",
    )  # fmt: skip
    drawn = screen.getvalue()  # type: ignore[attr-defined]
    assert status == 0 and "1 consumed" in out
    assert "[/]\\x1b[2J: running" in drawn  # the status line
    visible = "[bold]\\x1b]8;;https://evil.example\\x07click\\x1b]8;;\\x07"
    assert f"job {visible} (noop): consumed SUCCESS" in _unstyled(drawn)  # the log line
    assert CLEAR not in drawn and "\x1b]8;" not in drawn and "\x07" not in drawn
    assert "\x1b" not in out and "conductor [/]\\x1b[2J stopped" in out


def test_piped_output_shows_control_characters_as_escapes(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    reason = "bad\x9b31m\x7f\u202egnp.exe"
    outputs: list[str] = []

    def cli(*argv: str) -> str:
        _, out, err = run_cli(capsys, *argv, "--board", board_url)
        outputs.extend((out, err))
        return out

    job_id = cli("post", CLEAR, HYPERLINK).strip()
    assert cli("trash", job_id, "--reason", reason).endswith(
        "trashed: bad\\x9b31m\\x7f\\u202egnp.exe\n"
    )
    _register_conductor(board_url, "owner\x1b[2J", f"name{HYPERLINK}")
    listed = cli("jobs")
    # The flow, cut to 30 characters before they were escaped.
    assert "\\x1b[2J" in listed and "\\x1b]8;;https://evil.example\\x07clic" in listed
    conductors = cli("conductors")
    assert "name\\x1b]8;;https://evil.example\\x07click" in conductors
    assert "owner\\x1b[2J" in conductors
    # JSON stays JSON: a script reads back exactly what was posted.
    for shown in (cli("jobs", "--json"), cli("show", job_id, "--json")):
        job = json.loads(shown)
        assert (job["name"], job["flow"], job["trash_reason"]) == (CLEAR, HYPERLINK, reason)
    cli("show", f"no-such-{CLEAR}")  # the error line
    assert "no-such-\\x1b[2J" in outputs[-1]
    for text in outputs:
        assert not any(char in text for char in RAW), repr(text)


def test_piped_run_logs_one_line_per_job_whatever_its_name(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    name = f"{CLEAR}two\nlines"
    run_cli(capsys, "post", name, "noop", '{"key": 1}', "--board", board_url)
    status, out, err = run_cli(
        capsys, "run", "--board", board_url, "--app", "tests.apps:flows", "--max-dispatches", "1",
        "--name", f"c{HYPERLINK}",
    )  # fmt: skip
    assert status == 0 and "1 consumed" in out
    assert "conductor c\\x1b]8;;https://evil.example\\x07click" in out
    [line] = [line for line in err.splitlines() if "consumed SUCCESS" in line]
    assert "job \\x1b[2Jtwo\\nlines (noop): consumed SUCCESS" in line
    assert not any(char in out + err for char in RAW)
