"""``python -m benchmarks``: aioconductor and its peers, side by side, in one run."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import report, services
from benchmarks.harness import Settings, run_all
from benchmarks.procs import DriverError, run_driver
from benchmarks.systems import (
    AIOC_BACKENDS,
    PEERS,
    PEERS_DIR,
    System,
    aioc_system,
    peer_system,
)
from benchmarks.venvs import CACHE, InstallError, ensure_venv

__all__ = ["main"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
#: The workloads ``--workloads`` can choose.
WORKLOADS = (
    "drain", "post", "latency", "durable", "post_batch", "scaleout", "recovery", "inflight",
    "processes",
)  # fmt: skip
_MODULES = {
    "memory": ("memory", "memory"),
    "sqlite": ("sqlite", "sqlite"),
    "redis": ("redis", "redis"),
    "postgres": ("postgres", "postgres"),
    # The Kafka board keeps no flow progress: it runs with the Redis store.
    "kafka": ("kafka", "redis"),
}


def _names(text: str, known: Sequence[str], what: str) -> list[str]:
    if text.strip().lower() in {"", "none"}:
        return []
    if text.strip().lower() == "all":
        return list(known)
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure aioconductor and its peers in one run, on this machine's services.",
    )
    parser.add_argument(
        "--backends",
        default=",".join(AIOC_BACKENDS),
        help=f"aioconductor backends ({','.join(_MODULES)}; 'none' for peers only)",
    )
    parser.add_argument(
        "--peers", default="all", help=f"peers ({','.join(PEERS)}; 'all' or 'none')"
    )
    parser.add_argument("--quick", action="store_true", help="2,000 jobs, 200 latency probes")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per drain (override)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the results folder")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    parser.add_argument(
        "--workloads",
        default="all",
        help=f"the workloads to run ({','.join(WORKLOADS)}; default all)",
    )
    parser.add_argument(
        "--scaleout",
        default=None,
        help="conductor processes of the scale-out workload, e.g. 1,3 (default 1,2,4; quick 1,4)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds after which no further repetition starts (quick: 540, full: none)",
    )
    return parser


def _aioc_problem(backend: str) -> str | None:
    board_module, store_module = _MODULES[backend]
    if store_module is None:
        return f"aioconductor has no {backend} store; its {backend} board is not measured yet"
    for module in (
        f"aioconductor.boards.{board_module}",
        f"aioconductor.persistence.{store_module}",
    ):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return f"{module} cannot be imported: {exc}"
    return _service_problem(backend)


_SERVICE_CHECKS: dict[str, str | None] = {}


def _service_problem(backend: str) -> str | None:
    checks = {
        "redis": services.redis_problem,
        "postgres": services.postgres_problem,
        "kafka": services.kafka_problem,
    }
    if backend not in checks:
        return None
    if backend not in _SERVICE_CHECKS:
        _SERVICE_CHECKS[backend] = checks[backend]()
        if backend == "kafka" and _SERVICE_CHECKS[backend] is None:
            _SERVICE_CHECKS[backend] = services.redis_problem()  # its store
    return _SERVICE_CHECKS[backend]


def _server_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    if _service_problem("redis") is None:
        import redis

        client = redis.Redis.from_url(services.redis_url(services.AIOC_REDIS_DB))
        try:
            versions["redis-server"] = str(client.info("server")["redis_version"])
        finally:
            client.close()
    if _service_problem("postgres") is None:
        import asyncio

        import asyncpg  # type: ignore[import-untyped]

        async def pg_version() -> str:
            conn = await asyncpg.connect(services.POSTGRES_URL, timeout=10)
            try:
                return str(await conn.fetchval("SHOW server_version"))
            finally:
                await conn.close()

        versions["postgresql-server"] = asyncio.run(pg_version())
    return versions


def _prepare_peer(name: str, log: Path) -> tuple[System | None, dict[str, str], str | None]:
    """The peer's system and versions, or why it cannot run."""
    spec = PEERS[name]
    if not (PEERS_DIR / f"{name}.py").exists():
        return None, {}, f"no driver yet (benchmarks/peers/{name}.py)"
    problem = _service_problem(spec.backend)
    if problem:
        return None, {}, f"{spec.backend} unavailable: {problem}"
    try:
        python = ensure_venv(name, spec.requirements)
    except InstallError as exc:
        return None, {}, f"install failed: {exc}"
    system = peer_system(spec, python)
    try:
        versions = run_driver(system.argv("version", []), timeout=120, log=log)
    except DriverError as exc:
        return None, {}, f"driver failed to start: {exc}"
    return system, {k: str(v) for k, v in versions.items()}, None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; print and write the table. Returns the exit status."""
    args = _parser().parse_args(argv)
    backends = _names(args.backends, list(_MODULES), "backends")
    peers = _names(args.peers, list(PEERS), "peers")
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    settings = Settings(repeat=args.repeat, quick=args.quick)
    workloads = _names(args.workloads, WORKLOADS, "workloads")
    if args.workloads.strip().lower() != "all":
        settings.only = tuple(workloads)
    if args.quick:
        settings.jobs, settings.latency_jobs, settings.inflight_jobs = 2_000, 200, 2_000
        settings.scaleout_processes = (1, 4)
        # Bounded so that the whole quick run stays under 10 minutes: a slow drain is
        # killed at 30 s (and shown as a bound), latency probing stops after 10 s.
        settings.drain_limit, settings.latency_deadline = 30.0, 10.0
        settings.single_post_seconds = 10.0
    else:
        # A drain of 20,000 jobs slower than 83 jobs/s (arq's and pgqueuer's polling workers
        # at concurrency 1) would hold the run for 14 minutes a repetition; it is shown as
        # that bound instead. Latency probing of a polling worker (500 ms a probe) stops
        # after a minute, with over 100 probes.
        settings.drain_limit, settings.latency_deadline = 240.0, 60.0
    if args.jobs:
        settings.jobs = args.jobs
    if args.scaleout:
        settings.scaleout_processes = tuple(int(n) for n in args.scaleout.split(","))
    started = time.monotonic()
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%d") + ("-quick" if args.quick else "")
    log = CACHE / "logs" / f"run-{now.strftime('%Y%m%dT%H%M%S')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)

    def say(line: str) -> None:
        print(line, flush=True)
        with log.open("a") as f:
            f.write(f"# {line}\n")

    say(f"benchmarks: backends {backends or 'none'}, peers {peers or 'none'}, {settings}")
    systems: list[System] = []
    skipped: list[dict[str, str]] = []
    versions: dict[str, dict[str, str]] = {}
    for backend in backends:
        problem = _aioc_problem(backend)
        if problem:
            say(f"skipping aioconductor ({backend}): {problem}")
            skipped.append({"system": "aioconductor", "backend": backend, "reason": problem})
        else:
            systems.append(aioc_system(backend))
    if systems:
        try:
            versions["aioconductor"] = run_driver(systems[0].argv("version", []), timeout=60)
        except DriverError as exc:
            raise SystemExit(f"the aioconductor driver does not start: {exc}") from None

    plot_python: Path | None = None
    with ThreadPoolExecutor(max_workers=3) as pool:
        plot_job = None
        if not args.no_plot and importlib.util.find_spec("matplotlib") is None:
            plot_job = pool.submit(ensure_venv, "plot", ["matplotlib"])
        if peers:
            say(f"preparing peers (venvs under {CACHE / 'venvs'}) ...")
        prepared = dict(zip(peers, pool.map(lambda p: _prepare_peer(p, log), peers), strict=True))
        if plot_job is not None:
            try:
                plot_python = plot_job.result()
            except InstallError as exc:
                say(f"no plot: matplotlib could not be installed in its venv: {exc}")
    for name, (system, peer_versions, problem) in prepared.items():
        spec = PEERS[name]
        if system is None:
            say(f"skipping {name} ({spec.backend}): {problem}")
            skipped.append({"system": name, "backend": spec.backend, "reason": problem or "?"})
        else:
            systems.append(system)
            versions[name] = peer_versions
    versions["servers"] = _server_versions()
    say(f"prepared in {time.monotonic() - started:.0f} s; measuring {len(systems)} systems")
    budget = args.budget if args.budget is not None else (540.0 if args.quick else None)
    if budget is not None:
        settings.budget = max(0.0, budget - (time.monotonic() - started))

    results = run_all(systems, settings, log, say)
    measures = list(results.measures.values())
    notes = sorted({note for system in systems for note in system.notes})
    notes.append(
        "drain: timed inside the worker process, from the start of its run loop to the last "
        "job recorded complete; peak RSS is the worker's VmHWM"
    )
    data: dict[str, Any] = {
        "date": now.strftime("%Y-%m-%d"),
        "started_at": now.isoformat(timespec="seconds"),
        "duration_s": None,
        "command": " ".join(["python -m benchmarks", *(argv or sys.argv[1:])]),
        "machine": report.machine(),
        "versions": versions,
        "settings": {
            **vars(settings),
            "repetitions": results.repetitions,
            "drain_limit_s": settings.drain_timeout(),
            "backends": backends,
            "peers": peers,
        },
        "skipped": skipped,
        "notes": notes,
        "measures": [m.as_json() for m in measures],
    }
    table = report.markdown(measures, skipped, data["settings"], notes)
    data["duration_s"] = round(time.monotonic() - started, 1)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stamp}.json"
    report.write_json(json_path, data)
    md_path = out / f"{stamp}.md"
    machine = data["machine"]
    header = (
        f"# Benchmarks {data['date']} ({'quick' if args.quick else 'full'} run)\n\n"
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
        f"Python {machine['python']}. Versions: "
        + "; ".join(
            f"{system}: " + ", ".join(f"{k} {v}" for k, v in sorted(found.items()))
            for system, found in versions.items()
        )
        + f".\n\nCommand: `{data['command']}` ({data['duration_s']:.0f} s).\n\n"
    )
    md_path.write_text(header + table)
    print()
    print(table)
    if not args.no_plot:
        png = out / f"{stamp}.png"
        problem = report.plot(json_path, png, plot_python)
        print(f"plot: {png}" if problem is None else f"no plot: {problem}")
    print(f"results: {json_path} and {md_path} ({data['duration_s']:.0f} s)")
    return 0
