"""The workloads, run for every system, repetition-major (so slow drifts hit every system alike).

Each workload starts from a freshly provisioned, empty space. A (system, workload) that fails
once is reported with its error and not retried in later repetitions.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.procs import DriverError, run_driver, run_together, serving
from benchmarks.systems import System

__all__ = ["Measure", "Settings", "run_all"]


@dataclass
class Settings:
    """What one run measures."""

    jobs: int = 20_000
    latency_jobs: int = 500
    inflight_jobs: int = 10_000
    repeat: int = 3
    concurrencies: tuple[int, ...] = (1, 64)
    durable_concurrency: int = 64
    latency_concurrency: int = 64
    #: Conductor processes of the scale-out workload (jobs: ``jobs``, concurrency 64 each).
    scaleout_processes: tuple[int, ...] = (1, 2, 4)
    #: Jobs a killed conductor holds in the recovery workload, and the lease it holds them by.
    recovery_jobs: int = 100
    recovery_lease: float = 5.0
    #: ``aioconductor run --processes N`` counts of the processes workload (concurrency 64).
    cli_processes: tuple[int, ...] = (1, 2)
    #: Seconds of sequential single posts in the post workload (systems with a batch post).
    single_post_seconds: float = 20.0
    #: The workloads to run (None: all): drain, post, latency, durable, post_batch, scaleout,
    #: recovery, inflight, processes.
    only: tuple[str, ...] | None = None
    quick: bool = False

    #: Seconds a drain may take before it is killed (None: scaled to ``jobs``).
    drain_limit: float | None = None
    #: Seconds of latency probing before the producer stops early (reporting what it got).
    latency_deadline: float = 120.0
    #: Seconds after which no further repetition starts (None: no budget).
    budget: float | None = None

    def post_timeout(self) -> float:
        """Seconds a ``post`` of ``jobs`` may take (a floor of 50 jobs/s)."""
        return 60 + self.jobs / 50

    def drain_timeout(self) -> float:
        """Seconds a ``drain`` may take (a floor of 25 jobs/s unless ``drain_limit``)."""
        return self.drain_limit or 60 + self.jobs / 25

    def latency_timeout(self) -> float:
        """Seconds the latency producer may take."""
        return self.latency_deadline + 60


@dataclass
class Measure:
    """One figure of one system, with every repetition."""

    system: str
    backend: str
    metric: str
    unit: str
    #: "higher" or "lower" is better.
    better: str
    values: list[float] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    #: For a run cut by its time limit: the bound it shows (``< 44`` jobs/s).
    bound: str | None = None

    @property
    def median(self) -> float | None:
        """The median of the repetitions (None when there is none)."""
        return statistics.median(self.values) if self.values else None

    def as_json(self) -> dict[str, Any]:
        """The measure with its median and spread, for the results file."""
        data = asdict(self)
        data["median"] = self.median
        data["min"] = min(self.values) if self.values else None
        data["max"] = max(self.values) if self.values else None
        return data


#: Jobs per batched post call.
POST_BATCH = 500

UNITS: dict[str, tuple[str, str]] = {
    "post": ("jobs/s", "higher"),
    "drain": ("jobs/s", "higher"),
    "rss": ("MiB", "lower"),
    "latency": ("ms", "lower"),
    "durable": ("flows/s", "higher"),
    "inflight": ("KiB/job", "lower"),
    "scaleout": ("jobs/s", "higher"),
    "recovery": ("s", "lower"),
    "procs": ("jobs/s", "higher"),
}


class Results:
    """Every measure of the run, by (system, backend, metric)."""

    def __init__(self) -> None:
        self.measures: dict[tuple[str, str, str], Measure] = {}
        self.failed: dict[tuple[str, str, str], str] = {}
        #: Repetitions completed.
        self.repetitions = 0

    def get(self, system: System, metric: str) -> Measure:
        """The measure ``metric`` of ``system`` (made on first use)."""
        key = (system.name, system.backend, metric)
        if key not in self.measures:
            unit, better = UNITS[metric.split("_")[0]]
            self.measures[key] = Measure(system.name, system.backend, metric, unit, better)
        return self.measures[key]

    def add(self, system: System, metric: str, value: float | None, detail: Any = None) -> None:
        """Record one repetition's value of ``metric``."""
        measure = self.get(system, metric)
        if value is not None:
            measure.values.append(float(value))
        if detail is not None:
            measure.details.append(detail)

    def fail(self, system: System, workload: str, metrics: list[str], error: str) -> None:
        """Record that ``workload`` failed; it is skipped from now on."""
        self.failed[(system.name, system.backend, workload)] = error
        for metric in metrics:
            self.get(system, metric).error = error

    def has_failed(self, system: System, workload: str) -> bool:
        """Whether ``workload`` failed on ``system`` already."""
        return (system.name, system.backend, workload) in self.failed


def _drain(
    system: System,
    settings: Settings,
    concurrency: int,
    flow: str | None,
    log: Path,
    *,
    batched: bool = False,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Post ``jobs`` then drain them with one worker; (post result, drain result).

    ``batched``: post with the system's batch post (setup only: its rate is not the single
    post figure).
    """
    flow_opts: list[object] = ["--flow", flow] if flow else []
    if batched:
        flow_opts += ["--batch", POST_BATCH]
    with system.provision() as (target, _work):
        if system.inproc:
            drain = run_driver(
                system.argv(
                    "drain", target, "--post", "--n", settings.jobs,
                    "--concurrency", concurrency, *flow_opts,
                ),
                timeout=settings.post_timeout() + settings.drain_timeout(),
                log=log,
            )  # fmt: skip
            post = None if drain.get("post_rate") is None else {"rate": drain["post_rate"]}
            return post, drain
        post = run_driver(
            system.argv("post", target, "--n", settings.jobs, *flow_opts),
            timeout=settings.post_timeout(),
            log=log,
        )
        drain_opts: list[object] = ["--flow", flow] if flow else []
        if "post" in system.workloads:
            # A deadline short of the limit: a slow drain reports the rate of the jobs it did.
            drain_opts += ["--deadline", max(5.0, settings.drain_timeout() - 10)]
        drain = run_driver(
            system.argv(
                "drain", target, "--n", settings.jobs, "--concurrency", concurrency, *drain_opts
            ),
            timeout=settings.drain_timeout(),
            log=log,
        )
        return (None if batched else post), drain


def _latency(system: System, settings: Settings, log: Path) -> dict[str, Any]:
    with system.provision() as (target, work):
        if system.latency_inproc:
            return run_driver(
                system.argv(
                    "latency", target, "--inproc", "--n", settings.latency_jobs,
                    "--concurrency", settings.latency_concurrency,
                    "--deadline", settings.latency_deadline,
                ),
                timeout=settings.latency_timeout(),
                log=log,
            )  # fmt: skip
        record = work / "starts.txt"
        serve = system.argv(
            "serve", target, "--concurrency", settings.latency_concurrency, "--record", record
        )
        with serving(serve, log=log):
            return run_driver(
                system.argv(
                    "latency",
                    target,
                    "--n",
                    settings.latency_jobs,
                    "--record",
                    record,
                    "--deadline",
                    settings.latency_deadline,
                ),
                timeout=settings.latency_timeout(),
                log=log,
            )


def _inflight(system: System, settings: Settings, log: Path) -> dict[str, Any]:
    with system.provision() as (target, _work):
        return run_driver(
            system.argv("inflight", target, "--n", settings.inflight_jobs),
            timeout=120 + settings.inflight_jobs / 100,
            log=log,
        )


def _scaleout(system: System, settings: Settings, processes: int, log: Path) -> dict[str, Any]:
    """``processes`` conductors drain ``jobs`` posted up front; jobs/s from the common start
    (a barrier file) to the last one seeing every job complete."""
    with system.provision() as (target, work):
        run_driver(
            system.argv("post", target, "--n", settings.jobs, "--batch", POST_BATCH),
            timeout=settings.post_timeout(),
            log=log,
        )
        barrier = work / "go"
        argv = system.argv(
            "share", target, "--n", settings.jobs, "--concurrency", 64, "--barrier", barrier
        )
        results = run_together(
            [argv] * processes, barrier, timeout=settings.drain_timeout(), log=log
        )
    started = min(r["started"] for r in results)
    finished = max(r["finished"] for r in results)
    consumed = [r["consumed"] for r in results]
    return {"rate": settings.jobs / (finished - started), "consumed": consumed}


def _processes(system: System, settings: Settings, processes: int, log: Path) -> dict[str, Any]:
    """``aioconductor run --processes N`` (the supervisor and its N conductor processes, as
    an operator starts them); jobs/s from the first post to the last job complete, the jobs
    posted once every conductor is listed."""
    with system.provision() as (target, _work):
        return run_driver(
            system.argv(
                "processes", target, "--n", settings.jobs, "--processes", processes,
                "--concurrency", 64,
            ),
            timeout=120 + settings.drain_timeout(),
            log=log,
        )  # fmt: skip


def _recovery(system: System, settings: Settings, log: Path) -> dict[str, Any]:
    """A conductor holding ``recovery_jobs`` running jobs is SIGKILLed; seconds until an idle
    conductor (same lease) has completed them all."""
    n, lease = settings.recovery_jobs, settings.recovery_lease
    with system.provision() as (target, work):
        run_driver(system.argv("post", target, "--n", n, "--flow", "hold"), timeout=60, log=log)
        victim = system.argv("hold", target, "--n", n, "--concurrency", n, "--lease", lease)
        barrier = work / "go"
        heir = system.argv(
            "share", target, "--n", n, "--concurrency", n, "--lease", lease,
            "--barrier", barrier,
        )  # fmt: skip
        with serving(victim, log=log) as held:
            killed: list[float] = []

            def kill_victim() -> None:
                time.sleep(0.5)  # the heir is running (idle: every job is held)
                killed.append(time.time())
                os.killpg(held.pid, signal.SIGKILL)

            killer = threading.Thread(target=kill_victim)
            killer_started = False

            def start_killer() -> None:
                nonlocal killer_started
                killer.start()
                killer_started = True

            (result,) = run_together(
                [heir], barrier, timeout=lease + 120, log=log, on_start=start_killer
            )
            if killer_started:
                killer.join()
    return {"seconds": result["finished"] - killed[0], "lease": lease, "jobs": n}


def _attempt(
    results: Results,
    system: System,
    workload: str,
    metrics: list[str],
    say: Callable[[str], None],
    body: Callable[[], None],
) -> None:
    if results.has_failed(system, workload):
        return
    started = time.monotonic()
    try:
        body()
    except DriverError as exc:
        results.fail(system, workload, metrics, str(exc))
        say(f"  {system.label} {workload}: FAILED: {exc}")
    except Exception as exc:
        results.fail(system, workload, metrics, f"{type(exc).__name__}: {exc}")
        say(f"  {system.label} {workload}: FAILED: {type(exc).__name__}: {exc}")
    else:
        say(f"  {system.label} {workload}: {time.monotonic() - started:.1f} s")


def run_system_once(
    system: System, settings: Settings, results: Results, log: Path, say: Callable[[str], None]
) -> None:
    """One repetition of every workload of ``system`` (those of ``settings.only``)."""
    workloads = system.workloads
    if settings.only is not None:
        workloads = workloads & frozenset(settings.only)
    if "drain" in workloads:
        for concurrency in settings.concurrencies:
            metrics = [f"drain_c{concurrency}", f"rss_c{concurrency}"]

            def drain_body(concurrency: int = concurrency) -> None:
                # Where the system has a batch post, drains are set up with it (the post is not
                # what they time); its single posts are the "post" workload. Else the c=1
                # drain's single posts are the post figure.
                batched = "post_batch" in system.workloads and (
                    concurrency > 1 or "post" in system.workloads
                )
                try:
                    post, drain = _drain(system, settings, concurrency, None, log, batched=batched)
                except DriverError as exc:
                    if "timed out" in str(exc):
                        limit = settings.drain_timeout()
                        measure = results.get(system, f"drain_c{concurrency}")
                        measure.bound = f"< {settings.jobs / limit:,.0f}"
                    raise
                if post is not None:
                    results.add(system, "post", post["rate"], post)
                results.add(system, f"drain_c{concurrency}", drain["rate"], drain)
                hwm = drain.get("vmhwm_kib")
                results.add(system, f"rss_c{concurrency}", hwm / 1024 if hwm else None)

            _attempt(results, system, f"drain c={concurrency}", metrics, say, drain_body)
    if "post" in workloads:

        def post_body() -> None:
            # Sequential single posts, for at most single_post_seconds (the rate of those made).
            with system.provision() as (target, _work):
                result = run_driver(
                    system.argv(
                        "post", target, "--n", settings.jobs,
                        "--deadline", settings.single_post_seconds,
                    ),
                    timeout=settings.single_post_seconds + 60,
                    log=log,
                )  # fmt: skip
            results.add(system, "post", result["rate"], result)

        _attempt(results, system, "single posts", ["post"], say, post_body)
    if "latency" in workloads:

        def latency_body() -> None:
            latency = _latency(system, settings, log)
            for q in ("p50", "p95", "p99"):
                results.add(system, f"latency_{q}", latency[f"{q}_ms"])
            results.get(system, "latency_p50").details.append(latency)

        _attempt(
            results,
            system,
            "latency",
            ["latency_p50", "latency_p95", "latency_p99"],
            say,
            latency_body,
        )
    if "durable" in workloads:
        concurrency = settings.durable_concurrency

        def durable_body() -> None:
            batched = "post_batch" in system.workloads
            _, drain = _drain(system, settings, concurrency, "durable", log, batched=batched)
            results.add(system, "durable", drain["rate"], drain)

        _attempt(results, system, "durable", ["durable"], say, durable_body)
    if "post_batch" in workloads:

        def post_batch_body() -> None:
            with system.provision() as (target, _work):
                result = run_driver(
                    system.argv("post", target, "--n", settings.jobs, "--batch", POST_BATCH),
                    timeout=settings.post_timeout(),
                    log=log,
                )
            results.add(system, "post_batch", result["rate"], result)

        _attempt(results, system, "post batched", ["post_batch"], say, post_batch_body)
    if "scaleout" in workloads:
        for processes in settings.scaleout_processes:

            def scaleout_body(processes: int = processes) -> None:
                result = _scaleout(system, settings, processes, log)
                results.add(system, f"scaleout_p{processes}", result["rate"], result)

            _attempt(
                results,
                system,
                f"scale-out x{processes}",
                [f"scaleout_p{processes}"],
                say,
                scaleout_body,
            )
    if "processes" in workloads:
        for processes in settings.cli_processes:

            def processes_body(processes: int = processes) -> None:
                result = _processes(system, settings, processes, log)
                results.add(system, f"procs_p{processes}", result["rate"], result)

            _attempt(
                results,
                system,
                f"run --processes {processes}",
                [f"procs_p{processes}"],
                say,
                processes_body,
            )
    if "recovery" in workloads:

        def recovery_body() -> None:
            result = _recovery(system, settings, log)
            results.add(system, "recovery", result["seconds"], result)

        _attempt(results, system, "recovery", ["recovery"], say, recovery_body)
    if "inflight" in workloads:

        def inflight_body() -> None:
            result = _inflight(system, settings, log)
            results.add(system, "inflight", result["kib_per_job"], result)

        _attempt(results, system, "inflight", ["inflight"], say, inflight_body)


def run_all(
    systems: list[System], settings: Settings, log: Path, say: Callable[[str], None]
) -> Results:
    """Every workload of every system, ``settings.repeat`` times, repetition-major."""
    results = Results()
    started = time.monotonic()
    last = 0.0
    for rep in range(1, settings.repeat + 1):
        elapsed = time.monotonic() - started
        if settings.budget is not None and rep > 1 and elapsed + last > settings.budget:
            say(
                f"stopping after {rep - 1} repetition(s): another would pass the "
                f"{settings.budget:.0f} s budget"
            )
            break
        say(f"repetition {rep}/{settings.repeat}")
        for system in systems:
            run_system_once(system, settings, results, log, say)
        results.repetitions = rep
        last = time.monotonic() - started - elapsed
    return results
