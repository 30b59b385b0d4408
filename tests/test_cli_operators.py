"""The command line as an operator meets it (issue #22), each through the installed
``aioconductor`` command in a subprocess: ``--app`` from the project's folder, the store
``run`` picks and says, ``--version``, times and claims in ``show`` and ``jobs``, id prefixes,
and the tasks' own log lines under ``run --log-level``."""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
import textwrap
from datetime import datetime
from importlib import metadata
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest

from aioconductor import open_board, open_store
from aioconductor.cli.stores import STORE_SCHEMES, describe_stores, store_in_memory, store_url_for
from aioconductor.cli.times import human_duration
from aioconductor.models import Job

#: The console script, as a user runs it: unlike ``python -m``, it does not put the current
#: folder on the path by itself.
COMMAND = str(Path(sys.executable).with_name("aioconductor"))

APP = """
import logging

from aioconductor import FlowRegistry, linear, task

flows = FlowRegistry()
log = logging.getLogger("myapp.payments")


@task(provides="charged")
async def charge(amount: int) -> int:
    log.info("charging %s for the order", amount)
    return amount


@flows.register("charge")
def charge_flow(**args):
    return linear("charge", charge)
"""


def cli(
    *argv: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``aioconductor ARGV`` in ``cwd``, its own environment cleared of our variables."""
    clean = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "AIOCONDUCTOR_BOARD_URL", "AIOCONDUCTOR_STORE_URL")
    }
    return subprocess.run(
        [COMMAND, *argv],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder holding the package ``myapp`` (not installed, not on any path)."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "flows.py").write_text(textwrap.dedent(APP))
    return tmp_path


def post(project: Path, board: str, *argv: str) -> str:
    result = cli("post", *argv, "--board", board, cwd=project)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def shown_fields(out: str) -> dict[str, str]:
    """``show``'s lines (``label: value``, the values aligned) as a dict."""
    pairs = (line.partition(":")[::2] for line in out.splitlines())
    return {label: value.strip() for label, value in pairs}


def on_board(url: str, action):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        async with open_board(url) as board:
            return await action(board)

    return anyio.run(go)


# -- 1, 2, 6: run from the project's folder, on the board's store, with the tasks' logs -------


def test_run_imports_the_app_from_the_current_folder_and_saves_progress_in_the_boards_store(
    project: Path,
) -> None:
    board = f"sqlite:///{project / 'jobs.db'}"
    job_id = post(project, board, "order-1", "charge", '{"amount": 42}')
    result = cli(
        "run", "--board", board, "--app", "myapp.flows:flows", "--max-dispatches", "1",
        cwd=project,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "1 consumed" in result.stdout
    # The board and the store it defaulted to, said at start; no warning about memory.
    assert f"board: {board}; store: {board} (the board's URL: no --store given)" in result.stderr
    assert "WARNING" not in result.stderr
    # The progress is in that store: the job's logbook is there after the run.

    async def logbook_flows() -> list[str]:
        async with open_store(board) as store:
            book = await store.get_logbook(job_id)
        return [flow.name for flow in book.flows.values()]

    assert anyio.run(logbook_flows) == ["charge"]
    # The task's own logging.info line, through the root logger, with the job's context.
    [line] = [line for line in result.stderr.splitlines() if "charging 42" in line]
    assert f"INFO    myapp.payments [job={job_id} flow=charge owner=conductor-" in line


def test_run_log_level_applies_to_the_tasks_loggers_too(project: Path) -> None:
    board = f"sqlite:///{project / 'jobs.db'}"
    post(project, board, "order-1", "charge", '{"amount": 7}')
    result = cli(
        "run", "--board", board, "--app", "myapp.flows:flows", "--max-dispatches", "1",
        "--log-level", "warning", cwd=project,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "1 consumed" in result.stdout
    assert "charging" not in result.stderr and "consumed SUCCESS" not in result.stderr


def test_an_app_that_is_not_in_the_folder_is_one_clear_line(project: Path) -> None:
    board = f"sqlite:///{project / 'jobs.db'}"
    result = cli("run", "--board", board, "--app", "nothere.flows:flows", cwd=project)
    assert result.returncode == 1
    assert "cannot import 'nothere.flows'" in result.stderr and "Traceback" not in result.stderr


def test_run_on_a_store_in_memory_warns_loudly_and_names_the_fix(project: Path) -> None:
    result = cli(
        "run", "--board", "memory://", "--app", "myapp.flows:flows", "--max-dispatches", "0",
        cwd=project,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "board: memory://; store: none (in this process's memory)" in result.stderr
    [warning] = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert "THE STORE IS IN MEMORY" in warning and "not saved" in warning
    assert "does not resume" in warning and "--store URL" in warning
    # A store given is named as given; a SQLite store without a file warns too.
    result = cli(
        "run", "--board", "memory://", "--store", "sqlite://", "--app", "myapp.flows:flows",
        "--max-dispatches", "0", cwd=project,
    )  # fmt: skip
    assert "store: sqlite:// (given)" in result.stderr and "THE STORE IS IN MEMORY" in result.stderr


def test_the_store_defaults_where_the_boards_backend_has_one() -> None:
    from aioconductor.persistence import open as store_open

    # The schemes with a durable store are the store openers' own, but memory.
    assert set(store_open._BACKENDS) - {"memory"} == STORE_SCHEMES
    for url in ("sqlite:///j.db", "redis://h/0", "rediss://h/0", "postgresql://h/d"):
        assert store_url_for(url, None) == url
    assert store_url_for("kafka://h:9092", None) is None
    assert store_url_for("memory://", None) is None
    assert store_url_for("kafka://h:9092", "redis://h/1") == "redis://h/1"
    assert not store_in_memory("sqlite:///j.db") and not store_in_memory("postgres://h/d")
    for url in (None, "memory://", "sqlite://", "sqlite:///:memory:", "sqlite://?namespace=a"):
        assert store_in_memory(url), url


def test_the_start_lines_show_no_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    log = logging.getLogger("aioconductor.cli")
    describe_stores(
        log, "redis://ops:hunter2@h/0", "postgresql://u:hunter2@h/d?sslpassword=x", True
    )
    describe_stores(log, "kafka://u:hunter2@h:9092", None, False)
    assert "hunter2" not in caplog.text and "sslpassword=x" not in caplog.text
    assert "redis://ops:***@h/0" in caplog.text and "sslpassword=***" in caplog.text
    assert [r.levelname for r in caplog.records] == ["INFO", "INFO", "WARNING"]


def test_migrate_defaults_the_store_the_same_way(project: Path) -> None:
    board = f"sqlite:///{project / 'jobs.db'}"
    result = cli("migrate", "--board", board, cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].startswith("store: <SqliteStore")
    result = cli("migrate", "--board", "memory://", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "store: none (a memory:// board has no store of its own: give --store URL)" in (
        result.stdout
    )


# -- 3: --version ---------------------------------------------------------------------------------


def test_version_names_the_distribution_its_version_and_the_import_name(tmp_path: Path) -> None:
    result = cli("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    version = metadata.version("aioconductor-taskflow")
    assert result.stdout.startswith(f"aioconductor-taskflow {version} (import name aioconductor")


# -- 4: times, durations and claims in show and jobs ----------------------------------------------


def test_show_and_jobs_print_local_iso_times_or_utc_and_a_claim_as_it_stands(
    project: Path,
) -> None:
    board = f"sqlite:///{project / 'jobs.db'}"
    held = post(project, board, "held", "charge", '{"amount": 1}')
    done = post(project, board, "done", "charge", '{"amount": 2}')

    async def setup(b):  # type: ignore[no-untyped-def]
        done_claim = await b.claim(done, "conductor-8", lease=600)
        await b.consume(done_claim, result={"ok": 1})
        await b.claim(held, "conductor-9", lease=600)
        return [await b.get(job_id) for job_id in (held, done)]

    held_job, done_job = on_board(board, setup)
    berlin = {"TZ": "Europe/Berlin"}

    def local(ts: float) -> str:
        return datetime.fromtimestamp(ts, ZoneInfo("Europe/Berlin")).isoformat(timespec="seconds")

    shown = cli("show", done, "--board", board, cwd=project, env=berlin)
    assert shown.returncode == 0, shown.stderr
    fields = shown_fields(shown.stdout)
    assert fields["state"] == "COMPLETE (SUCCESS)"
    assert fields["posted"].startswith(local(done_job.created_at) + " (")
    assert fields["ended"].startswith(local(done_job.updated_at) + " (")
    assert "after it was posted" in fields["ended"]
    # The finished job's claim is past, not held.
    assert "claim" not in fields
    assert fields["last claim"].startswith("owner conductor-8, token 1; no longer held (the job")
    assert fields["result"] == '{"ok": 1}'

    shown = cli("show", held, "--utc", "--board", board, cwd=project, env=berlin)
    fields = shown_fields(shown.stdout)
    assert fields["state"] == "CLAIMED by conductor-9"
    assert held_job.claim is not None
    lease = datetime.fromtimestamp(held_job.claim.expires_at, ZoneInfo("UTC")).isoformat(
        timespec="seconds"
    )
    assert fields["claim"].startswith(f"held by conductor-9, token 1, lease to {lease}")
    assert fields["claim"].endswith(" left)") and " m " in fields["claim"]  # e.g. "(9 m 59 s left)"
    assert fields["updated"].startswith(datetime.fromtimestamp(
        held_job.updated_at, ZoneInfo("UTC")).isoformat(timespec="seconds") + " (")  # fmt: skip

    # --json stays machine-readable: the fields, times as epoch seconds.
    as_json = json.loads(cli("show", done, "--json", "--board", board, cwd=project).stdout)
    assert (
        as_json["updated_at"] == done_job.updated_at and as_json["claim"]["owner"] == "conductor-8"
    )

    listed = cli("jobs", "--board", board, cwd=project, env=berlin).stdout.splitlines()
    assert listed[0].split()[:5] == ["id", "state", "prio", "try", "updated"]
    [row] = [line for line in listed if line.startswith(done)]
    assert local(done_job.updated_at) in row
    listed = cli("jobs", "--utc", "--board", board, cwd=project, env=berlin).stdout
    assert datetime.fromtimestamp(done_job.updated_at, ZoneInfo("UTC")).isoformat(
        timespec="seconds"
    ) in listed  # fmt: skip


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.008, "8 ms"),
        (1.23, "1.2 s"),
        (45.4, "45 s"),
        (184, "3 m 4 s"),
        (180, "3 m"),
        (7500, "2 h 5 m"),
        (7 * 86_400, "7 d"),
        (3 * 86_400 + 4 * 3600 + 59, "3 d 4 h"),
        (-90, "-1 m 30 s"),
    ],
)
def test_durations_are_for_a_person(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


# -- 5: a unique prefix of a job's id --------------------------------------------------------------


def test_every_verb_taking_an_id_takes_a_unique_prefix_and_refuses_an_ambiguous_one(
    project: Path,
) -> None:
    board = f"sqlite:///{project / 'jobs.db'}"

    async def post_many(b):  # type: ignore[no-untyped-def]
        return [await b.post(f"job-{n}", "charge", {"amount": n}) for n in range(17)]

    jobs: list[Job] = on_board(board, post_many)
    # 17 ids, 16 hex digits: two share a first character.
    by_first = collections.defaultdict(list)
    for job in jobs:
        by_first[job.id[0]].append(job)
    shared = next(first for first, group in by_first.items() if len(group) > 1)
    unique = [job for job in jobs if sum(j.id.startswith(job.id[:8]) for j in jobs) == 1]
    one, two, three = unique[:3]

    shown = cli("show", one.id[:8], "--json", "--board", board, cwd=project)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == one.id
    shown = cli("show", one.id[:8].upper(), "--json", "--board", board, cwd=project)
    assert json.loads(shown.stdout)["id"] == one.id
    trashed = cli("trash", two.id[:8], "--board", board, cwd=project)
    assert trashed.returncode == 0 and trashed.stdout.startswith(f"{two.id} trashed")
    cancelled = cli("cancel", three.id[:8], "--board", board, cwd=project)
    assert cancelled.returncode == 0 and cancelled.stdout.startswith(f"{three.id} cancelled")
    # The exact id is used as it is.
    assert json.loads(cli("show", one.id, "--json", "--board", board, cwd=project).stdout)["id"]

    for verb in ("show", "trash", "cancel"):
        refused = cli(verb, shared, "--board", board, cwd=project)
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
        assert f"job id prefix {shared!r} is ambiguous" in refused.stderr
        assert sum(job.id in refused.stderr for job in by_first[shared]) == 2  # stops at two
        assert "(job-" in refused.stderr  # each with its name
        missing = cli(verb, "zzzz", "--board", board, cwd=project)
        assert missing.returncode == 1 and "no job 'zzzz'" in missing.stderr
    # Nothing was trashed or cancelled by the refused commands.
    states = on_board(board, lambda b: b.job_count(state="TRASHED"))
    assert states == 1
