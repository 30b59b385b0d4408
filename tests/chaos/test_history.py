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


# -- cancels and limits ---------------------------------------------------------------------------


def cancelled_job(token: int | None = 2) -> Any:
    """A job that ended CANCELLED: consumed by ``token``, or (None) ended at once by the board."""
    ended = job(token=token or 0, outcome="CANCELLED")
    if token is None:
        ended.claim = None
    return ended


def cancel(t: float, result: str, **fields: Any) -> dict[str, Any]:
    return {"t": t, "ev": "cancel", "job": "j1", "sent": t - 0.01, "result": result, **fields}


def test_a_cancelled_job_reverted_by_its_heir_breaks_nothing() -> None:
    events = [
        ev(1, "claimed", token=1),
        ev(2, "effect", task="a", token=1),
        ev(3, "atom", atom="a", state="SUCCESS", token=1),
        ev(3.5, "effect", task="b", token=1),
        {"t": 4, "ev": "kill", "victim": A},
        cancel(4.5, "flagged"),
        ev(5, "claimed", B, token=2),  # flagged: reverts from the store, runs nothing
        ev(6, "revert", B, task="b", token=2),
        ev(6.5, "revert", B, task="a", token=2),
        ev(7, "consumed", B, token=2, outcome="CANCELLED"),
    ]
    report = check(events, {"j1": cancelled_job()})
    assert report.violations == []
    assert report.figures["cancelled_by_owner"] == 1 and report.figures["reverted_tasks"] == 2
    assert report.figures["cancelled_by_heir"] == 1  # the claim the cancel flagged died
    assert report.figures["cancel_results"] == {"flagged": 1}
    assert report.figures["cancel_to_consume_p50_s"] == 2.51


def test_a_revert_by_an_owner_that_died_while_reverting_counts() -> None:
    events = [
        ev(1, "claimed", token=1),
        ev(2, "effect", task="a", token=1),
        ev(3, "effect", task="b", token=1),
        cancel(3.5, "flagged"),
        ev(4, "revert", task="b", token=1),  # then A dies before reverting a
        ev(6, "claimed", B, token=2),
        ev(7, "revert", B, task="a", token=2),
        ev(8, "consumed", B, token=2, outcome="CANCELLED"),
    ]
    assert check(events, {"j1": cancelled_job()}).violations == []


def test_a_cancel_consume_without_every_revert_or_followed_by_an_effect_is_reported() -> None:
    events = [
        ev(1, "claimed", token=1),
        ev(2, "effect", task="a", token=1),
        ev(2.5, "revert", task="a", token=1),
        ev(3, "effect", task="b", token=1),  # never reverted
        ev(3.1, "effect", task="a", token=1),  # ran again after its revert: not reverted since
        cancel(3.5, "flagged"),
        ev(4, "consumed", token=1, outcome="CANCELLED"),
        ev(5, "effect", task="c", token=1),  # after the consume
    ]
    report = check(events, {"j1": cancelled_job(token=1)})
    text = "\n".join(report.violations)
    assert "task a's effect (token 1) was not reverted" in text
    assert "task b's effect (token 1) was not reverted" in text
    assert "task c effect (token 1) recorded after its cancel consume" in text
    assert report.figures["unreverted_tasks"] == 2


def test_a_job_never_cancelled_must_not_end_cancelled() -> None:
    events = [ev(1, "claimed", token=1), ev(2, "consumed", token=1, outcome="CANCELLED")]
    report = check(events, {"j1": cancelled_job(token=1)})
    assert "ended CANCELLED but was never cancelled" in "\n".join(report.violations)
    # Named by the caller instead of by a cancel event: fine.
    assert check(events, {"j1": cancelled_job(token=1)}, cancelled=["j1"]).violations == []
    # Cancelled, but consumed CANCELLED before the cancel was sent.
    early = [*events, cancel(3, "flagged")]
    text = "\n".join(check(early, {"j1": cancelled_job(token=1)}).violations)
    assert "consumed CANCELLED before its cancel was sent" in text


def test_a_held_job_must_be_flagged_not_ended_at_once() -> None:
    held = [ev(1, "claimed", token=1), ev(2, "effect", task="a", token=1), cancel(3, "ended")]
    text = "\n".join(check(held, {"j1": cancelled_job(token=None)}).violations)
    assert "ended CANCELLED at once although token 1 held it" in text
    given_back = [*held[:2], ev(2.5, "release_try", token=1), ev(2.6, "released", token=1)]
    given_back.append(cancel(3, "ended"))
    report = check(given_back, {"j1": cancelled_job(token=None)})
    assert report.violations == []
    assert report.figures["cancelled_at_once"] == 1


def test_what_cancel_returned_must_hold() -> None:
    ended_then_claimed = [cancel(1, "ended"), ev(2, "claimed", token=1)]
    text = "\n".join(check(ended_then_claimed, {"j1": job(token=1)}).violations)
    assert "cancel ended it at once, but it ended SUCCESS" in text
    assert "claimed by token 1 after cancel ended it" in text
    had_ended = [
        ev(1, "claimed", token=1),
        ev(2, "consumed", token=1, outcome="SUCCESS"),
        cancel(3, "final", outcome="SUCCESS"),
    ]
    assert check(had_ended, {"j1": job(token=1)}).violations == []
    text = "\n".join(check(had_ended, {"j1": cancelled_job(token=1)}).violations)
    assert "had ended SUCCESS when cancelled, ended CANCELLED" in text


def test_a_success_with_a_task_left_reverted_is_reported() -> None:
    events = [
        ev(1, "claimed", token=1),
        ev(2, "effect", task="a", token=1),
        cancel(2.5, "flagged"),
        ev(3, "revert", task="a", token=1),
        ev(4, "consumed", token=1, outcome="SUCCESS"),
    ]
    text = "\n".join(check(events, {"j1": job(token=1)}).violations)
    assert "consumed SUCCESS, but task a was reverted (token 1) and not run again" in text
    rerun = [*events[:4], ev(3.5, "effect", task="a", token=1), events[4]]
    report = check(rerun, {"j1": job(token=1)})
    assert report.violations == [] and report.figures["cancel_too_late"] == 1


def gauge(seq: int, what: str, job_id: str, pid: int, key: str = "pay") -> dict[str, Any]:
    return {"t": seq, "ev": what, "job": job_id, "key": key, "pid": pid, "seq": seq, "token": 1}


def test_the_peak_of_a_limit_key_is_replayed_from_the_gauge() -> None:
    drop = {"t": 4, "ev": "gauge_drop", "key": "pay", "victim_pid": 10, "seq": 4, "pid": 1}
    events = [
        gauge(1, "gauge_enter", "j1", 10),
        gauge(2, "gauge_enter", "j2", 11),
        gauge(3, "gauge_leave", "j2", 11),
        drop,  # j1's process was SIGKILLed: its run ended with it
        gauge(5, "gauge_enter", "j3", 11),
        gauge(6, "gauge_enter", "j4", 12),
    ]
    final = {j: job(limit_key="pay") for j in ("j1", "j2", "j3", "j4")}
    report = check(events, final, limits={"pay": 2})
    assert report.violations == []
    assert report.figures["limits"] == {"pay": {"limit": 2, "jobs": 4, "runs": 4, "peak": 2}}
    # Without the drop, j1 still runs: three at once.
    over = check([e for e in events if e is not drop], final, limits={"pay": 2})
    assert "limit key pay: 3 runs at once, over its limit of 2" in over.violations
    assert over.figures["limits"]["pay"]["peak"] == 3


def test_a_job_run_twice_at_once_or_under_another_key_is_reported() -> None:
    events = [gauge(1, "gauge_enter", "j1", 10), gauge(2, "gauge_enter", "j1", 11, key="ship")]
    events.append(gauge(3, "gauge_enter", "j1", 12))
    final = {"j1": job(limit_key="pay")}
    text = "\n".join(check(events, final, limits={"pay": 5, "ship": 5}).violations)
    assert "job j1 (limit key pay) ran in two processes at once" in text
    assert "job j1 ran under limit key ship, but was posted with 'pay'" in text
    text = "\n".join(check(events, final, limits={"pay": 5}, limit_keys={"j1": "ship"}).violations)
    assert "job j1 ran under limit key pay, but was posted with 'ship'" in text
