"""What the dashboard's pages show, as plain JSON: job rows with their badge, the list's filter
and paging, the throughput and queue-depth charts (geometry for inline SVG), and the panels.

Everything here is data: the templates draw it on the first load and ``dashboard.js`` draws
the same data again from each poll, so the two never disagree on a badge, a link or a bar.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import UTC
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from aioconductor.models import ConductorInfo
from aioconductor.models import EndedCount
from aioconductor.models import Job
from aioconductor.models import JobFilter
from aioconductor.models import JobState
from aioconductor.models import LimitInfo
from aioconductor.models import Outcome
from aioconductor.persistence.models import FlowDetail
from aioconductor.schedules import ScheduleStatus

__all__ = [
    "CHART_BUCKET",
    "ENDINGS",
    "PAGE_SIZE",
    "ListQuery",
    "atom_rows",
    "badge_of",
    "chart_since",
    "conductor_row",
    "depth_chart",
    "job_row",
    "limit_row",
    "schedule_row",
    "throughput_chart",
    "when",
]

#: Jobs on one page of the list.
PAGE_SIZE = 50
#: The most earlier pages a list's URL remembers for its "newer" link.
MAX_TRAIL = 200
#: How a finished job ended, as ``board.ended_counts`` names it, in the charts' order.
ENDINGS = ("SUCCESS", "REVERTED", "FAILURE", "CANCELLED", "TRASHED")
#: The throughput chart: the last hour, one bar a minute.
CHART_SPAN = 3600.0
CHART_BUCKET = 60.0
_MAX_TEXT = 255


def when(ts: float | None) -> str | None:
    """Epoch seconds as ``YYYY-MM-DD HH:MM:SS UTC`` (None stays None)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def badge_of(job: Job) -> str:
    """The badge a job wears: its outcome once it ended (``SUCCESS``, ``REVERTED``,
    ``FAILURE``, ``CANCELLED``), ``TRASHED``, or else its state."""
    if job.state is JobState.COMPLETE and job.outcome is not None:
        return str(job.outcome)
    return str(job.state)


def job_row(job: Job) -> dict[str, Any]:
    """A job as the list and the job page show it."""
    return {
        "id": job.id,
        "seq": job.seq,
        "name": job.name,
        "key": job.key,
        "flow": job.flow,
        "state": job.state.value,
        "badge": badge_of(job),
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "owner": job.owner,
        "outcome": None if job.outcome is None else job.outcome.value,
        "trash_reason": job.trash_reason,
        "cancel_reason": job.cancel_reason,
        "cancel_requested": job.cancel_requested,
        "limit_key": job.limit_key,
        "headers": dict(job.headers),
        "created_at": when(job.created_at),
        "updated_at": when(job.updated_at),
    }


def schedule_row(status: ScheduleStatus) -> dict[str, Any]:
    """A schedule as its panel shows it."""
    spec = status.published
    if "cron" in spec:
        every = f"cron {spec['cron']} ({spec.get('timezone', 'UTC')})"
    elif "every" in spec:
        every = f"every {spec['every']} s"
    else:
        every = "no conductor runs it"
    return {
        "name": status.name,
        "flow": spec.get("flow"),
        "when": every,
        "next_tick": when(status.next_tick),
        "last_tick": when(status.last_tick),
        "last_job_id": status.last_job_id,
        "last_job_state": status.last_job_state,
        "runners": len(status.conductors),
    }


def limit_row(info: LimitInfo) -> dict[str, Any]:
    """A concurrency limit as its panel shows it."""
    return {"key": info.key, "limit": info.limit, "claimed": info.claimed}


def conductor_row(info: ConductorInfo, now: float, holding: int | None) -> dict[str, Any]:
    """A live conductor with its load: ``holding`` is its live claims on the board."""
    # Live claims on the board, not the heartbeat's figure: that is up to a heartbeat old.
    running = holding if holding is not None else info.meta.get("running")
    capacity = info.meta.get("capacity")
    return {
        "name": info.name,
        "owner": info.owner,
        "running": running if isinstance(running, int) else None,
        "capacity": capacity if isinstance(capacity, int) else None,
        "started_at": when(info.started_at),
        "heartbeat_age": round(max(0.0, now - info.heartbeat_at), 1),
    }


def atom_rows(flow: FlowDetail) -> list[dict[str, Any]]:
    """A flow run's tasks in run order: those that ended by ``meta["seq"]`` (the order they
    ended in), then those that never ended, as stored; with each run's start and end times
    and duration where the engine saved them (``meta["started"]``, ``meta["ended"]``: flows
    saved by a version before these were kept have none)."""
    atoms = list(flow.atoms.values())
    ended = sorted((a for a in atoms if isinstance(a.meta.get("seq"), int)), key=_seq)
    rest = [a for a in atoms if not isinstance(a.meta.get("seq"), int)]
    return [
        {
            "name": atom.name,
            "kind": atom.kind,
            "state": atom.state.value,
            "order": atom.meta.get("seq"),
            "started": when(_stamp(atom, "started")),
            "ended": when(_stamp(atom, "ended")),
            "duration": _duration(atom),
            "failure": None if atom.failure is None else atom.failure.model_dump(mode="json"),
            "revert_failure": None
            if atom.revert_failure is None
            else atom.revert_failure.model_dump(mode="json"),
        }
        for atom in ended + rest
    ]


def _seq(atom: Any) -> int:
    return int(atom.meta["seq"])


def _stamp(atom: Any, name: str) -> float | None:
    value = atom.meta.get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _duration(atom: Any) -> str | None:
    """How long the atom's last run took, for people (``0.042 s``, ``3 m 04 s``)."""
    started, ended = _stamp(atom, "started"), _stamp(atom, "ended")
    if started is None or ended is None or ended < started:
        return None
    seconds = ended - started
    if seconds < 60:
        return f"{seconds:.3f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} m {rest:02d} s"


# -- the list's filter and paging ----------------------------------------------------------------


def _int(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 19:
        return None
    return int(value)


@dataclasses.dataclass(frozen=True)
class ListQuery:
    """The job list's filter and page, as the URL's query string carries them.

    ``before`` is the page's keyset bound (jobs with a lower ``seq``; None: the newest page);
    ``trail`` holds the ``before`` of each earlier page after the first, oldest first, so the
    "newer" link can go back one page (the board pages one way only).
    """

    state: JobState | None = None
    outcome: Outcome | None = None
    flow: str | None = None
    text: str | None = None
    before: int | None = None
    trail: tuple[int, ...] = ()

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> ListQuery:
        """From a query string; what does not parse is left out (never an error page)."""
        state = params.get("state", "").strip().upper()
        outcome = params.get("outcome", "").strip().upper()
        flow = params.get("flow", "").strip()[:_MAX_TEXT] or None
        text = params.get("text", "").strip()[:_MAX_TEXT] or None
        before = _int(params.get("before"))
        trail = tuple(
            n for n in (_int(p) for p in params.get("trail", "").split(".")) if n is not None
        )
        return cls(
            state=JobState(state) if state in JobState.__members__ else None,
            outcome=Outcome(outcome) if outcome in Outcome.__members__ else None,
            flow=flow,
            text=text,
            before=before,
            trail=trail[-MAX_TRAIL:] if before is not None else (),
        )

    @property
    def where(self) -> JobFilter:
        """The board's filter."""
        return JobFilter(state=self.state, outcome=self.outcome, flow=self.flow, text=self.text)

    def filters(self) -> dict[str, str]:
        """The filter's query parameters (only those set)."""
        found = {"state": self.state, "outcome": self.outcome, "flow": self.flow}
        found["text"] = self.text
        return {name: str(value) for name, value in found.items() if value is not None}

    def with_state(self, state: JobState | None) -> str:
        """The query string of the newest page of this filter with ``state`` instead."""
        return dataclasses.replace(self, state=state, before=None, trail=()).href(None, ())

    def href(self, before: int | None, trail: tuple[int, ...]) -> str:
        """The query string (``?...``, or ``?`` alone) of this filter's page ``before``."""
        params = self.filters()
        if before is not None:
            params["before"] = str(before)
            if trail:
                params["trail"] = ".".join(map(str, trail[-MAX_TRAIL:]))
        return "?" + urlencode(params)

    def links(self, next_before: int | None) -> dict[str, str | None]:
        """The "older", "newer" and "newest" links of the page (None where there is none)."""
        older = None
        if next_before is not None:
            trail = (*self.trail, self.before) if self.before is not None else ()
            older = self.href(next_before, trail)
        newer = None
        if self.before is not None:
            newer = (
                self.href(self.trail[-1], self.trail[:-1]) if self.trail else self.href(None, ())
            )
        newest = None if self.before is None else self.href(None, ())
        return {"older": older, "newer": newer, "newest": newest}


# -- charts: geometry for inline SVG -------------------------------------------------------------

THROUGHPUT_W, THROUGHPUT_H, THROUGHPUT_PAD = 720, 160, 28
DEPTH_W, DEPTH_BAR, DEPTH_GAP, DEPTH_LABEL = 360, 18, 8, 96


def chart_since(now: float) -> float:
    """The start of the throughput chart's oldest minute (its bars end with the current one)."""
    return math.floor(now / CHART_BUCKET) * CHART_BUCKET - CHART_SPAN + CHART_BUCKET


def throughput_chart(counts: list[EndedCount], now: float) -> dict[str, Any]:
    """Jobs finished per minute over the last hour, stacked by ending: the SVG's bars (each
    with its minute, ending and count as a title), the axis labels, and the totals."""
    first = round(chart_since(now))
    starts = [first + round(CHART_BUCKET) * i for i in range(round(CHART_SPAN / CHART_BUCKET))]
    per: dict[int, dict[str, int]] = {start: {} for start in starts}
    totals = dict.fromkeys(ENDINGS, 0)
    for count in counts:
        bucket = per.get(round(count.start))
        if bucket is None or count.ending not in totals:
            continue
        bucket[count.ending] = bucket.get(count.ending, 0) + count.count
        totals[count.ending] += count.count
    peak = max((sum(b.values()) for b in per.values()), default=0)
    plot_h = THROUGHPUT_H - THROUGHPUT_PAD
    step = (THROUGHPUT_W - THROUGHPUT_PAD) / len(starts)
    rects: list[dict[str, Any]] = []
    for i, start in enumerate(starts):
        y = float(plot_h)
        for ending in ENDINGS:
            n = per[start].get(ending, 0)
            if not n:
                continue
            h = plot_h * n / peak
            y -= h
            rects.append({
                "x": round(THROUGHPUT_PAD + i * step + 1, 1), "y": round(y, 1),
                "w": round(max(step - 2, 1), 1), "h": round(h, 1),
                "cls": f"ending-{ending}",
                "title": f"{when(start)}: {n} {ending}",
            })  # fmt: skip
    labels = [
        {"x": THROUGHPUT_PAD - 4, "y": 10, "text": str(peak), "anchor": "end"},
        {"x": THROUGHPUT_PAD - 4, "y": plot_h, "text": "0", "anchor": "end"},
        {"x": THROUGHPUT_PAD, "y": THROUGHPUT_H - 8, "text": "-60 min", "anchor": "start"},
        {"x": THROUGHPUT_W, "y": THROUGHPUT_H - 8, "text": "now", "anchor": "end"},
    ]
    return {
        "width": THROUGHPUT_W,
        "height": THROUGHPUT_H,
        "rects": rects,
        "labels": labels,
        "peak": peak,
        "totals": totals,
        "total": sum(totals.values()),
        "buckets": [
            {"start": when(start), **{e: per[start].get(e, 0) for e in ENDINGS}} for start in starts
        ],
    }


def depth_chart(counts: Mapping[str, int]) -> dict[str, Any]:
    """The jobs in each state as horizontal bars (scaled to the largest count)."""
    peak = max(counts.values(), default=0)
    span = DEPTH_W - DEPTH_LABEL - 60
    rects: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for i, state in enumerate(JobState):
        n = counts.get(state.value, 0)
        y = i * (DEPTH_BAR + DEPTH_GAP)
        w = round(span * n / peak, 1) if peak else 0
        labels.append({"x": DEPTH_LABEL - 6, "y": y + 13, "text": state.value, "anchor": "end"})
        rects.append({
            "x": DEPTH_LABEL, "y": y, "w": max(w, 1 if n else 0), "h": DEPTH_BAR,
            "cls": f"state-{state.value}", "title": f"{n} {state.value}",
        })  # fmt: skip
        labels.append({"x": DEPTH_LABEL + w + 6, "y": y + 13, "text": str(n), "anchor": "start"})
    height = len(JobState) * (DEPTH_BAR + DEPTH_GAP)
    return {"width": DEPTH_W, "height": height, "rects": rects, "labels": labels}
