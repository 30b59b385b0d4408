"""A Jepsen-style history: conductors append what they did, a checker proves the invariants.

Every conductor process appends one JSON object per line to its own history file (``O_APPEND``
writes of whole lines, so a SIGKILL loses at most the event being written, never corrupts one
already written). The test harness appends its own faults (kill, stop, continue) to a file of its
own. After a scenario, :func:`check` merges the files, reads the board's final state and checks:

- **nothing lost**: every job ends ``COMPLETE`` or ``TRASHED`` on the board;
- **consumed once**: no job has two accepted consumes, and the board's final claim is the one
  whose consume was accepted;
- **fenced**: no consume, trash, abandon, release or retry accepted from a token older than a
  claim of that job made before it was sent (a consume or trash ends the job, so no claim may
  follow it);
- **no overlapping completion**: no two owners both ran the same job to a completed consume;
- **no re-run after resume**: a task whose ``SUCCESS`` was saved before the job was claimed
  again never ran again under a later token (until the job was retried: a retry runs the flow
  afresh).
- **cancels and limits**: only a cancelled job ends ``CANCELLED``, a cancelled job's effects
  are all reverted, and no limit key ever ran more jobs at once than its limit (the rules are
  in :mod:`tests.chaos.history_cancels`).

Events (``ev``), each with ``t`` (epoch seconds), ``proc``, ``pid`` and ``owner``:

======================  =======================================================================
``start``               a conductor started (one per process incarnation)
``claimed``             ``job``, ``token``, ``attempt`` (from ``Event.JOB_CLAIMED``)
``refused``             ``job``, ``token``, ``op``: a board verb or store write refused with
                        ``ClaimLost``
``consume_try``,        ``job``, ``token``: a consume, abandon, release or retry about to be sent
``abandon_try``,
``release_try``,
``retry_try``
``consumed``            ``job``, ``token``, ``outcome`` (from ``Event.JOB_CONSUMED``)
``trashed``             ``job``, ``token``, ``reason`` (from ``Event.JOB_TRASHED``)
``abandoned``           ``job``, ``token`` (from ``Event.JOB_ABANDONED``)
``released``            ``job``, ``token`` (from ``Event.JOB_RELEASED``)
``retried``             ``job``, ``token`` (from ``Event.JOB_RETRIED``)
``lease_lost``          ``job``, ``token`` (from ``Event.LEASE_LOST``)
``effect``              ``job``, ``task``, ``token``: a task's side effect happened
``atom``                ``job``, ``atom``, ``state``, ``token`` (from ``Event.ATOM_STATE``)
``sigterm``,            the conductor's shutdown: SIGTERM received, ``run()`` returned, and
``stopped``,            how long each step took (``step``: unregister, store.aclose,
``shutdown_step``       board.aclose; ``seconds``)
``revert``              ``job``, ``task``, ``token``: a task's side effect was undone
``gauge_enter``,        ``job``, ``key`` (its limit key), ``token``, ``seq``: a run of a limited
``gauge_leave``         job took or gave back a slot of its key's gauge (written under the
                        gauge's lock, ``seq`` its counter)
``kill`` / ``stop`` /   written by the harness: ``target`` (the victim's proc name), ``victim``
``cont`` / ``fault``    (its owner), ``what``
``cancel``              written by the harness: ``job``, ``sent``, ``result`` (``ended``,
                        ``flagged`` or ``final``, with ``outcome``)
``gauge_drop``          written by the harness under a gauge's lock when it SIGKILLs a process:
                        ``key``, ``victim_pid``, ``seq`` (the victim's runs ended)
======================  =======================================================================
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .history_cancels import check_cancels, check_limits

__all__ = ["HistoryWriter", "Report", "check", "load"]

#: The verbs that end a claim but not its job, each with the event written before it is sent.
_GIVE_BACKS = {"abandoned": "abandon_try", "released": "release_try", "retried": "retry_try"}


class HistoryWriter:
    """Appends events to one JSONL file; safe to use from the harness and from conductors."""

    def __init__(self, path: Path | str, proc: str, owner: str = "") -> None:
        self.path = Path(path)
        self.proc = proc
        self.owner = owner
        self.pid = os.getpid()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, ev: str, **fields: Any) -> None:
        """Append one event; one ``write(2)`` per line, so lines never interleave."""
        record = {"t": time.time(), "ev": ev, "proc": self.proc, "pid": self.pid}
        if self.owner:
            record["owner"] = self.owner
        record.update(fields)
        os.write(self._fd, (json.dumps(record, default=str) + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


def load(folder: Path) -> list[dict[str, Any]]:
    """Every event of every ``*.jsonl`` file in ``folder``, by time.

    A line cut short by a SIGKILL (the only way a line can be partial) is skipped.
    """
    events: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    events.sort(key=lambda e: e["t"])
    return events


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    ordered = sorted(values)
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


@dataclass
class Report:
    """The invariants broken (``violations``) and the figures of one scenario."""

    violations: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    reclaim_latencies: list[float] = field(default_factory=list)

    def violate(self, message: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(message)
        self.figures["violations"] = self.figures.get("violations", 0) + 1

    def summary(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.figures.items())


def check(
    events: Iterable[Mapping[str, Any]],
    final: Mapping[str, Any],
    *,
    poison: Iterable[str] = (),
    allow_trashed: Iterable[str] = (),
    cancelled: Iterable[str] = (),
    limits: Mapping[str, int] | None = None,
    limit_keys: Mapping[str, str | None] | None = None,
) -> Report:
    """Check the invariants over ``events`` and the board's ``final`` jobs (id -> ``Job``).

    Args:
        events: the merged history (see :func:`load`).
        final: every job on the board at the end, by id.
        poison: ids of jobs expected to be trashed after ``max_attempts`` runs.
        allow_trashed: ids of other jobs that may end trashed (for example by a bad payload).
        cancelled: ids of jobs cancelled (with those of the ``cancel`` events): only these may
            end ``CANCELLED``.
        limits: limit key -> limit: the peak of each key's gauged runs must stay within it.
        limit_keys: job id -> the limit key it was posted with (default: each final job's
            ``limit_key``).

    Returns:
        The report; ``report.violations`` is empty when every invariant held.
    """
    events = list(events)
    report = Report()
    poison_ids, may_trash = set(poison), set(allow_trashed) | set(poison)
    by_job: dict[str, list[Mapping[str, Any]]] = collections.defaultdict(list)
    for event in events:
        if "job" in event:
            by_job[event["job"]].append(event)

    lost = consumed_twice = stale_accepted = reruns = 0
    duplicate_effects = reverted = trashed = consumed = stale_effects = 0
    refused: collections.Counter[str] = collections.Counter()
    for job_id, job in final.items():
        state = str(job.state)
        if state == "TRASHED":
            trashed += 1
            if job_id not in may_trash:
                report.violate(f"job {job_id} ({job.name}) trashed: {job.trash_reason}")
        elif state == "COMPLETE":
            consumed += 1
            if job_id in poison_ids:
                report.violate(f"poison job {job_id} was consumed")
            if str(job.outcome) == "REVERTED":
                reverted += 1
        else:
            lost += 1
            report.violate(f"job {job_id} ({job.name}) lost: {state} after the run")

    for job_id, history in by_job.items():
        claims = [e for e in history if e["ev"] == "claimed"]
        accepted = [e for e in history if e["ev"] == "consumed"]
        if len(accepted) > 1:
            consumed_twice += 1
            owners = [(e["owner"], e["token"]) for e in accepted]
            report.violate(f"job {job_id} consumed {len(accepted)} times: {owners}")
        for event in history:
            if event["ev"] == "refused":
                refused[event["op"]] += 1
        # Fencing. A consume or trash ends the job, so no claim may follow it, and one that
        # came before it made its token stale: either way, a newer claim means a stale accept.
        # An abandon is stale when a newer claim was made before the abandon was sent.
        for event in history:
            if event["ev"] in ("consumed", "trashed"):
                newer = [c for c in claims if c["token"] > event["token"]]
            elif event["ev"] in _GIVE_BACKS:
                sent = [
                    e["t"]
                    for e in history
                    if e["ev"] == _GIVE_BACKS[event["ev"]]
                    and e["token"] == event["token"]
                    and e["owner"] == event["owner"]
                    and e["t"] <= event["t"]
                ]
                newer = [
                    c for c in claims if c["token"] > event["token"] and sent and c["t"] < max(sent)
                ]
            else:
                continue
            if newer:
                stale_accepted += 1
                report.violate(
                    f"job {job_id}: {event['ev']} accepted from token {event['token']} although "
                    f"token {newer[0]['token']} was claimed"
                )
        job = final.get(job_id)
        if accepted and job is not None and job.claim is not None:
            if accepted[0]["token"] != job.claim.token:
                report.violate(
                    f"job {job_id}: consume by token {accepted[0]['token']} accepted, but the "
                    f"board's final claim is token {job.claim.token}"
                )
        # Two owners both completing: the second consume would be listed above; here the flow
        # ran to its last effect under two tokens whose claims overlapped in time and both were
        # accepted by the board, which would need two accepted consumes, already checked.
        effects: collections.Counter[str] = collections.Counter()
        for event in history:
            if event["ev"] == "effect":
                effects[event["task"]] += 1
                # A zombie's side effect: it ran after a newer claim was made (allowed: tasks
                # run at least once; the zombie's writes and consume are refused).
                if any(c["token"] > event["token"] and c["t"] < event["t"] for c in claims):
                    stale_effects += 1
        if job_id not in poison_ids:
            duplicate_effects += sum(n - 1 for n in effects.values() if n > 1)
        # A task whose SUCCESS was saved before a later claim must not run under that claim,
        # until the job is retried: a retry is a fresh run of the flow, which runs it again.
        retried = [e for e in history if e["ev"] == "retried"]
        for saved in (e for e in history if e["ev"] == "atom" and e["state"] == "SUCCESS"):
            fresh_at = min(
                (r["t"] for r in retried if r["token"] >= saved["token"] and r["t"] > saved["t"]),
                default=float("inf"),
            )
            later_claims = {
                c["token"]
                for c in claims
                if c["token"] > saved["token"] and saved["t"] < c["t"] < fresh_at
            }
            rerun = [
                e
                for e in history
                if e["ev"] == "effect" and e["task"] == saved["atom"] and e["token"] in later_claims
            ]
            if rerun:
                reruns += 1
                report.violate(
                    f"job {job_id}: task {saved['atom']} saved SUCCESS under token "
                    f"{saved['token']} ran again under token {rerun[0]['token']}"
                )

    # Re-claim latency: from a fault (kill, stop) to the next claim of each job its victim held.
    for fault in (e for e in events if e["ev"] in ("kill", "stop")):
        victim = fault.get("victim")
        if not victim:
            continue
        held: dict[str, int] = {}
        for event in events:
            if event["t"] > fault["t"]:
                break
            if event.get("owner") != victim or "job" not in event:
                continue
            if event["ev"] == "claimed":
                held[event["job"]] = event["token"]
            elif event["ev"] in ("consumed", "trashed", "lease_lost", *_GIVE_BACKS):
                held.pop(event["job"], None)
        for job_id, token in held.items():
            heirs = [
                e["t"]
                for e in by_job[job_id]
                if e["ev"] == "claimed" and e["token"] > token and e["t"] > fault["t"]
            ]
            if heirs:
                report.reclaim_latencies.append(min(heirs) - fault["t"])

    poison_attempts = {
        job_id: sum(1 for e in by_job[job_id] if e["ev"] == "claimed") for job_id in poison_ids
    }
    poison_runs = {
        job_id: sum(1 for e in by_job[job_id] if e["ev"] == "effect") for job_id in poison_ids
    }
    latencies = report.reclaim_latencies
    p50, p99 = _percentile(latencies, 50), _percentile(latencies, 99)
    report.figures.update(
        jobs=len(final),
        consumed=consumed,
        trashed=trashed,
        lost=lost,
        consumed_twice=consumed_twice,
        reverted=reverted,
        stale_refused=sum(refused.values()),
        stale_refused_by_op=dict(sorted(refused.items())),
        stale_accepted=stale_accepted,
        completed_task_reruns=reruns,
        duplicate_effects=duplicate_effects,
        stale_effects=stale_effects,
        claims=sum(1 for e in events if e["ev"] == "claimed"),
        lease_lost=sum(1 for e in events if e["ev"] == "lease_lost"),
        faults=sum(1 for e in events if e["ev"] in ("kill", "stop", "fault")),
        reclaims=len(latencies),
        reclaim_p50_s=None if p50 is None else round(p50, 3),
        reclaim_p99_s=None if p99 is None else round(p99, 3),
        reclaim_max_s=round(max(latencies), 3) if latencies else None,
    )
    if poison_ids:
        report.figures["poison_attempts"] = sorted(poison_attempts.values())
        report.figures["poison_runs"] = sorted(poison_runs.values())
    check_cancels(report, events, by_job, final, set(cancelled))
    if limits or any(e["ev"] in ("gauge_enter", "gauge_drop") for e in events):
        check_limits(report, events, final, limits or {}, limit_keys)
    report.figures["violations"] = report.figures.get("violations", 0)
    return report
