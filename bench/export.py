"""What folding BatchNorm buys at inference: onnxruntime latency, folded vs unfolded.

    python bench/export.py [MODEL...] [--checkpoints-dir runs] [--out bench/results/export.json]

Per model, two graphs from the same weights (the trained checkpoint in
`runs/<model>/model.pt` when there is one, else random weights): "folded" (our pass)
and "unfolded" (BatchNormalization nodes kept). Both are exported with the onnxscript
optimiser off, since it would fold BatchNorm itself and hide the difference. Each is
timed in onnxruntime (CPU, default threads, no spin-waiting) with graph optimisations
disabled and enabled, at batch 1 and 64: median and p90 of per-call latency after a warm-up.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoo.checkpoint import load_checkpoint  # noqa: E402  (after the path set-up above)
from zoo.data import load_mnist  # noqa: E402
from zoo.export import DEFAULT_OPSET, fold_model, trace_onnx  # noqa: E402
from zoo.export.verify import OPTIMISATION_LEVELS, session  # noqa: E402
from zoo.models import get_spec, list_models  # noqa: E402

log = logging.getLogger("bench.export")

BATCHES = (1, 64)
WARMUP_CALLS = 10
IMAGE_SHAPE = (1, 28, 28)


def load_model(name: str, checkpoints_dir: Path) -> tuple[nn.Module, str]:
    path = checkpoints_dir / name / "model.pt"
    if path.is_file():
        return load_checkpoint(path, expect_model=name)[0], str(path)
    return get_spec(name).build().eval(), "random"


def export_pair(model: nn.Module, folder: Path) -> dict[str, Path]:
    """model.onnx for the folded and the unfolded graph of `model`."""
    graphs = {
        "folded": fold_model(model, torch.rand(2, *IMAGE_SHAPE)),
        "unfolded": model,
    }
    paths = {}
    for variant, module in graphs.items():
        paths[variant] = folder / f"{variant}.onnx"
        onnx.save_model(
            trace_onnx(module, IMAGE_SHAPE, DEFAULT_OPSET, optimize=False), paths[variant]
        )
    return paths


def interleaved_latencies(
    sessions: dict[tuple[str, str], ort.InferenceSession], images: np.ndarray, calls: int
) -> dict[tuple[str, str], dict[str, float]]:
    """Median and p90 ms per session, timing the sessions in turn, call by call.

    Round-robin rather than one session after another: on a shared machine a busy spell
    then slows every variant alike instead of whichever happened to be running. The
    sessions do not spin-wait (see `session`): a spinning pool would slow the next one.
    """
    feed = {"images": images}
    for sess in sessions.values():
        for _ in range(WARMUP_CALLS):
            sess.run(None, feed)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in sessions}
    for _ in range(calls):
        for key, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feed)
            times[key].append((time.perf_counter() - start) * 1e3)
    return {
        key: {"median_ms": statistics.median(t), "p90_ms": float(np.percentile(t, 90))}
        for key, t in times.items()
    }


def bench_model(name: str, checkpoints_dir: Path, calls: dict[int, int]) -> list[dict[str, Any]]:
    model, weights = load_model(name, checkpoints_dir)
    pixels = load_mnist("test").tensors()[0].numpy()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        paths = export_pair(model, Path(folder))
        nodes = {v: onnx.load(p).graph.node for v, p in paths.items()}
        sessions = {
            (variant, level): session(path, level, spin=False)
            for variant, path in paths.items()
            for level in OPTIMISATION_LEVELS
        }
        for batch in BATCHES:
            latencies = interleaved_latencies(sessions, pixels[:batch], calls[batch])
            for (variant, level), latency in latencies.items():
                rows.append(
                    {
                        "model": name,
                        "weights": weights,
                        "variant": variant,
                        "ort_optimisations": level,
                        "batch": batch,
                        "nodes": len(nodes[variant]),
                        "onnx_bytes": paths[variant].stat().st_size,
                        "batchnorm_nodes": sum(
                            n.op_type == "BatchNormalization" for n in nodes[variant]
                        ),
                        **latency,
                    }
                )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """One line per model and batch: median ms for each (optimisations, variant)."""
    columns = [
        (level, variant) for level in OPTIMISATION_LEVELS for variant in ("folded", "unfolded")
    ]
    header = f"{'model':<18} {'BN':>3} {'batch':>5} " + " ".join(
        f"{f'{variant} ({level[:3]})':>15}" for level, variant in columns
    )
    lines = [header, "-" * len(header)]
    index = {(r["model"], r["batch"], r["ort_optimisations"], r["variant"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        for batch in BATCHES:
            cells = [
                index[(model, batch, level, variant)]["median_ms"] for level, variant in columns
            ]
            bn = index[(model, batch, "disabled", "unfolded")]["batchnorm_nodes"]
            lines.append(
                f"{model:<18} {bn:>3} {batch:>5} " + " ".join(f"{c:>12.3f} ms" for c in cells)
            )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "ort_threads": "default, no spin-waiting",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="registered models (default: all)")
    parser.add_argument("--checkpoints-dir", type=Path, default=ROOT / "runs")
    parser.add_argument("--calls-batch-1", type=int, default=200)
    parser.add_argument("--calls-batch-64", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "export.json")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    names = args.models or [spec.name for spec in list_models()]
    calls = {1: args.calls_batch_1, 64: args.calls_batch_64}
    rows = []
    for name in names:
        log.info("%s: exporting folded and unfolded graphs, timing onnxruntime", name)
        rows += bench_model(name, args.checkpoints_dir, calls)
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(
        json.dumps({"machine": machine(), "calls": calls, "results": rows}, indent=2) + "\n"
    )
    tmp.replace(args.out)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
