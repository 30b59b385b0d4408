"""``aioconductor show`` prints the job's progress from its store (issue #22): each flow run
and its tasks in run order with their failures, a resumed flow said to be resumed only where
the job's counters show it, a job without a logbook said so plainly; the store is opened
read-only (nothing created or migrated)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioconductor import Conductor, FlowRegistry, Task, linear, open_board, open_store
from aioconductor.cli import main
from aioconductor.cli.progress import read_progress
from aioconductor.errors import SchemaMissing
from aioconductor.models import Job, JobState

from . import apps
from .apps import flows as app_flows


@pytest.fixture(autouse=True)
def _reset_apps() -> None:
    apps.EXECUTIONS.clear()
    apps.REVERTS.clear()
    apps.GATE.clear()


@pytest.fixture
def board_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def show(capsys: pytest.CaptureFixture[str], job_id: str, *argv: str) -> tuple[str, Any]:
    """``show``'s text, and its JSON's ``progress``."""
    status, text, err = run_cli(capsys, "show", job_id, *argv)
    assert status == 0, err
    status, out, err = run_cli(capsys, "show", job_id, "--json", *argv)
    assert status == 0, err
    return text, json.loads(out)["progress"]


def post(capsys: pytest.CaptureFixture[str], board_url: str, flow: str, args: str) -> str:
    status, out, err = run_cli(capsys, "post", f"j-{flow}", flow, args, "--board", board_url)
    assert status == 0, err
    return out.strip()


def run_conductor(capsys: pytest.CaptureFixture[str], board_url: str, jobs: int) -> None:
    argv = ["run", "--board", board_url, "--app", "tests.apps:flows"]
    status, _, err = run_cli(capsys, *argv, "--max-dispatches", str(jobs))
    assert status == 0, err


def progress_block(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("progress:"))
    return lines[start:]


def test_a_job_run_to_success_lists_its_tasks_in_run_order(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    job_id = post(capsys, board_url, "steps", '{"key": 1}')
    run_conductor(capsys, board_url, 1)  # the store: the board's URL, as `run` defaults it
    text, progress = show(capsys, job_id, "--board", board_url)
    assert progress_block(text) == [
        f"progress: {board_url} (the board's URL)",
        "  flow 'steps': SUCCESS",
        "    first   SUCCESS",
        "    second  SUCCESS",
        "    third   SUCCESS",
    ]
    assert progress["saved"] and progress["note"] is None
    assert progress["unfinished_runs"] == {"given_back": 0, "abandoned": 0, "lease_ran_out": 0}
    [flow] = progress["flows"]
    assert (flow["name"], flow["state"], flow["resumes"]) == ("steps", "SUCCESS", 0)
    assert [task["name"] for task in flow["tasks"]] == ["first", "second", "third"]
    assert [task["seq"] for task in flow["tasks"]] == [1, 2, 3]
    assert all(task["failure"] is None for task in flow["tasks"])


def test_a_failed_task_shows_its_failure_and_the_revert(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    job_id = post(capsys, board_url, "fails", '{"key": 7}')
    run_conductor(capsys, board_url, 1)
    text, progress = show(capsys, job_id, "--board", board_url)
    block = progress_block(text)
    assert block[1] == "  flow 'fails': REVERTED"
    assert block[2] == "    first  REVERTED"
    assert block[3] == "    boom   REVERTED; it had failed: builtins.RuntimeError: boom 7"
    [flow] = progress["flows"]
    first, boom = flow["tasks"]
    assert first["state"] == "REVERTED" and first["failure"] is None
    assert boom["failure"]["exc_type"] == "builtins.RuntimeError"
    assert boom["failure"]["message"] == "boom 7" and "Traceback" in boom["failure"]["traceback"]
    assert boom["revert_failure"] is None


class _Charge(Task):
    async def execute(self, key: Any) -> str:
        return "charged"

    async def revert(self, key: Any, **kwargs: Any) -> None:
        raise ValueError(f"refund {key} refused")


class _Decline(Task):
    async def execute(self, key: Any) -> None:
        raise LookupError(f"no stock for {key}")


REVERT_FLOWS = FlowRegistry()


@REVERT_FLOWS.register("refund")
def _refund_flow(**args: Any) -> Any:
    return linear("refund", _Charge("charge", provides="charged"), _Decline("ship"))


def test_a_revert_that_failed_is_shown(capsys: pytest.CaptureFixture[str], board_url: str) -> None:
    async def run() -> str:
        async with open_board(board_url) as board, open_store(board_url) as store:
            job = await board.post("j", "refund", {"key": "A"}, max_attempts=1)
            async with Conductor("c", board, store=store, flows=REVERT_FLOWS) as conductor:
                await conductor.run(max_dispatches=1)
            assert (await board.get(job.id)).state is JobState.COMPLETE
            return job.id

    job_id = anyio.run(run)
    text, progress = show(capsys, job_id, "--board", board_url)
    [flow] = progress["flows"]
    charge, ship = flow["tasks"]
    assert charge["revert_failure"]["exc_type"] == "builtins.ValueError"
    assert charge["revert_failure"]["message"] == "refund A refused"
    assert ship["failure"]["message"] == "no stock for A"
    assert "its revert failed: builtins.ValueError: refund A refused" in text
    assert "builtins.LookupError: no stock for A" in text


def test_a_job_trashed_before_it_ran_has_no_logbook(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    # needs-x takes x: the conductor trashes the job before its flow starts.
    trashed = post(capsys, board_url, "needs-x", "{}")
    run_conductor(capsys, board_url, 1)
    never = post(capsys, board_url, "steps", '{"key": 2}')
    assert run_cli(capsys, "trash", never, "--board", board_url)[0] == 0

    text, progress = show(capsys, trashed, "--board", board_url)
    assert "TRASHED" in text
    assert progress_block(text) == [
        f"progress: {board_url} (the board's URL)",
        "  no progress saved: the flow never started (the job was trashed before it ran)",
    ]
    assert not progress["saved"] and progress["flows"] == []

    text, progress = show(capsys, never, "--board", board_url)
    assert progress["note"] == (
        "no progress saved: the flow never started (the job was never claimed)"
    )
    assert progress["note"] in text


def test_a_job_released_mid_run_resumes_where_it_stopped(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    """first ran once; second was running when the job was given back: the flow is shown
    suspended, then resumed, and no task is said to have run more or less than it did."""

    async def first_run() -> str:
        async with open_board(board_url) as board, open_store(board_url) as store:
            apps.GATE["g"] = anyio.Event()
            job = await board.post("j", "steps", {"key": 3, "gate": "g"})
            conductor = Conductor("c1", board, store=store, flows=app_flows)
            async with conductor, anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                with anyio.fail_after(10):
                    while apps.EXECUTIONS[("second", 3)] == 0:
                        await anyio.sleep(0.01)
                conductor.stop(drain=False)
            got = await board.get(job.id)
            assert got.state is JobState.UNCLAIMED and got.releases == 1
            return job.id

    job_id = anyio.run(first_run)
    text, progress = show(capsys, job_id, "--board", board_url)
    block = progress_block(text)
    assert progress["flows"][0]["resumes"] == 0  # given back, not claimed again yet
    assert block[1] == (
        "  flow 'steps': SUSPENDED (its run stopped here: it goes on from here when the job "
        "is claimed again)"
    )
    assert block[2:] == [
        "    first   SUCCESS",
        "    second  RUNNING; it was running when its run stopped: it runs again from its start",
        "    (a task that never started is not saved, so not listed)",
    ]

    async def second_run() -> None:
        async with open_board(board_url) as board, open_store(board_url) as store:
            apps.GATE["g"] = anyio.Event()
            apps.GATE["g"].set()
            async with Conductor("c2", board, store=store, flows=app_flows) as conductor:
                await conductor.run(max_dispatches=1)
            assert (await board.get(job_id)).state is JobState.COMPLETE

    anyio.run(second_run)
    assert apps.EXECUTIONS[("first", 3)] == 1 and apps.EXECUTIONS[("second", 3)] == 2
    text, progress = show(capsys, job_id, "--board", board_url)
    assert progress["unfinished_runs"] == {"given_back": 1, "abandoned": 0, "lease_ran_out": 0}
    [flow] = progress["flows"]
    assert flow["state"] == "SUCCESS" and flow["resumes"] == 1
    assert [(t["name"], t["state"]) for t in flow["tasks"]] == [
        ("first", "SUCCESS"), ("second", "SUCCESS"), ("third", "SUCCESS"),
    ]  # fmt: skip
    assert progress_block(text)[1:3] == [
        "  flow 'steps': SUCCESS",
        "    (resumed once: 1 of the job's runs ended unfinished (1 given back), and a run after "
        "one goes on from what was saved: tasks that had ended do not run again, a task that "
        "was running runs again from its start)",
    ]
    # Nothing per task claims a count of runs: the store does not record one.
    assert "ran again after" not in text and "ran once" not in text


def test_show_opens_a_missing_sqlite_store_without_creating_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, board_url: str
) -> None:
    job_id = post(capsys, board_url, "steps", '{"key": 4}')
    missing = tmp_path / "progress.db"
    text, progress = show(capsys, job_id, "--board", board_url, "--store", f"sqlite:///{missing}")
    assert not missing.exists()
    assert progress["store_from"] == "--store" and not progress["saved"]
    assert progress["note"].startswith("no progress saved here: the store has no aioconductor")
    assert progress["note"] in text
    # The board's own file, which `post` made without the store's tables: none are added.
    text, progress = show(capsys, job_id, "--board", board_url)
    assert progress["note"].startswith("no progress saved here")
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        components = {row[0] for row in conn.execute("SELECT component FROM aioc_schema")}
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert components == {"board"} and "logbooks" not in tables


def test_a_newer_store_schema_is_refused_not_taken_for_a_missing_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, board_url: str
) -> None:
    job_id = post(capsys, board_url, "steps", '{"key": 8}')
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("CREATE TABLE aioc_schema (component TEXT PRIMARY KEY, version INTEGER)")
        conn.execute("INSERT INTO aioc_schema VALUES ('store', 99)")
    text, progress = show(capsys, job_id, "--board", board_url, "--store", f"sqlite:///{newer}")
    assert progress["note"].startswith("not read: ConfigurationError:")
    assert "newer than this aioconductor knows" in progress["note"] and progress["note"] in text

    async def refused() -> None:
        with pytest.raises(SchemaMissing):
            async with open_store(f"sqlite:///{tmp_path / 'none.db'}", migrate=False):
                pass

    anyio.run(refused)
    assert not (tmp_path / "none.db").exists()


def test_no_store_and_a_store_in_memory_keep_no_progress() -> None:
    job = Job(id="j1", name="j", flow="steps", state=JobState.UNCLAIMED)

    async def read(board: str, store: str | None) -> dict[str, Any]:
        return await read_progress(job, board, store)

    progress = anyio.run(read, "kafka://127.0.0.1:9092", None)
    assert progress["store"] is None and progress["note"].startswith("not kept (no store)")
    progress = anyio.run(read, "memory://", None)
    assert progress["note"].startswith("not kept (no store)")
    progress = anyio.run(read, "kafka://127.0.0.1:9092", "memory://")
    assert progress["note"].startswith("not kept (the store is in memory)")


@pytest.mark.postgres
def test_show_does_not_create_a_fresh_postgres_schema(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    import asyncpg  # type: ignore[import-untyped]

    from tests.postgres_helpers import drop_schemas, require_postgres, unique_schema, url

    require_postgres()
    schema = unique_schema()
    store = url(schema, "cli")

    async def found(query: str) -> int:
        conn = await asyncpg.connect(store.split("?")[0])
        try:
            return int(await conn.fetchval(query, schema))
        finally:
            await conn.close()

    schemas = "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1"
    tables = "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1"
    try:
        job_id = post(capsys, board_url, "steps", '{"key": 5}')
        text, progress = show(capsys, job_id, "--board", board_url, "--store", store)
        assert progress["note"].startswith("no progress saved here: the store has no")
        assert progress["note"] in text
        assert anyio.run(found, schemas) == 0
        # A PostgreSQL board in that schema, the store read from the board's URL: the board's
        # tables are there, the store's are not, and show adds none.
        pg_job = post(capsys, store, "steps", '{"key": 6}')
        before = anyio.run(found, tables)
        _, progress = show(capsys, pg_job, "--board", store)
        assert progress["store_from"] == "the board's URL"
        assert progress["note"].startswith("no progress saved here")
        assert anyio.run(found, tables) == before
    finally:
        anyio.run(drop_schemas, schema)
