"""`zoo load` against Triton's perf_analyzer: the same server, the same load, both tools.

    python bench/loadtest_vs_perf_analyzer.py --model bn_cnn --loads c1,c4,r300,c4x32

Starts `zoo serve` on a free loopback port (or uses --url), then for each load - `cN` a
closed loop with N requests in flight, `rN` an open loop of N requests/s at even spacing,
either with `xB` for B images per request -
runs both tools in turn, alternating which goes first, with zero-filled inputs for both
(perf_analyzer's random bytes would be NaN and Inf floats). perf_analyzer reports the mean
of its last three stable windows, so its window is a third of our measured duration.
Each pair runs `--repeats` times and the medians are compared, because the shared machine's
load changes by tens of percent within a minute. Prints a table and writes JSON: requests/s,
images/s, p50, p90 and p99 per tool (medians, and every run), and ours/perf_analyzer's.
The aim is agreement within 15%.

`--server-cpus 0 --client-cpus 1` pins the server to some CPUs and both tools to others,
so that neither tool's own CPU is taken from the server (perf_analyzer's documentation
advises running it apart from the server); the server then runs one instance per model.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from client.errors import InferenceServerException  # noqa: E402
from client.sync import ZooClient  # noqa: E402

log = logging.getLogger("bench.loadtest_vs_perf_analyzer")

AGREEMENT = 0.15  # the aim: within 15% of perf_analyzer
COMPARED = ("throughput_rps", "p50_ms", "p90_ms", "p99_ms")
SERVER_START_TIMEOUT_S = 60.0
# perf_analyzer measures until three windows agree within this many percent; the default
# 10% is rarely met on a 2-core machine shared with other work.
STABILITY_PERCENT = 25
MAX_TRIALS = 12


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_cpus(spec: str | None) -> set[int] | None:
    """`0`, `0,1` or `0-3`: the CPUs a process may run on (None: any)."""
    if spec is None:
        return None
    cpus: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def pinned(cpus: set[int] | None) -> dict[str, Any]:
    """subprocess keywords that start the child on `cpus` only."""
    if cpus is None:
        return {}
    return {"preexec_fn": lambda: os.sched_setaffinity(0, cpus)}


@contextmanager
def served(repository: Path, url: str | None, cpus: set[int] | None = None) -> Iterator[str]:
    """The server address: the given one, or a `zoo serve` started here for the run."""
    if url is not None:
        yield url
        return
    port = free_port()
    command = [sys.executable, "-m", "zoo.cli", "serve", "--repository", str(repository),
               "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1"]  # fmt: skip
    if cpus is not None:
        # One session call per model at a time: two would fight over the pinned CPUs.
        command += ["--instances", "1", "--intra-op-threads", str(len(cpus))]
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **pinned(cpus)
    )
    try:
        wait_ready(f"127.0.0.1:{port}", server)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_ready(address: str, server: subprocess.Popen) -> None:
    give_up = time.monotonic() + SERVER_START_TIMEOUT_S
    with ZooClient(address, timeout=2.0) as client:
        while time.monotonic() < give_up and server.poll() is None:
            try:
                if client.is_server_ready():
                    return
            except InferenceServerException:  # not listening yet
                time.sleep(0.2)
    raise SystemExit(f"zoo serve on {address} not ready (exit status {server.poll()})")


@dataclass(frozen=True)
class Load:
    kind: str  # "c": closed loop, value = concurrency; "r": open loop, value = requests/s
    value: int
    batch: int


def parse_load(spec: str, batch: int) -> Load:
    """`c4`, `r300`, or with a batch size of its own, `c4x32`."""
    match = re.fullmatch(r"([cr])(\d+)(?:x(\d+))?", spec)
    if match is None or int(match.group(2)) < 1:
        raise SystemExit(f"--loads: expected cN or rN (optionally xB for batch B), got {spec!r}")
    return Load(match.group(1), int(match.group(2)), int(match.group(3) or batch))


def run_zoo_load(address: str, args: argparse.Namespace, load: Load) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        flags = ["--concurrency" if load.kind == "c" else "--rate", str(load.value)]
        command = [sys.executable, "-m", "zoo.cli", "load", "--url", address, "--model", args.model,
                   *flags, "--batch", str(load.batch), "--input", "zeros",
                   "--duration", str(args.duration), "--warmup", str(args.warmup),
                   "--output", str(out), "--no-progress"]  # fmt: skip
        if args.processes:
            command += ["--processes", str(args.processes)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, **pinned(args.client_cpus))
        run = json.loads(out.read_text())["runs"][0]
    return {key: run[key] for key in ("throughput_rps", "images_per_s", *COMPARED[1:])}


def run_perf_analyzer(
    binary: str, address: str, args: argparse.Namespace, load: Load
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pa.csv"
        span = f"{load.value}:{load.value}"
        flags = (
            ["--concurrency-range", span]
            if load.kind == "c"
            else ["--request-rate-range", span, "--request-distribution", "constant"]
        )
        window_ms = max(500, int(args.duration * 1000 / 3))
        command = [binary, "-m", args.model, "-u", address, "-i", "grpc", "-b", str(load.batch),
                   *flags, "--input-data", "zero", "--measurement-interval", str(window_ms),
                   "-s", str(STABILITY_PERCENT), "--max-trials", str(MAX_TRIALS),
                   "-f", str(out)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, **pinned(args.client_cpus))
        if result.returncode != 0:
            return {"error": (result.stdout + result.stderr).strip().splitlines()[-1]}
        with out.open() as f:
            row = next(csv.DictReader(f))
    images_per_s = float(row["Inferences/Second"])  # perf_analyzer counts images, not requests
    return {
        "throughput_rps": images_per_s / load.batch,
        "images_per_s": images_per_s,
        **{f"p{p}_ms": float(row[f"p{p} latency"]) / 1e3 for p in (50, 90, 99)},  # CSV has µs
    }


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float] | None:
    if "error" in theirs:
        return None
    return {key: ours[key] / theirs[key] for key in COMPARED}


def perf_analyzer_binary() -> str:
    binary = (
        os.environ.get("ZOO_PERF_ANALYZER")
        or shutil.which("perf_analyzer")
        or str(ROOT / ".venv/bin/perf_analyzer")
    )
    probe = subprocess.run([binary, "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(
            f"perf_analyzer at {binary} does not run; run tools/install-perf-analyzer.sh"
        )
    return binary


def format_rows(results: list[dict[str, Any]]) -> str:
    head = ("load", "tool", "req/s", "images/s", "p50 ms", "p90 ms", "p99 ms")
    lines = [" ".join(f"{h:>{w}}" for h, w in zip(head, (6, 14, 9, 9, 8, 8, 8), strict=True))]
    for r in results:
        for tool in ("zoo_load", "perf_analyzer"):
            m = r[tool]
            if "error" in m:
                lines.append(f"{r['load']:>6} {tool:>14} failed: {m['error']}")
                continue
            lines.append(
                f"{r['load']:>6} {tool:>14} {m['throughput_rps']:>9,.0f} "
                f"{m['images_per_s']:>9,.0f} "
                f"{m['p50_ms']:>8.2f} {m['p90_ms']:>8.2f} {m['p99_ms']:>8.2f}"
            )
        if r["ratio"]:
            q = r["ratio"]
            lines.append(
                f"{'':>6} {'ours/theirs':>14} {q['throughput_rps']:>9.3f} {'':>9} "
                f"{q['p50_ms']:>8.3f} {q['p90_ms']:>8.3f} {q['p99_ms']:>8.3f}"
            )
    return "\n".join(lines)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the repeats that succeeded (the machine is shared: noisy)."""
    good = [run for run in runs if "error" not in run]
    if not good:
        return runs[-1]
    return {key: statistics.median(run[key] for run in good) for key in good[0]} | {
        "repeats": len(good)
    }


def measure(
    binary: str, address: str, args: argparse.Namespace, n: int, spec: str
) -> dict[str, Any]:
    """Both tools on one load, `--repeats` times, alternating which goes first."""
    load = parse_load(spec, args.batch)
    tools = [
        ("zoo_load", lambda: run_zoo_load(address, args, load)),
        ("perf_analyzer", lambda: run_perf_analyzer(binary, address, args, load)),
    ]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in tools}
    for repeat in range(args.repeats):
        for name, run in tools if (n + repeat) % 2 == 0 else tools[::-1]:
            log.info("%s, repeat %d: %s", spec, repeat + 1, name)
            runs[name].append(run())
    medians = {name: median_run(r) for name, r in runs.items()}
    return {"load": spec, "batch": load.batch, **medians, "all_runs": runs,
            "ratio": compare(medians["zoo_load"], medians["perf_analyzer"])}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--model", required=True)
    parser.add_argument("--url", help="an already running server (default: start zoo serve)")
    parser.add_argument(
        "--loads",
        default="c1,c4,c16,r300,r1000,c4x32",
        help="cN closed loop, rN open loop, xB batch B",
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool and load (medians)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--processes", type=int, help="zoo load generator processes")
    parser.add_argument("--server-cpus", help="pin the server started here: e.g. 0 or 0-1")
    parser.add_argument("--client-cpus", help="pin both load tools: e.g. 1 or 2-3")
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench/results/loadtest_vs_perf_analyzer.json"
    )
    args = parser.parse_args(argv)
    args.server_cpus, args.client_cpus = parse_cpus(args.server_cpus), parse_cpus(args.client_cpus)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    binary = perf_analyzer_binary()
    with served(args.repository, args.url, args.server_cpus) as address:
        results = [
            measure(binary, address, args, n, spec) for n, spec in enumerate(args.loads.split(","))
        ]
    print(format_rows(results))
    ratios = [abs(r["ratio"][k] - 1.0) for r in results if r["ratio"] for k in COMPARED]
    worst = max(ratios) if ratios else None
    if worst is not None:
        print(f"largest disagreement: {worst:.1%} (aim: within {AGREEMENT:.0%})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "model": args.model,
        "duration_s": args.duration,
        "server_cpus": sorted(args.server_cpus) if args.server_cpus else None,
        "client_cpus": sorted(args.client_cpus) if args.client_cpus else None,
        "runs": results,
        "largest_disagreement": worst,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
