"""The dashboard's Starlette app: HTML pages, a JSON API the pages poll, and the actions."""

from __future__ import annotations

import collections
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

from aioconductor.errors import AioconductorError
from aioconductor.errors import DependencyMissing
from aioconductor.errors import JobNotFound
from aioconductor.errors import LogBookNotFound
from aioconductor.errors import UnclaimableJob
from aioconductor.models import ConductorInfo
from aioconductor.models import Job
from aioconductor.models import JobState
from aioconductor.models import LimitInfo
from aioconductor.models import Outcome
from aioconductor.schedules import ScheduleStatus
from aioconductor.schedules import schedule_status

try:
    import jinja2
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse
    from starlette.responses import JSONResponse
    from starlette.responses import Response
    from starlette.routing import Mount
    from starlette.routing import Route
    from starlette.staticfiles import StaticFiles
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise DependencyMissing(
        "the dashboard needs starlette and jinja2: pip install 'aioconductor-taskflow[dashboard]'"
    ) from exc

from aioconductor.boards.base import JobBoard
from aioconductor.dashboard._hosts import AllowedHosts
from aioconductor.dashboard._hosts import HostGuard
from aioconductor.persistence.base import Store

__all__ = ["create_app"]

HERE = Path(__file__).parent
#: The most jobs a list shows (the counts are always complete).
LIST_LIMIT = 200
#: Scripts and styles from this app only: an injected tag would not run even if one got through.
CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'self'"
#: Actions need this header: a cross-site form cannot send it without a CORS preflight.
ACTION_HEADER = "x-aioconductor-action"
#: The actions on a job (``POST /api/jobs/{id}/{action}``), each behind that header.
ACTIONS = ("cancel", "trash", "repost")
#: The reasons the dashboard's actions record on a job.
CANCEL_REASON = "cancelled from the dashboard"
TRASH_REASON = "trashed from the dashboard"


def _when(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _job_row(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.name,
        "flow": job.flow,
        "state": job.state.value,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "owner": job.owner,
        "outcome": None if job.outcome is None else job.outcome.value,
        "trash_reason": job.trash_reason,
        "cancel_reason": job.cancel_reason,
        "cancel_requested": job.cancel_requested,
        "limit_key": job.limit_key,
        "created_at": _when(job.created_at),
        "updated_at": _when(job.updated_at),
    }


def _schedule_row(status: ScheduleStatus) -> dict[str, Any]:
    spec = status.published
    if "cron" in spec:
        when = f"cron {spec['cron']} ({spec.get('timezone', 'UTC')})"
    elif "every" in spec:
        when = f"every {spec['every']} s"
    else:
        when = "no conductor runs it"
    return {
        "name": status.name,
        "flow": spec.get("flow"),
        "when": when,
        "next_tick": _when(status.next_tick),
        "last_tick": _when(status.last_tick),
        "last_job_id": status.last_job_id,
        "last_job_state": status.last_job_state,
        "runners": len(status.conductors),
    }


def _limit_row(info: LimitInfo) -> dict[str, Any]:
    return {"key": info.key, "limit": info.limit, "claimed": info.claimed}


def _conductor_row(info: ConductorInfo, now: float, holding: int | None) -> dict[str, Any]:
    # Live claims on the board, not the heartbeat's figure: that is up to a heartbeat old.
    running = holding if holding is not None else info.meta.get("running")
    capacity = info.meta.get("capacity")
    return {
        "name": info.name,
        "owner": info.owner,
        "running": running if isinstance(running, int) else None,
        "capacity": capacity if isinstance(capacity, int) else None,
        "started_at": _when(info.started_at),
        "heartbeat_age": round(max(0.0, now - info.heartbeat_at), 1),
    }


class _Dashboard:
    """The app's state and its endpoints."""

    def __init__(self, board: JobBoard, store: Store | None, allow_actions: bool) -> None:
        self.board = board
        self.store = store
        self.allow_actions = allow_actions
        self._opened: list[JobBoard | Store] = []
        self._lock = anyio.Lock()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            # Job names, args, results and tracebacks are untrusted: escape all of it.
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    async def ready(self) -> None:
        """Connect the board and store if nobody has (a mounted app gets no lifespan)."""
        if self.board.connected and (self.store is None or self.store.connected):
            return
        async with self._lock:
            for resource in (self.board, self.store):
                if resource is not None and not resource.connected:
                    await resource.connect()
                    self._opened.append(resource)

    async def aclose(self) -> None:
        """Close what :meth:`ready` opened."""
        for resource in reversed(self._opened):
            await resource.aclose()
        self._opened.clear()

    # -- data ----------------------------------------------------------------------------------

    async def summary(self, state: JobState | None) -> dict[str, Any]:
        await self.ready()
        counts = {s.value: await self.board.job_count(state=s) for s in JobState}
        now = time.time()
        holding: collections.Counter[str] = collections.Counter()
        async with contextlib.aclosing(self.board.iterjobs(state=JobState.CLAIMED)) as claimed:
            async for job in claimed:
                if job.claim is not None and job.claim.expires_at > now:
                    holding[job.claim.owner] += 1
        conductors = [
            _conductor_row(info, now, holding[info.owner]) for info in await self.board.conductors()
        ]
        schedules = [_schedule_row(status) for status in await schedule_status(self.board)]
        limits = [_limit_row(info) for info in await self.board.limits()]
        jobs = []
        async with contextlib.aclosing(self.board.iterjobs(state=state)) as found:
            async for job in found:
                jobs.append(_job_row(job))
                if len(jobs) >= LIST_LIMIT:
                    break
        return {
            "counts": counts,
            "total": sum(counts.values()),
            "conductors": conductors,
            "schedules": schedules,
            "limits": limits,
            "jobs": jobs,
            "state": None if state is None else state.value,
            "limit": LIST_LIMIT,
            "now": _when(now),
        }

    async def job_detail(self, job_id: str) -> dict[str, Any]:
        await self.ready()
        job = await self.board.get(job_id)
        detail: dict[str, Any] = {
            "job": _job_row(job),
            "args": job.args,
            "result": job.result,
            "claim": None
            if job.claim is None
            else {
                "owner": job.claim.owner,
                "token": job.claim.token,
                "expires_at": _when(job.claim.expires_at),
                "live": job.state is JobState.CLAIMED and job.claim.expires_at > time.time(),
            },
            "not_before": _when(job.not_before),
            "flows": None,
        }
        if self.store is not None:
            try:
                book = await self.store.get_logbook(job.id)
            except LogBookNotFound:
                detail["flows"] = []
            else:
                detail["flows"] = [
                    {
                        "name": flow.name,
                        "state": flow.state.value,
                        "atoms": [
                            {
                                "name": atom.name,
                                "kind": atom.kind,
                                "state": atom.state.value,
                                "failure": None
                                if atom.failure is None
                                else atom.failure.model_dump(mode="json"),
                                "revert_failure": None
                                if atom.revert_failure is None
                                else atom.revert_failure.model_dump(mode="json"),
                            }
                            for atom in flow.atoms.values()
                        ],
                    }
                    for flow in book.flows.values()
                ]
        return detail

    # -- endpoints -----------------------------------------------------------------------------

    def _render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        base = str(request.scope.get("root_path", "")).rstrip("/")
        html = self.templates.get_template(name).render(
            base=base, allow_actions=self.allow_actions, board=repr(self.board), **context
        )
        return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": CSP})

    async def index(self, request: Request) -> Response:
        state = _state_param(request)
        summary = await self.summary(state)
        return self._render(request, "index.html", summary=summary, states=list(JobState))

    async def job_page(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            detail = await self.job_detail(job_id)
        except JobNotFound:
            return self._render(request, "missing.html", status=404, job_id=job_id)
        pretty = {
            key: None if detail[key] is None else json.dumps(detail[key], indent=2, sort_keys=True)
            for key in ("args", "result")
        }
        return self._render(
            request, "job.html", detail=detail, pretty=pretty, store=self.store is not None
        )

    async def api_summary(self, request: Request) -> Response:
        return JSONResponse(await self.summary(_state_param(request)))

    async def api_job(self, request: Request) -> Response:
        try:
            return JSONResponse(await self.job_detail(request.path_params["job_id"]))
        except JobNotFound as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    async def api_action(self, request: Request) -> Response:
        if not self.allow_actions:
            return JSONResponse(
                {"error": "actions are off (start the dashboard with --allow-actions)"},
                status_code=403,
            )
        if request.headers.get(ACTION_HEADER) != "1":
            return JSONResponse({"error": f"an action needs the {ACTION_HEADER} header"}, 403)
        await self.ready()
        job_id, action = request.path_params["job_id"], request.path_params["action"]
        if action not in ACTIONS:
            return JSONResponse({"error": f"no action {action!r}"}, status_code=404)
        try:
            if action == "cancel":
                return await self._cancel(job_id)
            if action == "trash":
                job = await self.board.trash(job_id, reason=TRASH_REASON)
            else:  # repost
                old = await self.board.get(job_id)
                job = await self.board.post(
                    old.name,
                    old.flow,
                    old.args,
                    priority=old.priority,
                    max_attempts=old.max_attempts,
                    limit_key=old.limit_key,
                )
        except JobNotFound as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except UnclaimableJob as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except AioconductorError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"job": _job_row(job)})

    async def _cancel(self, job_id: str) -> Response:
        """Cancel: 200 with ``cancel`` ``"ended"`` or ``"flagged"``; 409 if the job had ended."""
        before = await self.board.get(job_id)
        job = await self.board.cancel(job_id, reason=CANCEL_REASON)
        if not job.state.is_final:
            return JSONResponse({"job": _job_row(job), "cancel": "flagged"})
        if not before.state.is_final and job.outcome is Outcome.CANCELLED:
            return JSONResponse({"job": _job_row(job), "cancel": "ended"})
        ended = job.state.value if job.outcome is None else f"{job.state} ({job.outcome})"
        error = f"job {job.id} already ended {ended}: it cannot be cancelled"
        return JSONResponse({"error": error, "job": _job_row(job)}, status_code=409)


def _state_param(request: Request) -> JobState | None:
    value = request.query_params.get("state", "").upper()
    return JobState(value) if value in JobState.__members__ else None


def create_app(
    board: JobBoard,
    store: Store | None = None,
    allow_actions: bool = False,
    *,
    allowed_hosts: Iterable[str] = (),
) -> Any:
    """The dashboard as an ASGI app (Starlette), to serve or to mount in another app.

    The board and store are connected on the first request if they are not yet (a mounted app
    gets no lifespan); when the app is served on its own, its lifespan closes what it opened.

    A request is answered only if its ``Host`` header names the address it came in on (for a
    loopback address also ``localhost``, ``127.0.0.1`` and ``[::1]``) or one of
    ``allowed_hosts``; any other gets 400 before a handler runs, so a page whose DNS name was
    rebound to the dashboard's address can neither read it nor use its actions.

    Args:
        board: the job board to show.
        store: the store the conductors save progress in; without it a job's page shows no
            task states or tracebacks.
        allow_actions: show and accept the cancel, trash and re-post actions (off by default: anyone
            who can reach the dashboard could use them).
        allowed_hosts: more names the dashboard answers to, such as the name a reverse proxy
            forwards: ``"ops.example.com"`` (any port) or ``"ops.example.com:8443"`` (that
            port only); ``"*"`` answers every Host (only behind a proxy that checks it).

    Returns:
        A ``starlette.applications.Starlette`` app.

    Raises:
        ConfigurationError: an entry of ``allowed_hosts`` is not a host name.
    """
    hosts = AllowedHosts(allowed_hosts)
    dashboard = _Dashboard(board, store, allow_actions)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                # Bounded and shielded: closing must happen even when shutdown cancels us.
                await dashboard.aclose()

    app = Starlette(
        routes=[
            Route("/", dashboard.index, name="index"),
            Route("/jobs/{job_id}", dashboard.job_page, name="job"),
            Route("/api/summary", dashboard.api_summary, name="api_summary"),
            Route("/api/jobs/{job_id}", dashboard.api_job, name="api_job"),
            Route(
                "/api/jobs/{job_id}/{action}",
                dashboard.api_action,
                methods=["POST"],
                name="api_action",
            ),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[Middleware(HostGuard, hosts=hosts)],
        lifespan=lifespan,
    )
    app.state.dashboard = dashboard
    return app
