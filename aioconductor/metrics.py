"""Prometheus metrics for conductors and boards (``pip install 'aioconductor-taskflow[metrics]'``).

Attach the exporter to conductors; it listens to their events and reads their stats, and never
slows a job down (a scrape reads counters the conductor keeps anyway)::

    from aioconductor.metrics import ConductorMetrics

    metrics = ConductorMetrics()            # or ConductorMetrics(registry=my_registry)
    metrics.attach(conductor)
    metrics.start_http_server(9108)         # or mount metrics.asgi_app() in your app
    async with anyio.create_task_group() as tg:
        tg.start_soon(metrics.watch_board, board)   # jobs posted, jobs by state
        await conductor.run()

Every metric is listed in the operations guide (``docs/operations.md``).
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from aioconductor.errors import AioconductorError
from aioconductor.errors import DependencyMissing
from aioconductor.events import Event
from aioconductor.models import JobState
from aioconductor.models import NotificationKind

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from aioconductor.boards.base import JobBoard
    from aioconductor.conductor import Conductor

__all__ = ["DEFAULT_BUCKETS", "ConductorMetrics"]

#: Histogram buckets in seconds, from a fast task (5 ms) to a long flow (an hour).
DEFAULT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
)  # fmt: skip

#: How many posted job ids :meth:`ConductorMetrics.watch_board` remembers to count each once.
_SEEN_POSTS = 100_000


def _prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core
    except ImportError as exc:
        raise DependencyMissing(
            "metrics need prometheus-client: pip install 'aioconductor-taskflow[metrics]'"
        ) from exc
    return prometheus_client


class ConductorMetrics:
    """A Prometheus exporter for the conductors attached to it.

    Args:
        registry: where the metrics are registered; prometheus-client's global registry when
            None (tests pass their own ``CollectorRegistry``).
        namespace: the prefix of every metric name.
        buckets: the buckets of the queue-wait and run-time histograms, in seconds.

    Raises:
        DependencyMissing: prometheus-client is not installed.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "aioconductor",
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> None:
        prom = _prometheus()
        self.registry: CollectorRegistry = prom.REGISTRY if registry is None else registry
        self.namespace = namespace
        self._conductors: dict[str, Conductor] = {}
        self._listeners: dict[str, list[tuple[str, Any]]] = {}
        self._seen_posts: OrderedDict[str, None] = OrderedDict()
        self._board_jobs: dict[str, int] = {}
        buckets = tuple(buckets)
        self.posted = prom.Counter(
            "jobs_posted",
            "Jobs posted to the watched boards (counted from the boards' notifications).",
            namespace=namespace,
            registry=self.registry,
        )
        self.queue_wait = prom.Histogram(
            "job_queue_wait_seconds",
            "From a job's post (or its not_before) to the start of its first run.",
            ["flow"],
            namespace=namespace,
            buckets=buckets,
            registry=self.registry,
        )
        self.run_time = prom.Histogram(
            "job_run_seconds",
            "From a job's claim to its consume, by flow and outcome.",
            ["flow", "outcome"],
            namespace=namespace,
            buckets=buckets,
            registry=self.registry,
        )
        self.registry.register(_StatsCollector(self))

    # -- conductors ----------------------------------------------------------------------------

    def attach(self, conductor: Conductor) -> None:
        """Export ``conductor``'s counters and gauges, and time its jobs from its events.

        Attaching the same conductor twice changes nothing.
        """
        if conductor.owner in self._conductors:
            return
        self._conductors[conductor.owner] = conductor

        def on_start(event: str, details: Mapping[str, Any]) -> None:
            run = conductor.running.get(details.get("book_id", ""))
            if run is None or run.job.attempts != 1:
                return
            job = run.job
            posted = max(job.created_at, job.not_before or 0.0)
            # The board's clock may run ahead of ours (a server's clock): never below zero.
            self.queue_wait.labels(job.flow).observe(max(0.0, time.time() - posted))

        def on_consumed(event: str, details: Mapping[str, Any]) -> None:
            outcome = str(details.get("outcome", ""))
            self.run_time.labels(details["flow"], outcome).observe(details["duration"])

        listeners = [
            (Event.RUNNING_START.value, on_start),
            (Event.JOB_CONSUMED.value, on_consumed),
        ]
        for event, listener in listeners:
            conductor.notifier.register(event, listener)
        self._listeners[conductor.owner] = listeners

    def detach(self, conductor: Conductor) -> None:
        """Stop exporting ``conductor`` (its listeners are removed)."""
        self._conductors.pop(conductor.owner, None)
        for event, listener in self._listeners.pop(conductor.owner, []):
            conductor.notifier.deregister(event, listener)

    # -- boards --------------------------------------------------------------------------------

    async def watch_board(
        self,
        board: JobBoard,
        *,
        interval: float = 5.0,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Count the jobs posted to ``board`` and sample its jobs by state, until cancelled.

        Posts are counted from the board's notifications, so posts by every producer, in every
        process, are counted once per exporter that watches the board. A delayed job is counted
        when it becomes due (its first notification).

        Args:
            board: a connected board.
            interval: seconds between two samples of the job counts by state.
            task_status: set by ``TaskGroup.start`` once the watch runs.
        """
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._sample_board, board, interval)
            await tg.start(self._count_posts, board, interval)
            task_status.started()

    async def _count_posts(
        self, board: JobBoard, interval: float, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        first = True
        counted = (NotificationKind.POSTED, NotificationKind.DUE)
        while True:
            try:
                async with contextlib.aclosing(board.stream()) as notes:
                    if first:
                        task_status.started()
                        first = False
                    async for note in notes:
                        if note.kind in counted and note.job_id not in self._seen_posts:
                            self._seen_posts[note.job_id] = None
                            if len(self._seen_posts) > _SEEN_POSTS:
                                self._seen_posts.popitem(last=False)
                            self.posted.inc()
                return
            except AioconductorError:
                # A board that went away for a moment: watch again after a pause.
                await anyio.sleep(interval)

    async def _sample_board(self, board: JobBoard, interval: float) -> None:
        while True:
            counts = {}
            with contextlib.suppress(AioconductorError):
                for state in JobState:
                    counts[state.value] = await board.job_count(state=state)
                self._board_jobs = counts
            await anyio.sleep(interval)

    # -- exporting -----------------------------------------------------------------------------

    def start_http_server(self, port: int, addr: str = "127.0.0.1") -> tuple[Any, Any]:
        """Serve ``/metrics`` over HTTP in a daemon thread (port 0 picks a free port).

        Returns:
            prometheus-client's ``(server, thread)``; ``server.server_port`` is the port,
            ``server.shutdown()`` then ``server.server_close()`` stops it.
        """
        server, thread = _prometheus().start_http_server(port, addr, registry=self.registry)
        return server, thread

    def asgi_app(self) -> Any:
        """An ASGI app serving the metrics, to mount in FastAPI or Starlette
        (``app.mount("/metrics", metrics.asgi_app())``)."""
        return _prometheus().make_asgi_app(registry=self.registry)

    def collect(self) -> Iterator[Metric]:
        """The metrics read from the conductors' stats and the watched boards' samples."""
        prom = _prometheus()
        ns = self.namespace

        def family(kind: Any, name: str, doc: str, labels: list[str]) -> Any:
            return kind(f"{ns}_{name}", doc, labels=labels)

        counter, gauge = prom.core.CounterMetricFamily, prom.core.GaugeMetricFamily
        claimed = family(counter, "jobs_claimed", "Jobs claimed.", ["conductor"])
        consumed = family(
            counter, "jobs_consumed", "Jobs consumed, by outcome.", ["conductor", "outcome"]
        )
        abandoned = family(
            counter, "jobs_abandoned", "Claims given back after a failure.", ["conductor"]
        )
        released = family(
            counter, "jobs_released", "Claims given back on purpose (shutdown).", ["conductor"]
        )
        retried = family(
            counter, "jobs_retried", "Failed runs scheduled to run again.", ["conductor"]
        )
        trashed = family(counter, "jobs_trashed", "Jobs trashed.", ["conductor"])
        purged = family(
            counter, "jobs_purged", "Finished jobs purged under the retention.", ["conductor"]
        )
        lost = family(counter, "lease_losses", "Claims lost while running.", ["conductor"])
        conflicts = family(
            counter,
            "claim_conflicts",
            "Claims made for an announced job that found none: another conductor was first.",
            ["conductor"],
        )
        in_flight = family(gauge, "jobs_in_flight", "Jobs running now.", ["conductor"])
        free = family(gauge, "free_slots", "Jobs a conductor could start now.", ["conductor"])
        for conductor in list(self._conductors.values()):
            name, stats = conductor.name, conductor.stats
            claimed.add_metric([name], stats.claimed)
            consumed.add_metric([name, "SUCCESS"], stats.succeeded)
            consumed.add_metric([name, "REVERTED"], stats.reverted)
            consumed.add_metric([name, "FAILURE"], stats.failed)
            consumed.add_metric([name, "CANCELLED"], stats.cancelled)
            abandoned.add_metric([name], stats.abandoned)
            released.add_metric([name], stats.released)
            retried.add_metric([name], stats.retried)
            trashed.add_metric([name], stats.trashed)
            purged.add_metric([name], stats.purged)
            lost.add_metric([name], stats.lease_lost)
            conflicts.add_metric([name], stats.claim_conflicts)
            running = len(conductor.running)
            in_flight.add_metric([name], running)
            free.add_metric([name], max(0, conductor.max_concurrency - running))
        yield from (claimed, consumed, abandoned, released, retried, trashed, purged)
        yield from (lost, conflicts)
        yield from (in_flight, free)
        board_jobs = family(gauge, "board_jobs", "Jobs on the watched board, by state.", ["state"])
        for state, count in self._board_jobs.items():
            board_jobs.add_metric([state], count)
        yield board_jobs


class _StatsCollector:
    """Hands scrapes to :meth:`ConductorMetrics.collect` (a registry wants a ``collect``)."""

    def __init__(self, metrics: ConductorMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.collect()
