"""The dashboard's Starlette app: HTML pages, a JSON API the pages poll, and the actions."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import anyio

from aioconductor.errors import AioconductorError
from aioconductor.errors import DependencyMissing
from aioconductor.errors import JobNotFound
from aioconductor.errors import LogBookNotFound
from aioconductor.errors import UnclaimableJob
from aioconductor.models import JobState
from aioconductor.models import Outcome
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
from aioconductor.dashboard._bulk import BULK_ACTIONS
from aioconductor.dashboard._bulk import BULK_LIMIT
from aioconductor.dashboard._bulk import CANCEL_REASON
from aioconductor.dashboard._bulk import TRASH_REASON
from aioconductor.dashboard._bulk import bulk
from aioconductor.dashboard._bulk import repost
from aioconductor.dashboard._hosts import AllowedHosts
from aioconductor.dashboard._hosts import HostGuard
from aioconductor.dashboard._throughput import ThroughputCounts
from aioconductor.dashboard._views import ENDINGS
from aioconductor.dashboard._views import PAGE_SIZE
from aioconductor.dashboard._views import ListQuery
from aioconductor.dashboard._views import atom_rows
from aioconductor.dashboard._views import conductor_row
from aioconductor.dashboard._views import depth_chart
from aioconductor.dashboard._views import job_row
from aioconductor.dashboard._views import limit_row
from aioconductor.dashboard._views import schedule_row
from aioconductor.dashboard._views import throughput_chart
from aioconductor.dashboard._views import when
from aioconductor.persistence.base import Store

__all__ = ["create_app"]

HERE = Path(__file__).parent
#: Scripts and styles from this app only: an injected tag would not run even if one got through.
CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'self'"
#: Actions need this header: a cross-site form cannot send it without a CORS preflight.
ACTION_HEADER = "x-aioconductor-action"
#: The actions on a job (``POST /api/jobs/{id}/{action}``), each behind that header.
ACTIONS = ("cancel", "trash", "repost")
#: The largest body a bulk request may send (10,000 ids and some).
MAX_BULK_BODY = 1 << 20


class _Dashboard:
    """The app's state and its endpoints."""

    def __init__(self, board: JobBoard, store: Store | None, allow_actions: bool) -> None:
        self.board = board
        self.store = store
        self.allow_actions = allow_actions
        self._opened: list[JobBoard | Store] = []
        self._lock = anyio.Lock()
        self._throughput = ThroughputCounts()
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

    async def summary(self, query: ListQuery) -> dict[str, Any]:
        """Everything the index page shows, for ``query``'s filter and page."""
        await self.ready()
        board = self.board
        counts = {s.value: await board.job_count(state=s) for s in JobState}
        now = time.time()
        infos = await board.conductors()
        holding = await board.held_claims() if infos else {}
        conductors = [conductor_row(info, now, holding.get(info.owner, 0)) for info in infos]
        where = query.where
        page = await board.search(where, before=query.before, limit=PAGE_SIZE)
        if query.before is None and page.next_before is None:
            matching = len(page.jobs)  # the whole match is on the first page
        else:
            matching = await board.search_count(where)
        ended = await self._throughput.counts(board, now)
        return {
            "counts": counts,
            "total": sum(counts.values()),
            "conductors": conductors,
            "schedules": [schedule_row(status) for status in await schedule_status(board)],
            "limits": [limit_row(info) for info in await board.limits()],
            "jobs": [job_row(job) for job in page.jobs],
            "matching": matching,
            "state": None if query.state is None else query.state.value,
            "filter": query.filters(),
            "before": query.before,
            "next_before": page.next_before,
            "links": query.links(page.next_before),
            "page_size": PAGE_SIZE,
            "throughput": throughput_chart(ended, now),
            "depth": depth_chart(counts),
            "now": when(now),
        }

    async def job_detail(self, job_id: str) -> dict[str, Any]:
        """Everything a job's page shows (its flow runs only with a store)."""
        await self.ready()
        job = await self.board.get(job_id)
        detail: dict[str, Any] = {
            "job": job_row(job),
            "args": job.args,
            "result": job.result,
            "claim": None
            if job.claim is None
            else {
                "owner": job.claim.owner,
                "token": job.claim.token,
                "expires_at": when(job.claim.expires_at),
                "live": job.state is JobState.CLAIMED and job.claim.expires_at > time.time(),
            },
            "not_before": when(job.not_before),
            "flows": None,
            "progress_since": None,
        }
        if self.store is not None:
            try:
                book = await self.store.get_logbook(job.id)
            except LogBookNotFound:
                detail["flows"] = []
            else:
                detail["progress_since"] = when(book.created_at)
                detail["flows"] = [
                    {"name": flow.name, "state": flow.state.value, "atoms": atom_rows(flow)}
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
        """The job list with its filters, charts and panels."""
        query = ListQuery.parse(request.query_params)
        summary = await self.summary(query)
        return self._render(
            request,
            "index.html",
            query=query,
            summary=summary,
            states=list(JobState),
            outcomes=list(Outcome),
            endings=ENDINGS,
            bulk_limit=BULK_LIMIT,
        )

    async def job_page(self, request: Request) -> Response:
        """A job's page."""
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
        """``GET /api/summary``: the index page's data, for the same query string."""
        return JSONResponse(await self.summary(ListQuery.parse(request.query_params)))

    async def api_count(self, request: Request) -> Response:
        """``GET /api/count``: how many jobs match the query string's filter."""
        await self.ready()
        query = ListQuery.parse(request.query_params)
        count = await self.board.search_count(query.where)
        return JSONResponse({"count": count, "filter": query.filters(), "limit": BULK_LIMIT})

    async def api_job(self, request: Request) -> Response:
        """``GET /api/jobs/{id}``: a job's page as JSON."""
        try:
            return JSONResponse(await self.job_detail(request.path_params["job_id"]))
        except JobNotFound as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    def _refused(self, request: Request) -> Response | None:
        """403 unless actions are on and the request carries the action header."""
        if not self.allow_actions:
            return JSONResponse(
                {"error": "actions are off (start the dashboard with --allow-actions)"},
                status_code=403,
            )
        if request.headers.get(ACTION_HEADER) != "1":
            return JSONResponse({"error": f"an action needs the {ACTION_HEADER} header"}, 403)
        return None

    async def api_action(self, request: Request) -> Response:
        """``POST /api/jobs/{id}/{action}``: cancel, trash or re-post one job."""
        if (refused := self._refused(request)) is not None:
            return refused
        await self.ready()
        job_id, action = request.path_params["job_id"], request.path_params["action"]
        if action not in ACTIONS:
            return JSONResponse({"error": f"no action {action!r}"}, status_code=404)
        try:
            if action == "cancel":
                return await self._cancel(job_id)
            if action == "trash":
                job = await self.board.trash(job_id, reason=TRASH_REASON)
            else:
                job = await repost(self.board, await self.board.get(job_id))
        except JobNotFound as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except UnclaimableJob as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except AioconductorError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"job": job_row(job)})

    async def _cancel(self, job_id: str) -> Response:
        """Cancel: 200 with ``cancel`` ``"ended"`` or ``"flagged"``; 409 if the job had ended."""
        before = await self.board.get(job_id)
        job = await self.board.cancel(job_id, reason=CANCEL_REASON)
        if not job.state.is_final:
            return JSONResponse({"job": job_row(job), "cancel": "flagged"})
        if not before.state.is_final and job.outcome is Outcome.CANCELLED:
            return JSONResponse({"job": job_row(job), "cancel": "ended"})
        ended = job.state.value if job.outcome is None else f"{job.state} ({job.outcome})"
        error = f"job {job.id} already ended {ended}: it cannot be cancelled"
        return JSONResponse({"error": error, "job": job_row(job)}, status_code=409)

    async def api_bulk(self, request: Request) -> Response:
        """``POST /api/bulk/{action}`` with ``{"ids": [...]}`` or ``{"filter": {...}}``."""
        if (refused := self._refused(request)) is not None:
            return refused
        action = request.path_params["action"]
        if action not in BULK_ACTIONS:
            return JSONResponse({"error": f"no action {action!r}"}, status_code=404)
        body = await request.body()
        try:
            if len(body) > MAX_BULK_BODY:
                raise ValueError(f"at most {MAX_BULK_BODY:,} bytes")
            asked = json.loads(body)
            ids, query = _bulk_target(asked)
        except ValueError as exc:
            return JSONResponse({"error": f"a bad bulk request: {exc}"}, status_code=400)
        await self.ready()
        try:
            done = await bulk(
                self.board, action, ids=ids, where=None if query is None else query.where
            )
        except AioconductorError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(done)


def _bulk_target(asked: Any) -> tuple[list[str] | None, ListQuery | None]:
    """The ids, or the filter, of a bulk request's JSON body; ValueError if it has neither."""
    if not isinstance(asked, dict) or len(asked) != 1 or not {"ids", "filter"} & asked.keys():
        raise ValueError('send {"ids": [...]} or {"filter": {...}}')
    if "ids" in asked:
        ids = asked["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError("ids must be a list of job ids")
        if not 1 <= len(ids) <= BULK_LIMIT:
            raise ValueError(f"give 1 to {BULK_LIMIT:,} ids")
        return ids, None
    where = asked["filter"]
    if not isinstance(where, dict) or not all(isinstance(v, str) for v in where.values()):
        raise ValueError("filter must map state, outcome, flow or text to strings")
    unknown = set(where) - {"state", "outcome", "flow", "text"}
    if unknown:
        raise ValueError(f"unknown filter fields {sorted(unknown)}")
    query = ListQuery.parse(where)
    # What does not parse is left out of a page's filter; here it would widen the action.
    given = {name: value.strip() for name, value in where.items() if value.strip()}
    if set(given) != set(query.filters()):
        raise ValueError(f"not a filter: {where!r:.200}")
    return None, query


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
            Route("/api/count", dashboard.api_count, name="api_count"),
            Route("/api/jobs/{job_id}", dashboard.api_job, name="api_job"),
            Route(
                "/api/jobs/{job_id}/{action}",
                dashboard.api_action,
                methods=["POST"],
                name="api_action",
            ),
            Route("/api/bulk/{action}", dashboard.api_bulk, methods=["POST"], name="api_bulk"),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[Middleware(HostGuard, hosts=hosts)],
        lifespan=lifespan,
    )
    app.state.dashboard = dashboard
    return app
