"""`zoo load` against Triton's perf_analyzer: the same server, the same load, both tools.

    python bench/loadtest_vs_perf_analyzer.py --repository model_repository --model bn_cnn

Starts `zoo serve` on a free loopback port (or uses --url), then for each load (closed
loop at each --concurrency, batch --batch) runs both tools in turn, alternating which
goes first, with zero-filled inputs for both (perf_analyzer's random bytes would be NaN
and Inf floats). Prints a table and writes JSON: requests/s, images/s, p50 and p99 per
tool, and the ratio of ours to perf_analyzer's. The aim (issue 5) is agreement within 15%.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client.sync import ZooClient  # noqa: E402  (after the path set-up above)

log = logging.getLogger("bench.loadtest_vs_perf_analyzer")

AGREEMENT = 0.15  # issue 5: within 15% of perf_analyzer
COMPARED = ("throughput_rps", "p50_ms", "p99_ms")
SERVER_START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served(repository: Path, url: str | None):
    """The server address: the given one, or a `zoo serve` started here for the run."""
    if url is not None:
        yield url
        return
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "zoo.cli",
        "serve",
        "--repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        "-1",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        address = f"127.0.0.1:{port}"
        wait_ready(address, server)
        yield address
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_ready(address: str, server: subprocess.Popen) -> None:
    give_up = time.monotonic() + SERVER_START_TIMEOUT_S
    with ZooClient(address, timeout=2.0) as client:
        while time.monotonic() < give_up:
            if server.poll() is not None:
                raise SystemExit(
                    f"zoo serve exited with {server.returncode}: {server.stderr.read()[-2000:]}"
                )
            try:
                if client.is_server_ready():
                    return
            except Exception:  # not listening yet
                time.sleep(0.2)
    raise SystemExit(f"zoo serve not ready within {SERVER_START_TIMEOUT_S:.0f} s")


def run_zoo_load(address: str, args: argparse.Namespace, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        command = [
            sys.executable,
            "-m",
            "zoo.cli",
            "load",
            "--url",
            address,
            "--model",
            args.model,
            "--concurrency",
            str(concurrency),
            "--batch",
            str(args.batch),
            "--input",
            "zeros",
            "--duration",
            str(args.duration),
            "--warmup",
            str(args.warmup),
            "--output",
            str(out),
            "--no-progress",
        ]
        if args.processes:
            command += ["--processes", str(args.processes)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        run = json.loads(out.read_text())["runs"][0]
    return {
        key: run[key] for key in ("throughput_rps", "images_per_s", "p50_ms", "p90_ms", "p99_ms")
    }


def run_perf_analyzer(
    binary: str, address: str, args: argparse.Namespace, concurrency: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pa.csv"
        # Windows as long as ours; perf_analyzer keeps measuring until 3 windows agree.
        command = [
            binary,
            "-m",
            args.model,
            "-u",
            address,
            "-i",
            "grpc",
            "-b",
            str(args.batch),
            "--concurrency-range",
            f"{concurrency}:{concurrency}",
            "--input-data",
            "zero",
            "--measurement-interval",
            str(int(args.duration * 1000)),
            "--max-trials",
            "6",
            "-f",
            str(out),
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with out.open() as f:
            row = next(csv.DictReader(f))
    images_per_s = float(row["Inferences/Second"])  # perf_analyzer counts images, not requests
    return {
        "throughput_rps": images_per_s / args.batch,
        "images_per_s": images_per_s,
        "p50_ms": float(row["p50 latency"]) / 1e3,  # microseconds in its CSV
        "p90_ms": float(row["p90 latency"]) / 1e3,
        "p99_ms": float(row["p99 latency"]) / 1e3,
    }


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    return {key: ours[key] / theirs[key] for key in COMPARED}


def perf_analyzer_binary() -> str:
    binary = (
        os.environ.get("ZOO_PERF_ANALYZER")
        or shutil.which("perf_analyzer")
        or str(ROOT / ".venv/bin/perf_analyzer")
    )
    probe = subprocess.run([binary, "--help"], capture_output=True, text=True)
    if "Usage" not in probe.stdout + probe.stderr or probe.stderr.startswith(binary + ": error"):
        raise SystemExit(
            f"perf_analyzer at {binary} does not run ({probe.stderr.strip()[:200]}); "
            "run tools/install-perf-analyzer.sh"
        )
    return binary


def format_rows(results: list[dict[str, Any]]) -> str:
    lines = [f"{'load':>6} {'tool':>14} {'req/s':>9} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8}"]
    for r in results:
        for tool in ("zoo_load", "perf_analyzer"):
            m = r[tool]
            lines.append(
                f"{'c=' + str(r['concurrency']):>6} {tool:>14} {m['throughput_rps']:>9,.0f} "
                f"{m['images_per_s']:>9,.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f}"
            )
        ratio = r["ratio"]
        lines.append(
            f"{'':>6} {'ours/theirs':>14} {ratio['throughput_rps']:>9.3f} {'':>9} "
            f"{ratio['p50_ms']:>8.3f} {ratio['p99_ms']:>8.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--model", required=True)
    parser.add_argument("--url", help="an already running server (default: start zoo serve)")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated closed-loop loads")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--processes", type=int, help="zoo load generator processes")
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench/results/loadtest_vs_perf_analyzer.json"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    binary = perf_analyzer_binary()
    results = []
    with served(args.repository, args.url) as address:
        for n, concurrency in enumerate(int(c) for c in args.concurrency.split(",")):
            tools = [
                ("zoo_load", lambda c=concurrency: run_zoo_load(address, args, c)),
                (
                    "perf_analyzer",
                    lambda c=concurrency: run_perf_analyzer(binary, address, args, c),
                ),
            ]
            measured = {}
            for name, run in tools if n % 2 == 0 else tools[::-1]:  # alternate who goes first
                log.info("concurrency %d: %s", concurrency, name)
                measured[name] = run()
            results.append(
                {
                    "concurrency": concurrency,
                    "batch": args.batch,
                    **measured,
                    "ratio": compare(measured["zoo_load"], measured["perf_analyzer"]),
                }
            )
    print(format_rows(results))
    worst = max(abs(r["ratio"][k] - 1.0) for r in results for k in COMPARED)
    print(f"largest disagreement: {worst:.1%} (aim: within {AGREEMENT:.0%})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps({"model": args.model, "runs": results, "largest_disagreement": worst}, indent=2)
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
