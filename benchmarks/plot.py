"""Plot a results file: drain jobs/s and post -> start latency per system and backend.

Usage: ``python benchmarks/plot.py RESULTS.json OUT.png`` (needs matplotlib; the harness runs
it in a venv of its own when matplotlib is not installed next to aioconductor).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _series(measures: list[dict[str, Any]], metric: str) -> dict[str, dict[str, Any]]:
    return {
        f"{m['system']}\n{m['backend']}": m
        for m in measures
        if m["metric"] == metric and m["median"] is not None
    }


def main(results: Path, out: Path) -> None:
    """Draw three panels: drain c=1 and c=64 (log scale) and latency p50/p99."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(results.read_text())
    measures = data["measures"]
    labels: list[str] = []
    for m in measures:
        label = f"{m['system']}\n{m['backend']}"
        if label not in labels and m["metric"] in {"drain_c1", "drain_c64", "latency_p50"}:
            labels.append(label)
    fig, axes = plt.subplots(2, 1, figsize=(max(10, 1.2 * len(labels)), 10))
    width = 0.4
    for ax, pairs, title, unit in (
        (axes[0], (("drain_c1", "c=1"), ("drain_c64", "c=64")), "drain", "jobs/s (log)"),
        (axes[1], (("latency_p50", "p50"), ("latency_p99", "p99")), "post → start", "ms (log)"),
    ):
        for i, (metric, name) in enumerate(pairs):
            series = _series(measures, metric)
            xs, ys, low, high = [], [], [], []
            for x, label in enumerate(labels):
                m = series.get(label)
                if m is None:
                    continue
                xs.append(x + (i - 0.5) * width)
                ys.append(m["median"])
                low.append(m["median"] - m["min"])
                high.append(m["max"] - m["median"])
            ax.bar(xs, ys, width, yerr=[low, high], capsize=3, label=name)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend()
        ax.grid(axis="y", which="both", alpha=0.3)
    kind = "quick" if data["settings"].get("quick") else "full"
    fig.suptitle(
        f"aioconductor and peers, {data['date']} ({kind} run: {data['settings']['jobs']:,} "
        f"jobs; median of {data['settings'].get('repetitions', data['settings']['repeat'])}, "
        f"bars min-max)\n{data['machine']['cpu']}, {data['machine']['cores']} cores"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
