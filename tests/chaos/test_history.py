"""The history checker catches each broken invariant (so that a clean report means something)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from .history import check

A, B = "owner-a", "owner-b"


def job(state: str = "COMPLETE", token: int = 1, **extra: Any) -> Any:
    claim = SimpleNamespace(token=token)
    fields = {"name": "j", "outcome": "SUCCESS", "trash_reason": None, **extra}
    return SimpleNamespace(state=state, claim=claim, **fields)


def ev(t: float, ev: str, owner: str = A, **fields: Any) -> dict[str, Any]:
    return {"t": t, "ev": ev, "owner": owner, "job": "j1", **fields}


def test_a_clean_history_breaks_nothing_and_measures_the_reclaim() -> None:
    events = [
        ev(1, "claimed", token=1),
        ev(2, "effect", task="a", token=1),
        ev(3, "atom", atom="a", state="SUCCESS", token=1),
        {"t": 4, "ev": "kill", "victim": A},
        ev(5.5, "claimed", B, token=2),
        ev(6, "effect", task="b", token=2),
        ev(7, "consumed", B, token=2),
    ]
    report = check(events, {"j1": job(token=2)})
    assert report.violations == []
    assert report.reclaim_latencies == [1.5]
    assert report.figures["lost"] == 0 and report.figures["consumed"] == 1


def test_every_broken_invariant_is_reported() -> None:
    events = [
        ev(1, "claimed", token=1),
        ev(2, "atom", atom="a", state="SUCCESS", token=1),
        ev(3, "claimed", B, token=2),
        ev(4, "effect", B, task="a", token=2),  # re-ran a task saved before the claim
        ev(5, "consumed", A, token=1),  # stale consume accepted
        ev(6, "consumed", B, token=2),  # and consumed twice
        ev(7, "abandon_try", A, token=1),
    ]
    report = check(events, {"j1": job(token=2), "j2": job(state="CLAIMED")})
    text = "\n".join(report.violations)
    assert "consumed 2 times" in text
    assert "consumed accepted from token 1" in text
    assert "task a saved SUCCESS under token 1 ran again under token 2" in text
    assert "lost: CLAIMED" in text
    assert report.figures["stale_accepted"] == 1 and report.figures["completed_task_reruns"] == 1


def test_an_abandon_is_stale_only_if_a_newer_claim_came_before_it_was_sent() -> None:
    fine = [
        ev(1, "claimed", token=1),
        ev(2, "abandon_try", token=1),
        ev(2.1, "claimed", B, token=2),  # the reply of the abandon was slower than B
        ev(2.2, "abandoned", token=1),
        ev(3, "consumed", B, token=2),
    ]
    assert check(fine, {"j1": job(token=2)}).violations == []
    stale = [
        ev(1, "claimed", token=1),
        ev(2, "claimed", B, token=2),
        ev(3, "abandon_try", token=1),
        ev(3.1, "abandoned", token=1),
        ev(4, "consumed", B, token=2),
    ]
    assert check(stale, {"j1": job(token=2)}).figures["stale_accepted"] == 1


def test_poison_jobs_must_be_trashed() -> None:
    events = [ev(t, "claimed", token=t) for t in (1, 2, 3, 4)]
    events += [ev(t + 0.5, "effect", task="die", token=t) for t in (1, 2, 3)]
    trashed = job(state="TRASHED", token=4, trash_reason="max_attempts=3")
    report = check(events, {"j1": trashed}, poison=["j1"])
    assert report.violations == []
    assert report.figures["poison_attempts"] == [4] and report.figures["poison_runs"] == [3]
    assert check(events, {"j1": job()}, poison=["j1"]).violations


def test_a_retry_runs_the_flow_afresh_but_a_stale_retry_or_release_is_caught() -> None:
    events = [
        ev(1, "claimed", token=1),
        ev(2, "atom", atom="a", state="SUCCESS", token=1),
        ev(3, "retry_try", token=1),
        ev(3.1, "retried", token=1),
        ev(4, "claimed", B, token=2),
        ev(5, "effect", B, task="a", token=2),  # a retry runs every task again: allowed
        ev(6, "release_try", B, token=2),
        ev(6.1, "released", B, token=2),
        ev(7, "claimed", A, token=3),
        ev(8, "consumed", A, token=3),
    ]
    assert check(events, {"j1": job(token=3)}).violations == []
    stale = [
        ev(1, "claimed", token=1),
        ev(2, "claimed", B, token=2),
        ev(3, "release_try", token=1),
        ev(3.1, "released", token=1),  # accepted from a token older than a claim before it
        ev(4, "retry_try", B, token=2),
        ev(4.1, "retried", B, token=2),
        ev(5, "claimed", token=3),
        ev(6, "retry_try", B, token=2),
        ev(6.1, "retried", B, token=2),  # and again, after token 3 was claimed
        ev(7, "consumed", token=3),
    ]
    text = "\n".join(check(stale, {"j1": job(token=3)}).violations)
    assert "released accepted from token 1 although token 2 was claimed" in text
    assert "retried accepted from token 2 although token 3 was claimed" in text
