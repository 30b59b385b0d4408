"""The command line's cancel and concurrency limits: ``cancel``, ``limits`` (list, ``set``,
``remove``), ``post --limit-key``, and what ``show`` and ``jobs`` say of them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from aioconductor import JobBoard, JobState, Outcome, open_board
from aioconductor.cli import main
from aioconductor.cli.parser import build_parser
from aioconductor.models import Claim, Job

T = TypeVar("T")


@pytest.fixture(params=["memory", "sqlite"])
def board_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A board every command of one test and on_board() share: a process-wide memory board,
    or a SQLite file."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return f"memory://cli_{uuid.uuid4().hex[:12]}"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def on_board(url: str, action: Callable[[JobBoard], Awaitable[T]]) -> T:
    """Run ``action`` on the board of ``url`` (what a conductor would do meanwhile)."""

    async def go() -> T:
        async with open_board(url) as board:
            return await action(board)

    return anyio.run(go)


def get(url: str, job_id: str) -> Job:
    return on_board(url, lambda board: board.get(job_id))


def post(capsys: pytest.CaptureFixture[str], url: str, *extra: str) -> str:
    status, out, err = run_cli(capsys, "post", "order", "noop", "{}", *extra, "--board", url)
    assert status == 0, err
    return out.strip()


def show(capsys: pytest.CaptureFixture[str], url: str, job_id: str) -> dict[str, Any]:
    status, out, err = run_cli(capsys, "show", job_id, "--json", "--board", url)
    assert status == 0, err
    shown: dict[str, Any] = json.loads(out)
    return shown


# -- cancel --------------------------------------------------------------------------------------


def test_cancel_of_a_waiting_job_ends_it_cancelled_at_once(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    job_id = post(capsys, board_url)
    argv = ["cancel", job_id, "--reason", "customer withdrew", "--board", board_url]
    status, out, err = run_cli(capsys, *argv)
    assert status == 0 and err == ""
    assert out == f"{job_id} cancelled: ended COMPLETE (CANCELLED) at once: customer withdrew\n"
    job = get(board_url, job_id)
    assert job.state is JobState.COMPLETE and job.outcome is Outcome.CANCELLED
    assert job.cancel_reason == "customer withdrew" and job.result == {}

    shown = show(capsys, board_url, job_id)
    assert shown["outcome"] == "CANCELLED" and shown["cancel_reason"] == "customer withdrew"
    assert shown["cancel_requested"] is False
    status, out, _ = run_cli(capsys, "jobs", "--board", board_url)
    [row] = [line for line in out.splitlines() if job_id in line]
    assert "COMPLETE" in row and row.endswith("CANCELLED: customer withdrew")


def test_cancel_of_a_scheduled_job_ends_it_and_the_default_reason_says_who(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    job_id = post(capsys, board_url, "--delay", "3600")
    assert get(board_url, job_id).state is JobState.SCHEDULED
    status, out, _ = run_cli(capsys, "cancel", job_id, "--board", board_url)
    assert status == 0 and "cancelled: ended COMPLETE (CANCELLED) at once" in out
    job = get(board_url, job_id)
    assert job.outcome is Outcome.CANCELLED and job.cancel_reason == "cancelled by an operator"


def test_cancel_of_an_ended_job_changes_nothing_and_exits_1_like_trash(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    cancelled, trashed = post(capsys, board_url), post(capsys, board_url)
    run_cli(capsys, "cancel", cancelled, "--reason", "first", "--board", board_url)
    run_cli(capsys, "trash", trashed, "--board", board_url)
    before = get(board_url, cancelled)

    status, out, err = run_cli(
        capsys, "cancel", cancelled, "--reason", "second", "--board", board_url
    )
    assert status == 1 and out == ""
    assert (
        err
        == f"aioconductor cancel: job {cancelled} already ended COMPLETE (CANCELLED): unchanged\n"
    )
    after = get(board_url, cancelled)
    assert after.cancel_reason == "first" and after.updated_at == before.updated_at

    status, out, err = run_cli(capsys, "cancel", trashed, "--board", board_url)
    assert status == 1 and out == "" and f"job {trashed} already ended TRASHED: unchanged" in err
    job = get(board_url, trashed)
    assert job.state is JobState.TRASHED and job.cancel_reason is None
    # trash refuses an ended job the same way.
    status, _, err = run_cli(capsys, "trash", trashed, "--board", board_url)
    assert status == 1 and "already TRASHED" in err


def test_cancel_of_a_claimed_job_flags_it_for_its_owner(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    job_id = post(capsys, board_url)
    claim: Claim = on_board(board_url, lambda board: board.claim(job_id, "conductor-7", lease=600))

    argv = ["cancel", job_id, "--reason", "wrong amount", "--board", board_url]
    status, out, err = run_cli(capsys, *argv)
    assert status == 0 and err == ""
    assert out == (
        f"{job_id} flagged for cancel: its owner conductor-7 is stopping it and reverting what"
        " it did (reason: wrong amount)\n"
    )
    job = get(board_url, job_id)
    assert job.state is JobState.CLAIMED and job.owner == "conductor-7"
    assert job.cancel_requested and job.cancel_reason == "wrong amount" and job.outcome is None
    renewed = on_board(board_url, lambda board: board.renew(claim))
    assert renewed.cancel_requested

    shown = show(capsys, board_url, job_id)
    assert shown["state"] == "CLAIMED" and shown["cancel_requested"] is True
    assert shown["cancel_reason"] == "wrong amount"
    status, out, _ = run_cli(capsys, "jobs", "--board", board_url)
    [row] = [line for line in out.splitlines() if job_id in line]
    assert "CLAIMED" in row and row.endswith("cancel requested: wrong amount")

    # Again: the first reason stays, and the command says it was flagged before.
    status, out, _ = run_cli(capsys, "cancel", job_id, "--reason", "other", "--board", board_url)
    assert status == 0 and f"{job_id} was already flagged for cancel: its owner" in out
    assert "(reason: wrong amount)" in out
    assert get(board_url, job_id).cancel_reason == "wrong amount"


def test_cancel_of_a_flagged_job_given_back_says_the_next_claim_reverts_it(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    job_id = post(capsys, board_url)

    async def flag_and_release(board: JobBoard) -> Job:
        claim = await board.claim(job_id, "conductor-7")
        await board.cancel(job_id, reason="stop")
        return await board.release(claim)

    assert on_board(board_url, flag_and_release).state is JobState.UNCLAIMED
    status, out, _ = run_cli(capsys, "cancel", job_id, "--board", board_url)
    assert status == 0
    assert out == (
        f"{job_id} was already flagged for cancel: it is UNCLAIMED, the next conductor to"
        " claim it reverts it (reason: stop)\n"
    )
    assert show(capsys, board_url, job_id)["cancel_requested"] is True


def test_cancel_of_an_unknown_job_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    status, out, err = run_cli(capsys, "cancel", "no-such-job", "--board", board_url)
    assert status == 1 and out == ""
    assert err == "aioconductor cancel: error: no job 'no-such-job' on this board\n"


def test_cancel_and_trash_say_which_reverts_in_their_help() -> None:
    helps = " ".join(build_parser().format_help().split())
    assert "trash drop a job now, without reverting what it did" in helps
    assert "cancel stop a job and revert what it did (ends it at once if nobody runs it)" in helps


# -- limits --------------------------------------------------------------------------------------


def test_post_with_a_limit_key_counts_against_the_limit_set(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    first, second = (post(capsys, board_url, "--limit-key", "payments") for _ in range(2))
    free = post(capsys, board_url)
    assert show(capsys, board_url, first)["limit_key"] == "payments"
    assert show(capsys, board_url, free)["limit_key"] is None

    status, out, _ = run_cli(capsys, "limits", "set", "payments", "1", "--board", board_url)
    assert status == 0
    assert out == "limit key 'payments': at most 1 claimed at once, 0 claimed now\n"

    async def claim_all(board: JobBoard) -> list[str]:
        claimed = []
        while (found := await board.claim_next("worker")) is not None:
            claimed.append(found[0].id)
        return claimed

    # One payments job at most: the second is passed over, the unlimited job is taken.
    assert on_board(board_url, claim_all) == [first, free]
    assert get(board_url, second).state is JobState.UNCLAIMED

    status, out, _ = run_cli(capsys, "limits", "--board", board_url)
    assert status == 0
    assert out.splitlines() == ["key       limit  claimed", "payments      1        1"]
    status, out, _ = run_cli(capsys, "limits", "--json", "--board", board_url)
    assert [json.loads(line) for line in out.splitlines()] == [
        {"key": "payments", "limit": 1, "claimed": 1}
    ]

    status, out, _ = run_cli(capsys, "limits", "remove", "payments", "--board", board_url)
    assert status == 0
    assert out == "limit key 'payments': limit removed, its jobs are claimed freely\n"
    assert on_board(board_url, claim_all) == [second]
    status, out, _ = run_cli(capsys, "limits", "--json", "--board", board_url)
    assert status == 0 and out == ""


def test_limits_set_0_pauses_and_remove_of_no_limit_changes_nothing(
    capsys: pytest.CaptureFixture[str], board_url: str
) -> None:
    status, out, _ = run_cli(capsys, "limits", "--board", board_url, "set", "reports", "0")
    assert status == 0
    assert (
        out
        == "limit key 'reports': at most 0 (its jobs are paused) claimed at once, 0 claimed now\n"
    )
    assert on_board(board_url, lambda board: board.limits())[0].limit == 0
    status, out, _ = run_cli(capsys, "limits", "set", "reports", "4", "--board", board_url)
    assert status == 0 and on_board(board_url, lambda board: board.limits())[0].limit == 4
    status, out, _ = run_cli(capsys, "limits", "remove", "nobody", "--board", board_url)
    assert status == 0 and out == "limit key 'nobody': no limit set, nothing removed\n"
    assert [info.key for info in on_board(board_url, lambda board: board.limits())] == ["reports"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["limits", "set", "k", "-1"], "a limit must be from 0 to 1,000,000, got -1"),
        (["limits", "set", "k", "1000001"], "a limit must be from 0 to 1,000,000"),
        (["limits", "set", " k", "2"], "whitespace"),
        (["post", "j", "f", "--limit-key", "a\tb"], "control character"),
        (["limits"], "--board"),
    ],
)
def test_bad_limits_and_limit_keys_are_one_line_and_change_nothing(
    capsys: pytest.CaptureFixture[str], board_url: str, argv: list[str], message: str
) -> None:
    status, out, err = run_cli(
        capsys, *argv, *(["--board", board_url] if argv != ["limits"] else [])
    )
    assert status == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    if argv != ["limits"]:
        assert on_board(board_url, lambda board: board.limits()) == []
        assert on_board(board_url, lambda board: board.job_count()) == 0


def test_limits_set_takes_an_integer(capsys: pytest.CaptureFixture[str], board_url: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["limits", "set", "k", "many", "--board", board_url])
    assert exited.value.code == 2 and "invalid int value: 'many'" in capsys.readouterr().err
