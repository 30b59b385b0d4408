"""The run's outputs: the results file (JSON), the markdown table and the plot."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import Measure

__all__ = ["machine", "markdown", "plot", "write_json"]

PLOT_SCRIPT = Path(__file__).resolve().parent / "plot.py"

#: (metric, column title), in table order.
COLUMNS: list[tuple[str, str]] = [
    ("post", "post jobs/s"),
    ("post_batch", "batched post jobs/s"),
    ("drain_c1", "drain c=1 jobs/s"),
    ("drain_c64", "drain c=64 jobs/s"),
    ("rss_c64", "peak RSS c=64 MiB"),
    ("latency_p50", "latency p50 ms"),
    ("latency_p95", "p95 ms"),
    ("latency_p99", "p99 ms"),
    ("durable", "durable 3-task flows/s"),
]


def machine() -> dict[str, Any]:
    """The CPU, cores, memory, OS and Python of this machine."""
    cpu = "unknown"
    memory_gib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": platform.platform(),
        "python": sys.version.split()[0],
    }


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(measure: Measure | None) -> str:
    """``median (min-max)``, or why there is no figure."""
    if measure is None:
        return "-"
    if not measure.values:
        if measure.bound:
            return f"{measure.bound} (timed out)"
        return "failed" if measure.error else "-"
    text = _number(measure.median or 0.0)
    if len(measure.values) > 1:
        text += f" ({_number(min(measure.values))}-{_number(max(measure.values))})"
    if measure.error:
        text += " †"
    return text


def markdown(
    measures: list[Measure],
    skipped: list[dict[str, str]],
    settings: dict[str, Any],
    notes: list[str],
) -> str:
    """The table of medians (spread in brackets), then in-flight memory, failures and skips."""
    rows: dict[tuple[str, str], dict[str, Measure]] = {}
    for measure in measures:
        rows.setdefault((measure.system, measure.backend), {})[measure.metric] = measure
    head = ["system", "backend", *(title for _, title in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (system, backend), by_metric in rows.items():
        if not any(metric in by_metric for metric, _ in COLUMNS):
            continue  # only other workloads measured (--workloads)
        cells = [cell(by_metric.get(metric)) for metric, _ in COLUMNS]
        lines.append("| " + " | ".join([f"**{system}**", backend, *cells]) + " |")
    text = [
        f"Each figure: the median of {settings['repetitions']} repetition(s), (min-max); "
        f"{settings['jobs']:,} jobs per drain, up to {settings['latency_jobs']} latency probes "
        f"(at most {settings['latency_deadline']:.0f} s of probing). '-': not measured; "
        "†: failed in a later repetition; '< x (timed out)': the drain was killed at its "
        f"time limit ({settings['drain_limit_s']:.0f} s).",
        "",
        *lines,
    ]
    inflight = [m for m in measures if m.metric == "inflight" and m.values]
    for measure in inflight:
        text += [
            "",
            f"Memory per in-flight job ({measure.system}, {measure.backend} board, "
            f"{settings['inflight_jobs']:,} jobs in flight at once): {cell(measure)} KiB.",
        ]
    text += _scaleout_table(rows, settings)
    failures = [m for m in measures if m.error]
    seen: set[tuple[str, str, str]] = set()
    if failures:
        text += ["", "Failures:", ""]
        for measure in failures:
            key = (measure.system, measure.backend, measure.error or "")
            if key in seen:
                continue
            seen.add(key)
            error = (measure.error or "").replace("\n", " ")[:300]
            text.append(f"- {measure.system} ({measure.backend}), {measure.metric}: {error}")
    if skipped:
        text += ["", "Not measured:", ""]
        text += [f"- {s['system']} ({s['backend']}): {s['reason']}" for s in skipped]
    if notes:
        text += ["", "Notes:", ""]
        text += [f"- {note}" for note in notes]
    return "\n".join(text) + "\n"


def _scaleout_table(
    rows: dict[tuple[str, str], dict[str, Measure]], settings: dict[str, Any]
) -> list[str]:
    """Scale-out (1, 2, 4 conductor processes on one board) and recovery after a kill -9."""
    processes = settings.get("scaleout_processes", ())
    columns = [(f"scaleout_p{p}", f"{p} process{'es' if p > 1 else ''} jobs/s") for p in processes]
    columns += [
        (f"procs_p{p}", f"run --processes {p} jobs/s") for p in settings.get("cli_processes", ())
    ]
    columns.append(("recovery", "recovery s"))
    found = [(key, by) for key, by in rows.items() if any(m in by for m, _ in columns)]
    if not found:
        return []
    lines = [
        "",
        f"Scale-out: {settings['jobs']:,} jobs drained by 1, 2 and 4 conductor processes "
        "(concurrency 64 each) on one board, from a common start to the last job complete; "
        f"this machine has {os.cpu_count()} cores. Recovery: a conductor holding "
        f"{settings.get('recovery_jobs')} running jobs is killed with SIGKILL; seconds until "
        f"an idle conductor has completed them all (lease {settings.get('recovery_lease')} s, "
        "so at most the lease plus one sweep is expected). run --processes N: the command's "
        "supervisor and N conductor processes (concurrency 64 each), the jobs posted once all "
        "are listed, timed from the first post to the last job complete.",
        "",
        "| system | backend | " + " | ".join(title for _, title in columns) + " |",
        "|" + "---|" * (len(columns) + 2),
    ]
    for (system, backend), by_metric in found:
        cells = [cell(by_metric.get(metric)) for metric, _ in columns]
        lines.append("| " + " | ".join([f"**{system}**", backend, *cells]) + " |")
    return lines


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write the results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def plot(results_json: Path, png: Path, plot_python: Path | None) -> str | None:
    """Draw the plot with matplotlib (here, or in ``plot_python``'s venv); an error or None."""
    python = sys.executable
    if importlib.util.find_spec("matplotlib") is None:
        if plot_python is None:
            return "matplotlib is not installed: no plot (pip install matplotlib)"
        python = str(plot_python)
    try:
        proc = subprocess.run(
            [python, "-P", str(PLOT_SCRIPT), str(results_json), str(png)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "the plot timed out"
    if proc.returncode != 0:
        return f"the plot failed: {proc.stderr.strip().splitlines()[-1:]}"
    return None
