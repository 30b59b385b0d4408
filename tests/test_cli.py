"""The ``aioconductor`` command: every subcommand, and its errors as one clear line."""

from __future__ import annotations

import json
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

    status, out, _ = run_cli(capsys, "show", job_id, "--board", board_url)
    shown = json.loads(out)
    assert status == 0 and shown["id"] == job_id and shown["args"] == {"key": 5}

    status, out, _ = run_cli(capsys, "trash", job_id, "--board", board_url, "--reason", "oops")
    assert status == 0 and "trashed: oops" in out
    status, out, _ = run_cli(capsys, "jobs", "--board", board_url, "--json")
    assert json.loads(out.splitlines()[0])["state"] == "TRASHED"


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
        (["show", "00000000-0000-4000-8000-000000000000", "--board", "BOARD"], "no job"),
        (["trash", "nope", "--board", "BOARD"], "no job"),
        (["jobs"], "--board"),
        (["jobs", "--board", "ftp://x"], "no board backend for URL scheme 'ftp'"),
        (["jobs", "--board", "memory://?namespace=Bad-Name"], "namespace"),
        (["run", "--board", "BOARD", "--app", "no.such.module:flows"], "cannot import"),
        (["run", "--board", "BOARD", "--app", "tests.apps"], "module:registry"),
        (["demo", "--jobs", "0"], "--jobs"),
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
