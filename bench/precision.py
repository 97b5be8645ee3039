"""Float against int8 on this CPU: accuracy, agreement, size, onnxruntime latency.

    flock /tmp/modelzoo-cpu.lock python bench/precision.py [MODEL...] [--repository DIR]

For every float model of the repository (variants skipped), `export_variant` makes its
int8 variant in a temporary repository exactly as `zoo export MODEL --quantize int8` does
(calibration, the tolerance check, on all 10,000 test images). Both files are then timed
in process (onnxruntime CPU, default threads, optimisations enabled, as a server runs them)
at batch 1 and 32: per round, each session runs a block of calls and its mean per call is
kept; the float and int8 blocks alternate and swap order every round, and the figure is the
median over rounds. Prints a table, writes JSON and Markdown (with the load average before
and after, since the machine is shared).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoo import repository  # noqa: E402  (after the path set-up above)
from zoo.card import INPUT_NAME  # noqa: E402
from zoo.data import load_mnist  # noqa: E402
from zoo.export.pipeline import ExportSettings, export_variant, float_source  # noqa: E402
from zoo.export.verify import session  # noqa: E402

log = logging.getLogger("bench.precision")

BATCHES = (1, 32)
WARMUP_CALLS = 20
VARIANTS = ("float", "int8")


def folder_bytes(folder: Path) -> int:
    """What `du -sb` counts: every file's and folder's size, the folder itself included."""
    return folder.stat().st_size + sum(p.stat().st_size for p in folder.rglob("*"))


def calls_per_block(sessions: dict[str, ort.InferenceSession], feed: dict, seconds: float) -> int:
    """Warm both sessions up and size a block to take about `seconds` on the slower one."""
    slowest = 0.0
    for sess in sessions.values():
        start = time.perf_counter()
        for _ in range(WARMUP_CALLS):
            sess.run(None, feed)
        slowest = max(slowest, (time.perf_counter() - start) / WARMUP_CALLS)
    return max(10, int(seconds / slowest))


def interleaved_ms(
    sessions: dict[str, ort.InferenceSession], images: np.ndarray, rounds: int, seconds: float
) -> dict[str, dict[str, Any]]:
    """Median (over rounds) of each session's mean ms per call, blocks alternating."""
    feed = {INPUT_NAME: images}
    calls = calls_per_block(sessions, feed, seconds)
    rounds_ms: dict[str, list[float]] = {key: [] for key in sessions}
    for round_index in range(rounds):
        order = list(sessions) if round_index % 2 == 0 else list(reversed(sessions))
        for key in order:
            start = time.perf_counter()
            for _ in range(calls):
                sessions[key].run(None, feed)
            rounds_ms[key].append((time.perf_counter() - start) * 1e3 / calls)
    return {
        key: {
            "median_ms": statistics.median(ms),
            "images_per_s": len(images) * 1e3 / statistics.median(ms),
            "rounds_ms": [round(m, 5) for m in ms],
            "calls_per_round": calls,
        }
        for key, ms in rounds_ms.items()
    }


def bench_model(
    name: str,
    float_repository: Path,
    scratch: Path,
    data: tuple[np.ndarray, np.ndarray],
    args: argparse.Namespace,
) -> dict[str, Any]:
    settings = ExportSettings(
        repository=scratch, float_repository=float_repository, quantize="int8", progress=False
    )
    source = float_source(settings, name)
    variant = export_variant(source, "int8", settings, data, "zoo export --quantize int8")
    paths = {"float": source.onnx_path, "int8": variant.onnx_path}
    sessions = {key: session(path) for key, path in paths.items()}
    report = variant.report
    row: dict[str, Any] = {
        "model": name,
        "accuracy": {"float": report.float_accuracy, "int8": report.accuracy},
        "argmax_agreement": report.argmax_agreement,
        "onnx_bytes": {key: path.stat().st_size for key, path in paths.items()},
        "int8_folder_bytes": folder_bytes(scratch / variant.name),
        "calibration_images": settings.calibration_images,
        "test_images": report.images,
        "latency": {},
    }
    for batch in BATCHES:
        timing = interleaved_ms(sessions, data[0][:batch], args.rounds, args.block_seconds)
        row["latency"][str(batch)] = timing
        row[f"speedup_b{batch}"] = timing["float"]["median_ms"] / timing["int8"]["median_ms"]
    log.info(
        "%s: int8 %.2fx at batch 1, %.2fx at batch 32",
        name,
        row["speedup_b1"],
        row["speedup_b32"],
    )
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per model, float against int8."""
    lines = [
        "| model | accuracy float → int8 | agreement | size float → int8 | batch 1 ms float → "
        "int8 (speed-up) | batch 32 ms float → int8 (speed-up) | batch 32 images/s float → int8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b1, b32 = r["latency"]["1"], r["latency"]["32"]
        lines.append(
            f"| {r['model']} "
            f"| {100 * r['accuracy']['float']:.2f}% → {100 * r['accuracy']['int8']:.2f}% "
            f"| {100 * r['argmax_agreement']:.2f}% "
            f"| {r['onnx_bytes']['float'] / 1e6:.2f} → {r['onnx_bytes']['int8'] / 1e6:.2f} MB "
            f"| {b1['float']['median_ms']:.3f} → {b1['int8']['median_ms']:.3f} "
            f"({r['speedup_b1']:.2f}×) "
            f"| {b32['float']['median_ms']:.3f} → {b32['int8']['median_ms']:.3f} "
            f"({r['speedup_b32']:.2f}×) "
            f"| {b32['float']['images_per_s']:,.0f} → {b32['int8']['images_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def float_models(repo: Path) -> list[str]:
    """The repository's float models: those whose card marks no variant."""
    names = []
    for name in repository.list_models(repo):
        card = repository.read_card(repo / name)
        if card is not None and card.variant is None:
            names.append(name)
    return names


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="float models of the repository (default: all)")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per model and batch")
    parser.add_argument("--block-seconds", type=float, default=0.15, help="one block's length")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "precision.json")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    names = args.models or float_models(args.repository)
    load_before = os.getloadavg()
    images, labels = load_mnist("test").tensors()
    data = (images.numpy(), labels.numpy())
    with tempfile.TemporaryDirectory() as scratch:
        rows = [bench_model(name, args.repository, Path(scratch), data, args) for name in names]
    load_after = os.getloadavg()
    command = shlex.join(["python", "bench/precision.py", *sys.argv[1:]])
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "ort_threads": "default (one per core), spin-waiting on, optimisations enabled",
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    results = {
        "date": datetime.date.today().isoformat(),
        "command": command,
        "machine": machine,
        "rounds": args.rounds,
        "block_seconds": args.block_seconds,
        "results": rows,
    }
    markdown = table(rows)
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(args.out, json.dumps(results, indent=2) + "\n")
    header = (
        f"Float against int8, in-process onnxruntime {ort.__version__} on {os.cpu_count()} "
        f"CPU cores, {results['date']}: `{command}`; median of {args.rounds} interleaved "
        f"rounds; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after.\n\n"
    )
    write(args.out.with_suffix(".md"), header + markdown + "\n")
    log.info("wrote %s and %s", args.out, args.out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
