"""``show``'s progress: what the job's store saved of its flow runs, told as the data shows it.

The store is ``--store`` or, as for ``run``, the board's URL where that backend has a store
(:func:`~aioconductor.cli.stores.store_url_for`). It is opened read-only
(``open_store(url, migrate=False)``): nothing is created or migrated, and a store without the
store's schema is one where no progress was saved.

For each flow detail of the job's logbook (a retried job has one per run: ``flow (retry 1)``)
come its state and its atoms in run order (``meta["seq"]``: the order they ended in; those that
never ended follow, as stored), each with its failure and its revert's failure. The job's
counters say how many of its runs ended unfinished (given back, abandoned, lease ran out); a
flow is called resumed only when they show a run after such a run, and only for a job never
retried (its one flow detail is the one every run ran). Atom details record no run count, so
no task is said to have run once or twice: a resumed flow runs the tasks that had ended never
again, and a task that was running when a run stopped from its start.
"""

from __future__ import annotations

import math
import time
from typing import Any

from aioconductor._urls import redact_url
from aioconductor.cli.stores import store_in_memory
from aioconductor.cli.stores import store_url_for
from aioconductor.errors import AioconductorError
from aioconductor.errors import LogBookNotFound
from aioconductor.errors import SchemaMissing
from aioconductor.failure import Failure
from aioconductor.models import Job
from aioconductor.models import JobState
from aioconductor.models import Outcome
from aioconductor.persistence import open_store
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import AtomState
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import FlowState
from aioconductor.persistence.models import LogBook

__all__ = ["progress_lines", "read_progress"]

_FINAL_FLOW = frozenset({FlowState.SUCCESS, FlowState.FAILURE, FlowState.REVERTED})
#: The outcomes only a run holding the job's claim reports (``consume``): the run that ended
#: the job counted an attempt of its own. A cancel may end a job nobody held.
_RUN_OUTCOMES = frozenset({Outcome.SUCCESS, Outcome.REVERTED, Outcome.FAILURE})


async def read_progress(
    job: Job, board_url: str, store_url: str | None, *, now: float | None = None
) -> dict[str, Any]:
    """What the store holds of ``job``'s flow runs, as plain JSON (``show --json``'s
    ``progress``): the store (redacted) and where its URL came from, whether a logbook was
    found (``saved``), a ``note`` when there is nothing to list, the job's runs that ended
    unfinished, and the flow details with their tasks.

    ``store_url`` is ``--store`` (None: the board's URL where its backend has a store). The
    store is opened read-only; a store that cannot be read is reported in ``note``, not
    raised: the job itself was read.
    """
    now = time.time() if now is None else now
    url = store_url_for(board_url, store_url)
    progress: dict[str, Any] = {
        "store": None if url is None else redact_url(url),
        "store_from": None if url is None else ("--store" if store_url else "the board's URL"),
        "saved": False,
        "note": None,
        "unfinished_runs": _unfinished(job, now),
        "flows": [],
    }
    if url is None:
        scheme = board_url.split("://", 1)[0]
        progress["note"] = (
            f"not kept (no store): a {scheme}:// board has no store of its own; give "
            "--store URL to read the one its conductors use"
        )
        return progress
    if store_in_memory(url):
        progress["note"] = (
            "not kept (the store is in memory): what a conductor keeps in its memory cannot "
            "be read from another process"
        )
        return progress
    try:
        async with open_store(url, migrate=False) as store:
            book = await store.get_logbook(job.id)
    except SchemaMissing as exc:
        progress["note"] = (
            f"no progress saved here that this aioconductor can read: {exc}"
            if "older than" in str(exc)
            else "no progress saved here: the store has no aioconductor store schema (nothing "
            "ever saved progress there; show creates nothing)"
        )
        return progress
    except LogBookNotFound:
        progress["note"] = _no_logbook(job, now)
        return progress
    except AioconductorError as exc:
        progress["note"] = f"not read: {type(exc).__name__}: {exc}"
        return progress
    progress["saved"] = True
    progress["flows"] = _flows(job, book, progress["unfinished_runs"], now)
    if not progress["flows"]:
        progress["note"] = "the job's logbook holds no flow run"
    elif any(flow["resumes"] is None for flow in progress["flows"]):
        unfinished = progress["unfinished_runs"]
        progress["note"] = (
            f"{_runs_ended(unfinished)}; the store does not record which flow run each "
            "stopped, nor whether a later run resumed it"
        )
    return progress


def _runs_ended(unfinished: dict[str, int | None]) -> str:
    total = _total(unfinished)
    return f"{total} of the job's runs ended unfinished ({_unfinished_text(unfinished)})"


def _live(job: Job, now: float) -> bool:
    """Whether a run holds the job now (claimed, its lease not yet run out)."""
    return job.state is JobState.CLAIMED and job.claim is not None and job.claim.expires_at > now


def _unfinished(job: Job, now: float) -> dict[str, int | None]:
    """The job's runs that ended unfinished, by how: ``given_back`` (released, the attempt
    given back), ``abandoned`` (a storage or internal failure), ``lease_ran_out`` (ended
    without a word: the process died or stalled). ``lease_ran_out`` is None where the
    counters cannot tell it (a job that ended cancelled or trashed after it was claimed: the
    claim that ended it may or may not have counted an attempt of its own)."""
    if job.state is JobState.COMPLETE:
        current: int | None = 1 if job.outcome in _RUN_OUTCOMES else None
    elif job.state is JobState.TRASHED:
        current = 0 if job.claim is None else None
    else:
        current = 1 if _live(job, now) else 0
    lapsed = None if current is None else max(0, job.attempts - job.abandons - current)
    return {"given_back": job.releases, "abandoned": job.abandons, "lease_ran_out": lapsed}


def _total(unfinished: dict[str, int | None]) -> int:
    return sum(count or 0 for count in unfinished.values())


def _unfinished_text(unfinished: dict[str, int | None]) -> str:
    parts = [
        f"{unfinished['given_back']} given back" if unfinished["given_back"] else "",
        f"{unfinished['abandoned']} abandoned" if unfinished["abandoned"] else "",
        f"{unfinished['lease_ran_out']} whose lease ran out" if unfinished["lease_ran_out"] else "",
    ]
    return ", ".join(part for part in parts if part)


def _no_logbook(job: Job, now: float) -> str:
    """Why the store holds no logbook for ``job``, as far as the job's own record says."""
    if job.claim is None:
        return "no progress saved: the flow never started (the job was never claimed)"
    earlier = job.releases or job.abandons or job.retries or job.attempts > 1
    if job.state is JobState.TRASHED and not earlier:
        return "no progress saved: the flow never started (the job was trashed before it ran)"
    if _live(job, now):
        return (
            "no progress saved in this store yet (its run has not saved its start, or its "
            "conductor saves progress in another store or in its memory)"
        )
    return (
        "no progress saved in this store: the logbook was deleted (purged), or the job's "
        "conductors kept their progress elsewhere (another store, or their memory)"
    )


def _flows(
    job: Job, book: LogBook, unfinished: dict[str, int | None], now: float
) -> list[dict[str, Any]]:
    live = _live(job, now)
    resumes = _resumes(job, unfinished, live)
    return [_flow(flow, resumes, live, job.state.is_final) for flow in book.flows.values()]


def _resumes(job: Job, unfinished: dict[str, int | None], live: bool) -> int | None:
    """How many times the job's flow went on from saved progress after a run of it ended
    unfinished; None where the data cannot tell.

    No run ended unfinished: 0. Otherwise only a job never retried can tell (it has one flow
    detail, the one every run ran; a retried job's runs are not recorded by detail): each
    unfinished run was followed by a run that resumed, but the last one if the job waits for
    its next claim (given back, or its lease ran out); a job that ended cancelled or trashed
    may have ended without a run after the last.
    """
    total = _total(unfinished)
    if unfinished["lease_ran_out"] is not None and total == 0:
        return 0
    if job.retries or unfinished["lease_ran_out"] is None:
        return None
    if live or (job.state is JobState.COMPLETE and job.outcome in _RUN_OUTCOMES):
        return total
    if job.state in (JobState.UNCLAIMED, JobState.SCHEDULED, JobState.CLAIMED):
        return total - 1
    return None


def _flow(flow: FlowDetail, resumes: int | None, live: bool, ended: bool) -> dict[str, Any]:
    note = None
    if flow.state not in _FINAL_FLOW and not live:
        if ended:
            note = "its run stopped here and the job ended: it will not go on"
        else:
            note = "its run stopped here: it goes on from here when the job is claimed again"
    atoms = sorted(
        enumerate(flow.atoms.values()),
        key=lambda item: (item[1].meta.get("seq", math.inf), item[0]),
    )
    return {
        "name": flow.name,
        "uuid": flow.uuid,
        "state": flow.state.value,
        "resumes": resumes,
        "note": note,
        "tasks": [_atom(atom, live, ended) for _, atom in atoms],
    }


def _failure(failure: Failure | None) -> dict[str, Any] | None:
    return None if failure is None else failure.model_dump(mode="json")


def _atom(atom: AtomDetail, live: bool, ended: bool) -> dict[str, Any]:
    note = None
    if atom.state is AtomState.RUNNING and not live:
        note = (
            "it was running when its run stopped and never ended"
            if ended
            else "it was running when its run stopped: it runs again from its start"
        )
    history = atom.meta.get("history")
    return {
        "name": atom.name,
        "kind": atom.kind,
        "state": atom.state.value,
        "seq": atom.meta.get("seq"),
        "intention": atom.intention.value,
        "failure": _failure(atom.failure),
        "revert_failure": _failure(atom.revert_failure),
        "failed_attempts": len(history) if isinstance(history, list) else None,
        "note": note,
    }


def _failure_text(failure: dict[str, Any]) -> str:
    return f"{failure.get('exc_type', '?')}: {failure.get('message', '')}"


def _label(task: dict[str, Any]) -> str:
    return str(task["name"]) + (" (retry controller)" if task["kind"] == "retry" else "")


def _task_line(task: dict[str, Any], width: int) -> str:
    name = _label(task)
    parts = [task["state"]]
    if task["failure"] is not None:
        failed = _failure_text(task["failure"])
        parts.append(failed if task["state"] == "FAILURE" else f"it had failed: {failed}")
    if task["revert_failure"] is not None:
        parts.append(f"its revert failed: {_failure_text(task['revert_failure'])}")
    if task["failed_attempts"]:
        parts.append(f"{task['failed_attempts']} failed attempts of its tasks")
    if task["note"]:
        parts.append(task["note"])
    return f"    {name:<{width}}  {'; '.join(parts)}"


def _resumed_text(resumes: int, unfinished: dict[str, int | None]) -> str:
    return (
        f"resumed {'once' if resumes == 1 else f'{resumes} times'}: {_runs_ended(unfinished)}, "
        "and a run after one goes on from what was saved: tasks that had ended do not run "
        "again, a task that was running runs again from its start"
    )


def progress_lines(progress: dict[str, Any]) -> list[str]:
    """``show``'s progress block, from :func:`read_progress`'s data: a ``progress:`` line
    (the store, or why there is nothing to show), then each flow run and its tasks."""
    if progress["store"] is None:
        return [f"progress: {progress['note']}"]
    lines = [f"progress: {progress['store']} ({progress['store_from']})"]
    if progress["note"]:
        lines.append(f"  {progress['note']}")
    for flow in progress["flows"]:
        head = f"  flow {flow['name']!r}: {flow['state']}"
        if flow["note"]:
            head += f" ({flow['note']})"
        lines.append(head)
        if flow["resumes"]:
            lines.append(f"    ({_resumed_text(flow['resumes'], progress['unfinished_runs'])})")
        width = max((len(_label(task)) for task in flow["tasks"]), default=0)
        lines.extend(_task_line(task, width) for task in flow["tasks"])
        if flow["state"] != FlowState.SUCCESS.value:
            lines.append("    (a task that never started is not saved, so not listed)")
    return lines
