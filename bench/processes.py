"""Scaling benchmark of `zoo serve --processes N`: requests/s and memory against N.

    python bench/processes.py [--model bn_cnn] [--counts 1,2] [--seconds 8]

For each process count N the server starts on the shipped repository, and `zoo load`
sends batch 1 at 32 in flight and batch 32 at 4 in flight. The load comes from 4
generator processes, each with its own connection: the kernel spreads connections (not
requests) over the workers of an SO_REUSEPORT port, so a single-connection client
would reach only one worker. Reported: requests/s, images/s and p50/p99 per load, each
worker's resident memory (from the server's /metrics) and the machine's load average
before each run (other work sharing the CPUs).

Writes bench/results/processes.json and .md, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LOADS = ((1, 32), (32, 4))  # (batch, concurrency)
GENERATORS = 4
_READY = re.compile(r"ready on (\S+):(\d+), metrics on port (\d+)")


def start_server(repository: Path, model: str, processes: int, log: Path) -> tuple[Any, str, int]:
    command = [sys.executable, "-m", "server", "--repository", str(repository)]
    command += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--device", "cpu"]
    command += ["--processes", str(processes)]
    with log.open("w") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    assert process.stdout is not None
    match = _READY.search(process.stdout.readline())
    if match is None:
        process.kill()
        raise RuntimeError(f"server did not start:\n{log.read_text()[-2000:]}")
    return process, f"{match[1]}:{match[2]}", int(match[3])


def worker_memory_mb(metrics_port: int, server_pid: int) -> list[float]:
    """Each worker's resident memory (MB): from /metrics with several processes, from
    /proc for a lone server (whose registry has no process metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    per_worker = re.findall(r"^zoo_worker_resident_memory_bytes\{[^}]*\} (\S+)$", text, re.M)
    if per_worker:
        return [float(v) / 1e6 for v in per_worker]
    status = Path(f"/proc/{server_pid}/status").read_text()
    return [int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) * 1024 / 1e6]  # type: ignore[index]


def zoo_load(
    address: str,
    model: str,
    batch: int,
    concurrency: int,
    seconds: float,
    generators: int = GENERATORS,
) -> dict:
    """One closed-loop `zoo load` run with zero inputs after 1 s of warm-up, from at most
    `generators` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        command = [sys.executable, "-m", "zoo.cli", "load", "--url", address, "--model", model]
        command += ["--batch", str(batch), "--concurrency", str(concurrency)]
        command += ["--processes", str(min(generators, concurrency)), "--input", "zeros"]
        command += ["--duration", str(seconds), "--warmup", "1", "--no-progress"]
        command += ["--output", str(out)]
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=600)
        (run,) = json.loads(out.read_text())["runs"]
    return {
        "requests_per_s": run["throughput_rps"],
        "images_per_s": run["images_per_s"],
        "p50_ms": run["p50_ms"],
        "p99_ms": run["p99_ms"],
        "errors": run["errors"],
    }


def measure(repository: Path, model: str, counts: list[int], seconds: float) -> list[dict]:
    rows = []
    for processes in counts:
        with tempfile.TemporaryDirectory() as tmp:
            server, address, metrics = start_server(
                repository, model, processes, Path(tmp) / "server.log"
            )
            try:
                row: dict[str, Any] = {"processes": processes, "loads": {}}
                for batch, concurrency in LOADS:
                    load_before = os.getloadavg()[0]
                    result = zoo_load(address, model, batch, concurrency, seconds)
                    result["load_average_before"] = round(load_before, 2)
                    row["loads"][f"{batch}x{concurrency}"] = result
                    print(f"  {processes} processes, batch {batch} x {concurrency}: {result}")
                row["worker_rss_mb"] = [round(m, 1) for m in worker_memory_mb(metrics, server.pid)]
                rows.append(row)
            finally:
                server.terminate()
                server.wait(60)
        time.sleep(1)  # let the port's connections close before the next server
    return rows


def table(results: dict) -> str:
    loads = [f"{b}x{c}" for b, c in LOADS]
    lines = [
        f"`{results['model']}`, {results['seconds']:g} s per point, {results['cpus']} CPUs, "
        f"{results['date']}; load from `zoo load` ({GENERATORS} generator processes).",
        "",
        "| processes | "
        + " | ".join(f"batch {lo.replace('x', ' × ')} req/s (p99 ms)" for lo in loads)
        + " | RSS per worker MB | RSS total MB | load avg before |",
        "|---:|" + "---:|" * len(loads) + "---|---:|---|",
    ]
    base = {lo: results["rows"][0]["loads"][lo]["requests_per_s"] for lo in loads}
    for row in results["rows"]:
        cells = []
        for lo in loads:
            r = row["loads"][lo]
            ratio = r["requests_per_s"] / base[lo] if base[lo] else float("nan")
            cells.append(f"{r['requests_per_s']:,.0f} ({r['p99_ms']:.1f}) ×{ratio:.2f}")
        rss = row["worker_rss_mb"]
        before = ", ".join(f"{row['loads'][lo]['load_average_before']:.1f}" for lo in loads)
        lines.append(
            f"| {row['processes']} | "
            + " | ".join(cells)
            + f" | {', '.join(f'{m:.0f}' for m in rss)} | {sum(rss):.0f} | {before} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--model", default="bn_cnn")
    parser.add_argument("--counts", type=lambda s: [int(c) for c in s.split(",")], default=[1, 2])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--output", type=Path, default=RESULTS / "processes.json")
    args = parser.parse_args(argv)
    results = {
        "model": args.model,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
        "rows": measure(args.repository, args.model, args.counts, args.seconds),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    markdown = table(results)
    args.output.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
