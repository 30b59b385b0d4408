"""The checker's rules for cancelled jobs and fleet-wide limits (called by ``history.check``).

Cancels. The harness writes a ``cancel`` event for every ``board.cancel`` it made: ``job``,
``sent`` (when the call was made) and ``result``, what the call returned: ``ended`` (the job
ended ``CANCELLED`` at once), ``flagged`` (it was claimed: its owner is asked to stop it) or
``final`` (it had ended already, with ``outcome``). Tasks that can be undone write a ``revert``
event (``job``, ``task``, ``token``) when they are reverted. The rules:

- **only a cancelled job ends CANCELLED**, and only after its cancel was sent;
- **what cancel said holds**: a job ended at once stays ``CANCELLED`` and is never claimed
  again; a job that had ended keeps its outcome;
- **a claimed job is flagged, never ended at once**: a job the board ended ``CANCELLED``
  (no claim left on it) was not held by a claim that had not been given back;
- **a cancel is reverted**: a job consumed ``CANCELLED`` has, for every task whose effect was
  recorded (by any owner, since the last retry), a revert recorded after that effect (by the
  consuming owner, or by an earlier one that died while reverting), and no effect or revert of
  it is recorded after the consume;
- **a success is whole**: a job consumed ``SUCCESS`` has no task whose last recorded event is a
  revert.

Limits. A task that holds a slot of a gauge (``tests/chaos/flows.py``) writes ``gauge_enter``
and ``gauge_leave`` (``job``, ``key``: the job's limit key, ``seq``: the gauge's own counter)
under the gauge's lock, and the harness writes ``gauge_drop`` (``key``, ``victim_pid``, ``seq``)
under the same lock when it SIGKILLs a process (its runs end with it). Replayed in ``seq``
order, they give each key's exact number of concurrent runs across processes. The rules:

- **the limit held**: the peak number of concurrent runs of a key's jobs never exceeds its limit;
- **one run at a time**: a job never runs in two processes at once;
- **the key is the job's**: a run is gauged under the limit key its job was posted with.

Figures: ``cancel_requests`` and ``cancel_results`` (by what ``cancel`` returned);
``cancelled`` jobs, ``cancelled_at_once`` by the board, ``cancelled_by_owner`` (consumed
``CANCELLED`` by a conductor; ``cancelled_by_heir`` of them by a later claim than the one the
cancel flagged: its owner died); ``cancel_too_late`` (flagged, but the run ended first and
stands); ``reverts`` recorded, ``reverted_tasks`` and ``unreverted_tasks`` of jobs consumed
``CANCELLED``; ``cancel_to_consume_p50_s`` / ``_max_s`` (from the cancel sent to the consume);
and ``limits``: per key its ``limit``, ``jobs``, ``runs`` (slots taken: runs and reverts of the
gauged task) and ``peak``.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .history import Report

__all__ = ["check_cancels", "check_limits"]

Events = Sequence[Mapping[str, Any]]

#: The verbs that give a claim back, leaving its job claimable (and so ended at once by cancel).
_GIVEN_BACK = ("released", "abandoned", "retried")
_GAUGE = ("gauge_enter", "gauge_leave", "gauge_drop")


def check_cancels(
    report: Report,
    events: Events,
    by_job: Mapping[str, Events],
    final: Mapping[str, Any],
    cancelled: set[str],
) -> None:
    """Check the cancel rules (see the module) and add the cancel figures to ``report``."""
    requests = [e for e in events if e["ev"] == "cancel"]
    results = collections.Counter(str(e.get("result")) for e in requests)
    requested = cancelled | {e["job"] for e in requests}
    sent_at: dict[str, float] = {}
    for request in requests:
        sent_at.setdefault(request["job"], request.get("sent", request["t"]))
    ended_at_once = by_owner = heirs = lost_race = reverted_tasks = unreverted = 0
    latencies: list[float] = []
    for job_id, job in final.items():
        history = by_job.get(job_id, ())
        outcome = str(getattr(job, "outcome", None))
        is_cancelled = str(job.state) == "COMPLETE" and outcome == "CANCELLED"
        for request in (e for e in history if e["ev"] == "cancel"):
            _check_cancel_result(report, job_id, job, history, request)
        if job_id in requested and not is_cancelled and str(job.state) == "COMPLETE":
            flagged = [e for e in history if e["ev"] == "cancel" and e.get("result") == "flagged"]
            lost_race += bool(flagged)
        if not is_cancelled:
            if outcome == "SUCCESS":
                _check_whole(report, job_id, history)
            continue
        if job_id not in requested:
            report.violate(f"job {job_id} ({job.name}) ended CANCELLED but was never cancelled")
            continue
        if job.claim is None:
            ended_at_once += 1
            _check_not_held(report, job_id, history, sent_at.get(job_id, math.inf))
            continue
        by_owner += 1
        held = [
            e["token"] for e in history if e["ev"] == "claimed" and e["t"] < sent_at.get(job_id, 0)
        ]
        heirs += bool(held) and job.claim.token > max(held)
        done, missing = _check_reverted(report, job_id, history, job.claim.token)
        reverted_tasks += done
        unreverted += missing
        consumed = _consume_time(history, job.claim.token)
        if job_id in sent_at:
            if consumed < sent_at[job_id]:
                report.violate(f"job {job_id}: consumed CANCELLED before its cancel was sent")
            elif consumed < math.inf:
                latencies.append(consumed - sent_at[job_id])
    latencies.sort()
    if not (requests or cancelled or ended_at_once or by_owner):
        return  # a scenario without cancels: the rules held, no figures to add
    report.figures.update(
        cancel_requests=len(requests),
        cancel_results=dict(sorted(results.items())),
        cancelled=ended_at_once + by_owner,
        cancelled_at_once=ended_at_once,
        cancelled_by_owner=by_owner,
        cancelled_by_heir=heirs,
        cancel_too_late=lost_race,
        reverts=sum(1 for e in events if e["ev"] == "revert"),
        reverted_tasks=reverted_tasks,
        unreverted_tasks=unreverted,
        cancel_to_consume_p50_s=_rounded(latencies, 0.5),
        cancel_to_consume_max_s=_rounded(latencies, 1.0),
    )


def _rounded(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def _check_cancel_result(
    report: Report, job_id: str, job: Any, history: Events, request: Mapping[str, Any]
) -> None:
    """What ``board.cancel`` returned still holds at the end."""
    result, outcome = request.get("result"), str(getattr(job, "outcome", None))
    if result == "ended":
        if outcome != "CANCELLED":
            report.violate(f"job {job_id}: cancel ended it at once, but it ended {outcome}")
        later = [e for e in history if e["ev"] == "claimed" and e["t"] > request["t"]]
        if later:
            report.violate(
                f"job {job_id}: claimed by token {later[0]['token']} after cancel ended it"
            )
    elif result == "final" and outcome != str(request.get("outcome")):
        report.violate(
            f"job {job_id}: had ended {request.get('outcome')} when cancelled, ended {outcome}"
        )


def _check_not_held(report: Report, job_id: str, history: Events, sent: float) -> None:
    """A job the board ended CANCELLED at once was not held by a claim (its last claim before
    the cancel, if any, was given back before the cancel was sent)."""
    claims = [e for e in history if e["ev"] == "claimed" and e["t"] < sent]
    if not claims:
        return
    token = max(c["token"] for c in claims)
    given = [e for e in history if e["ev"] in _GIVEN_BACK and e["token"] == token]
    if not given:
        report.violate(
            f"job {job_id}: ended CANCELLED at once although token {token} held it (a claimed "
            f"job must be flagged, stopped and reverted)"
        )


def _since_retry(history: Events, until: float) -> list[Mapping[str, Any]]:
    """The job's effects and reverts before ``until``, since its last retry (a retry runs the
    flow afresh: what came before was reverted for it, or was the retried failure)."""
    fresh = max((e["t"] for e in history if e["ev"] == "retried" and e["t"] < until), default=0)
    return [e for e in history if e["ev"] in ("effect", "revert") and fresh < e["t"] <= until]


def _consume_time(history: Events, token: int) -> float:
    """When the consume of ``token`` was accepted (its ``consumed`` event), or, if its owner died
    before writing that, sent (``consume_try``); infinity if neither was recorded."""
    for ev in ("consumed", "consume_try"):
        times = [e["t"] for e in history if e["ev"] == ev and e["token"] == token]
        if times:
            return min(times)
    return math.inf


def _check_reverted(report: Report, job_id: str, history: Events, token: int) -> tuple[int, int]:
    """A job consumed CANCELLED by ``token``: every task that had an effect has a revert after
    it, and nothing of the job ran after the consume. The number of tasks reverted, missed."""
    consumed = _consume_time(history, token)
    outcomes = [e for e in history if e["ev"] == "consumed" and e["token"] == token]
    if outcomes and outcomes[0].get("outcome") not in (None, "CANCELLED"):
        report.violate(f"job {job_id}: consumed {outcomes[0].get('outcome')}, ended CANCELLED")
    last_effect: dict[str, Mapping[str, Any]] = {}
    last_revert: dict[str, float] = {}
    for event in _since_retry(history, consumed):
        if event["ev"] == "effect":
            last_effect[event["task"]] = event
        else:
            last_revert[event["task"]] = event["t"]
    missing = 0
    for task, effect in sorted(last_effect.items()):
        if last_revert.get(task, -math.inf) < effect["t"]:
            missing += 1
            report.violate(
                f"job {job_id}: consumed CANCELLED by token {token}, but task {task}'s effect "
                f"(token {effect['token']}) was not reverted"
            )
    after = [e for e in history if e["ev"] in ("effect", "revert") and e["t"] > consumed]
    for event in after[:3]:
        report.violate(
            f"job {job_id}: task {event['task']} {event['ev']} (token {event['token']}) "
            f"recorded after its cancel consume"
        )
    return len(last_effect) - missing, missing


def _check_whole(report: Report, job_id: str, history: Events) -> None:
    """A job consumed SUCCESS has no task left reverted (its last event an effect)."""
    last: dict[str, Mapping[str, Any]] = {}
    for event in history:
        if event["ev"] in ("effect", "revert"):
            last[event["task"]] = event
    for task, event in sorted(last.items()):
        if event["ev"] == "revert":
            report.violate(
                f"job {job_id}: consumed SUCCESS, but task {task} was reverted (token "
                f"{event['token']}) and not run again"
            )


def check_limits(
    report: Report,
    events: Events,
    final: Mapping[str, Any],
    limits: Mapping[str, int],
    limit_keys: Mapping[str, str | None] | None,
) -> None:
    """Check the limit rules (see the module) and add each key's figures to ``report``."""
    if limit_keys is None:
        limit_keys = {job_id: getattr(job, "limit_key", None) for job_id, job in final.items()}
    gauged: dict[str, list[Mapping[str, Any]]] = collections.defaultdict(list)
    for event in events:
        if event["ev"] in _GAUGE:
            gauged[event["key"]].append(event)
    figures: dict[str, dict[str, Any]] = {}
    for key in sorted(set(limits) | set(gauged)):
        peak, runs = _replay(report, key, gauged.get(key, []), limit_keys)
        limit = limits.get(key)
        jobs = sum(1 for k in limit_keys.values() if k == key)
        figures[key] = {"limit": limit, "jobs": jobs, "runs": runs, "peak": peak}
        if limit is not None and peak > limit:
            report.violate(f"limit key {key}: {peak} runs at once, over its limit of {limit}")
    report.figures["limits"] = figures


def _replay(
    report: Report, key: str, events: list[Mapping[str, Any]], limit_keys: Mapping[str, Any]
) -> tuple[int, int]:
    """Replay one key's gauge in ``seq`` order: its peak of concurrent runs, and its runs."""
    active: dict[tuple[str, int], int] = {}
    peak = runs = 0
    for event in sorted(events, key=lambda e: e["seq"]):
        if event["ev"] == "gauge_drop":
            active = {run: n for run, n in active.items() if run[1] != event["victim_pid"]}
            continue
        job_id, run = event["job"], (event["job"], event["pid"])
        if event["ev"] == "gauge_leave":
            active.pop(run, None)
            continue
        runs += 1
        if job_id in limit_keys and limit_keys[job_id] != key:
            report.violate(
                f"job {job_id} ran under limit key {key}, but was posted with "
                f"{limit_keys[job_id]!r}"
            )
        if any(other == job_id for other, _ in active):
            report.violate(f"job {job_id} (limit key {key}) ran in two processes at once")
        active[run] = event["seq"]
        peak = max(peak, len(active))
    return peak, runs
