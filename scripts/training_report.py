"""Collect the training runs under runs/ into docs/training.md (a results table) and
docs/training_curves.png (validation accuracy per epoch of every model).

    python scripts/training_report.py [--runs runs] [--out docs]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from zoo.checkpoint import read_checkpoint
from zoo.models import list_models

HEADER = (
    "| model | family | command | seed | epochs | threads | images/s "
    "| wall time | test accuracy | target |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(run: Path, target: float | None, history: list[dict]) -> str:
    card, _ = read_checkpoint(run / "model.pt")
    speed = statistics.median(r["images_per_s"] for r in history)
    accuracy = card.metrics["test_accuracy"].value
    verdict = "" if target is None else (" ✅" if accuracy >= target else " ❌ missed")
    target_text = "—" if target is None else f"≥ {100 * target:.1f}%"
    minutes = card.training["wall_time_s"] / 60
    return (
        f"| {card.name} | {card.family} | `{card.metrics['test_accuracy'].command}` "
        f"| {card.training['seed']} | {card.training['epochs']} | {card.training['threads']} "
        f"| {speed:,.0f} | {minutes:.1f} min | {100 * accuracy:.2f}%{verdict} | {target_text} |"
    )


def plot(histories: dict[str, list[dict]], path: Path) -> None:
    # Left: the whole range (deep plain nets may stay at chance); right: the top, zoomed.
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    colours = plt.get_cmap("tab20").colors  # 12 models: the default 10-colour cycle repeats
    for ax, (low, title) in zip(axes, [(0, "all models"), (97, "zoomed")], strict=True):
        for colour, (name, rows) in zip(colours, histories.items(), strict=False):
            accuracy = [100 * r["val_accuracy"] for r in rows]
            ax.plot([r["epoch"] for r in rows], accuracy, "o-", ms=3, color=colour, label=name)
        ax.set(xlabel="epoch", ylabel="validation accuracy (%)", ylim=(low, 100), title=title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, ncol=2, loc="lower right")
    fig.suptitle("MNIST validation accuracy per epoch (default recipes)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    rows, histories = [HEADER], {}
    for spec in list_models():
        run = args.runs / spec.name
        if not (run / "model.pt").is_file():
            rows.append(f"| {spec.name} | {spec.family} | not trained yet | | | | | | | |")
            continue
        metrics = (run / "metrics.jsonl").read_text().splitlines()
        histories[spec.name] = [json.loads(line) for line in metrics]
        rows.append(table_row(run, spec.target_accuracy, histories[spec.name]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training.md").write_text("\n".join(rows) + "\n")
    plot(histories, args.out / "training_curves.png")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
