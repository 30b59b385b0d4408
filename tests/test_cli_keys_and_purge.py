"""The command line's keys and retention: ``post --key``, ``show --key``, the key column of
``jobs``, ``purge``, durations, and ``run``'s retention options."""

from __future__ import annotations

import argparse
import json
import uuid

import pytest

from aioconductor.cli import main
from aioconductor.cli.parser import build_parser, duration


@pytest.fixture
def board_url() -> str:
    # A process-wide memory board, shared by every command of one test.
    return f"memory://cli_{uuid.uuid4().hex[:12]}"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_post_with_a_held_key_posts_nothing_and_prints_the_holder(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    status, out, err = run_cli(
        capsys, "post", "o", "f", "{}", "--key", "order-7", "--board", board_url
    )
    first = out.strip()
    assert status == 0 and len(first) == 36 and err == ""
    status, out, err = run_cli(
        capsys, "post", "o", "f", '{"n": 2}', "--key", "order-7", "--board", board_url
    )
    assert status == 0 and out.strip() == first
    assert f"key 'order-7' is held by job {first} (UNCLAIMED): nothing posted" in err
    status, out, _ = run_cli(capsys, "jobs", "--board", board_url)
    assert out.count(first) == 1 and "order-7" in out and " key " in out.splitlines()[0] + " "
    status, out, _ = run_cli(capsys, "show", "--key", "order-7", "--json", "--board", board_url)
    assert status == 0 and json.loads(out)["id"] == first and json.loads(out)["key"] == "order-7"


def test_a_bad_key_is_one_line_and_posts_nothing(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    status, _, err = run_cli(capsys, "post", "o", "f", "--key", "a\tb", "--board", board_url)
    assert status != 0 and "control character" in err and len(err.strip().splitlines()) == 1
    status, out, _ = run_cli(capsys, "jobs", "--json", "--board", board_url)
    assert out == ""


def test_show_by_a_key_nobody_holds_fails_clearly(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    status, _, err = run_cli(capsys, "show", "--key", "nobody", "--board", board_url)
    assert status != 0 and "no job holds the key 'nobody'" in err


def test_purge_deletes_finished_jobs_of_the_states_asked_for(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    for name in ("a", "b"):
        run_cli(capsys, "post", name, "f", "--board", board_url)
    status, out, _ = run_cli(capsys, "jobs", "--json", "--board", board_url)
    a, b = (json.loads(line)["id"] for line in out.splitlines())
    run_cli(capsys, "trash", a, "--board", board_url)
    status, out, _ = run_cli(capsys, "purge", "--older-than", "1h", "--board", board_url)
    assert status == 0 and "purged 0 jobs" in out
    argv = ["purge", "--older-than", "0", "--state", "complete", "--board", board_url]
    status, out, _ = run_cli(capsys, *argv)
    assert status == 0 and "purged 0 jobs (COMPLETE)" in out
    status, out, _ = run_cli(capsys, "purge", "--older-than", "0s", "--board", board_url)
    assert status == 0 and "purged 1 jobs (COMPLETE, TRASHED)" in out
    status, out, _ = run_cli(capsys, "jobs", "--json", "--board", board_url)
    assert [json.loads(line)["id"] for line in out.splitlines()] == [b]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("1.5", 1.5),
        ("45s", 45.0),
        ("30m", 1800.0),
        ("12h", 43_200.0),
        ("7d", 604_800.0),
        ("2w", 1_209_600.0),
    ],
)
def test_durations_take_a_unit(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "7y", "-1", "-5m", "inf", "nan", "seven days"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_run_takes_its_retention_as_ages_or_forever() -> None:
    parser = build_parser()
    args = parser.parse_args(["run", "--app", "m:f"])
    assert (args.keep_complete, args.keep_trashed) == (7 * 86_400.0, 30 * 86_400.0)
    argv = ["run", "--app", "m:f", "--keep-complete", "1h", "--keep-trashed", "forever"]
    args = parser.parse_args(argv)
    assert (args.keep_complete, args.keep_trashed) == (3600.0, None)
