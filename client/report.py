"""The load tester's report: a table for the terminal, a latency-against-throughput plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TABLE_COLUMNS = (
    ("load", 14),
    ("req/s", 9),
    ("images/s", 10),
    ("p50 ms", 8),
    ("p90 ms", 8),
    ("p99 ms", 8),
    ("p99.9 ms", 9),
    ("max ms", 8),
)


def format_table(runs: list[dict[str, Any]]) -> str:
    lines = ["".join(f"{name:>{width}}" for name, width in TABLE_COLUMNS) + "  errors"]
    for run in runs:
        load = (
            f"c={run['concurrency']}" if run["concurrency"] else f"{run['mode']} {run['rate']:g}/s"
        )
        values = [
            run["throughput_rps"],
            run["images_per_s"],
            run["p50_ms"],
            run["p90_ms"],
            run["p99_ms"],
            run["p999_ms"],
            run["max_ms"],
        ]
        cells = [f"{load:>14}"] + [
            f"{'-' if v is None else f'{v:,.1f}':>{width}}"
            for v, (_, width) in zip(values, TABLE_COLUMNS[1:], strict=True)
        ]
        errors = ", ".join(f"{code} {n}" for code, n in run["errors"].items()) or "none"
        lines.append("".join(cells) + "  " + errors)
    return "\n".join(lines)


def format_endpoints(run: dict[str, Any]) -> str:
    """Requests each address answered during one run (from its statistics)."""
    load = f"c={run['concurrency']}" if run["concurrency"] else f"{run['rate']:g}/s"
    lines = [f"requests by address ({load}, warm-up included):"]
    for endpoint, count in run["requests_by_endpoint"].items():
        lines.append(
            f"  {endpoint:<40} {'unknown (it did not answer)' if count is None else f'{count:,}'}"
        )
    return "\n".join(lines)


def write_plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    """Latency percentiles against achieved throughput: one point per run, labelled by its load."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [run["throughput_rps"] for run in runs]
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        ax.plot(x, [run[key] for run in runs], marker="o", label=label)
    for run in runs:
        load = f"c={run['concurrency']}" if run["concurrency"] else f"{run['rate']:g}/s"
        ax.annotate(
            load,
            (run["throughput_rps"], run["p99_ms"] or 0.0),
            textcoords="offset points",
            xytext=(4, 4),
        )
    ax.set(xlabel="throughput (requests/s)", ylabel="latency (ms)", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
