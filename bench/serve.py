"""Serving benchmark: our server against a no-op gRPC server and
in-process onnxruntime, per model, under the same load, in one run.

    python bench/serve.py [--repository model_repository] [--models a,b] [--seconds 2]

Loads: batch 1 at concurrency 1, 8 and 32; batch 32 at concurrency 4. Over gRPC the load
comes from Triton's perf_analyzer (C++: the client costs the shared CPUs little); the
no-op server is the same grpcio stack and protocol answering canned replies without
decoding or computing: the ceiling of a Python gRPC server on this machine. In-process
onnxruntime runs the same closed loop with threads calling session.run.

Our server is also measured over HTTP/REST (perf_analyzer -i http), with binary tensors
(Triton's extension, perf_analyzer's default) and with JSON tensors, in the same run.

Writes bench/results/serve.json and bench/results/serve.md (the README tables), and
prints them. `--noop-server` runs the no-op server itself (used by the benchmark).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from proto import grpc_service_pb2 as pb  # noqa: E402
from zoo.repository import list_models, list_versions, model_file, read_model_config  # noqa: E402

log = logging.getLogger("bench.serve")

LOADS = ((1, 1), (1, 8), (1, 32), (32, 4))  # (batch, concurrency)
PERF_ANALYZER = ROOT / ".venv" / "bin" / "perf_analyzer"
RESULTS = ROOT / "bench" / "results"
_READY = re.compile(r"ready on (\S+):(\d+)(?:, metrics on port \d+)?(?:, http on port (\d+))?")
HTTP_KINDS = {"zoo http binary": "binary", "zoo http json": "json"}


# -- the no-op server ----------------------------------------------------------------


def run_noop_server(repository: Path) -> int:
    """Serve metadata/config like our server, and canned ModelInfer replies."""
    from concurrent.futures import ThreadPoolExecutor as Pool

    import grpc

    from proto.grpc_service_pb2_grpc import (
        GRPCInferenceServiceServicer,
        add_GRPCInferenceServiceServicer_to_server,
    )
    from server.core import InferenceCore
    from server.settings import ServeSettings

    core = InferenceCore(ServeSettings(repository=repository, device="cpu"))
    core.start()
    canned: dict[tuple[str, int], pb.ModelInferResponse] = {}

    def reply(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        batch = request.inputs[0].shape[0]
        key = (request.model_name, batch)
        if key not in canned:
            response = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
            for name in ("logits", "probabilities"):
                response.outputs.add(name=name, datatype="FP32", shape=[batch, 10])
                response.raw_output_contents.append(bytes(4 * 10 * batch))
            canned[key] = response
        return canned[key]

    class Noop(GRPCInferenceServiceServicer):
        def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(name="noop", version="0")  # no statistics

        def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
            return core.model_metadata(request.name, request.version)

        def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
            return core.model_config(request.name, request.version)

        def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
            return reply(request)

    server = grpc.server(Pool(max_workers=64), options=[("grpc.so_reuseport", 0)])
    add_GRPCInferenceServiceServicer_to_server(Noop(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"noop: ready on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()
    return 0


# -- measuring -----------------------------------------------------------------------


class ServerProcess:
    def __init__(self, command: list[str], log_path: Path) -> None:
        start = time.perf_counter()
        with log_path.open("w") as log_file:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log_file, text=True
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        self.ready_s = time.perf_counter() - start
        match = _READY.search(line)
        if match is None:
            self.process.kill()
            raise RuntimeError(f"{command}: did not start:\n{log_path.read_text()[-2000:]}")
        self.address = f"{match.group(1)}:{match.group(2)}"
        self.http_address = f"{match.group(1)}:{match.group(3)}" if match.group(3) else None

    def rss_mb(self, field: str = "VmRSS") -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kb = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
        return int(kb.group(1)) / 1024 if kb else float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def perf_analyzer(
    address: str,
    model: str,
    batch: int,
    concurrency: int,
    seconds: float,
    http_tensors: str | None = None,
) -> dict:
    """One perf_analyzer run: requests/s, images/s, p50/p99 ms (client side); over gRPC,
    or over HTTP with `http_tensors` "binary" or "json"."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.csv"
        protocol = "grpc" if http_tensors is None else "http"
        command = [str(PERF_ANALYZER), "-m", model, "-u", address, "-i", protocol]
        if http_tensors is not None:
            command += ["--input-tensor-format", http_tensors]
            command += ["--output-tensor-format", http_tensors]
        command += ["-b", str(batch), "--concurrency-range", str(concurrency)]
        # Stability (-s) as loose as it goes: on a shared 2-core machine windows rarely
        # agree within perf_analyzer's default 10% and the run would abort. (Its
        # --request-count mode misreports throughput for runs under a second.)
        command += ["--measurement-interval", str(int(seconds * 1000)), "-s", "1000"]
        command += ["--input-data", "zero", "-f", str(report)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0 or not report.exists():
            raise RuntimeError(f"perf_analyzer failed:\n{done.stdout[-1500:]}{done.stderr[-500:]}")
        (row,) = list(csv.DictReader(report.open()))
    images = float(row["Inferences/Second"])
    return {
        "requests_per_s": images / batch,
        "images_per_s": images,
        "p50_ms": int(row["p50 latency"]) / 1000,
        "p99_ms": int(row["p99 latency"]) / 1000,
    }


def in_process(session: Any, batch: int, concurrency: int, seconds: float) -> dict:
    """The same closed loop on an in-process onnxruntime session."""
    feed = {"images": np.zeros((batch, 1, 28, 28), np.float32)}
    session.run(None, feed)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stop = threading.Event()

    def loop(mine: list[float]) -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            session.run(None, feed)
            mine.append(time.perf_counter() - t0)

    with ThreadPoolExecutor(concurrency) as pool:
        for mine in latencies:
            pool.submit(loop, mine)
        time.sleep(seconds)
        stop.set()
    all_latencies = np.concatenate([np.array(x) for x in latencies])
    requests = len(all_latencies) / seconds
    return {
        "requests_per_s": requests,
        "images_per_s": requests * batch,
        "p50_ms": float(np.percentile(all_latencies, 50) * 1000),
        "p99_ms": float(np.percentile(all_latencies, 99) * 1000),
    }


def _served_file(repository: Path, model: str) -> Path:
    model_dir = repository / model
    config = read_model_config(model_dir)
    version = list_versions(model_dir, config.version_policy)[-1]
    return model_file(model_dir, version, config)


def measure(
    servers: dict[str, ServerProcess], repository: Path, models: list[str], seconds: float
) -> dict[str, dict]:
    """Each load point on each target back to back, so that all three see the same
    machine (on a shared machine its load drifts between minutes)."""
    import onnxruntime as ort

    http = servers["zoo"].http_address
    kinds = (*servers, *(HTTP_KINDS if http else ()), "onnxruntime")
    results: dict[str, dict] = {kind: {} for kind in kinds}
    for model in models:
        session = ort.InferenceSession(
            str(_served_file(repository, model)), providers=["CPUExecutionProvider"]
        )
        for batch, concurrency in LOADS:
            key = f"{model} b{batch} c{concurrency}"
            for kind, server in servers.items():
                results[kind][key] = perf_analyzer(
                    server.address, model, batch, concurrency, seconds
                )
            for kind, tensors in HTTP_KINDS.items() if http else ():
                results[kind][key] = perf_analyzer(
                    http, model, batch, concurrency, seconds, tensors
                )
            results["onnxruntime"][key] = in_process(session, batch, concurrency, seconds)
            log.info("%s: %s", key, ", ".join(f"{k} {_brief(r[key])}" for k, r in results.items()))
    return results


def _brief(row: dict) -> str:
    return f"{row['requests_per_s']:.0f} req/s, p50 {row['p50_ms']:.2f} ms"


# -- reporting -----------------------------------------------------------------------


def table(results: dict, models: list[str]) -> str:
    zoo, noop, local = results["zoo"], results["noop"], results["onnxruntime"]
    lines = [
        "| model | batch | conc. | zoo req/s | zoo img/s | p50 ms | p99 ms | no-op req/s "
        "| zoo/no-op | in-process img/s | zoo/in-process |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        for batch, concurrency in LOADS:
            key = f"{model} b{batch} c{concurrency}"
            z, n, o = zoo[key], noop[key], local[key]
            lines.append(
                f"| {model} | {batch} | {concurrency} | {z['requests_per_s']:.0f} "
                f"| {z['images_per_s']:.0f} | {z['p50_ms']:.2f} | {z['p99_ms']:.2f} "
                f"| {n['requests_per_s']:.0f} | {z['requests_per_s'] / n['requests_per_s']:.0%} "
                f"| {o['images_per_s']:.0f} | {z['images_per_s'] / o['images_per_s']:.0%} |"
            )
    lines.append("")
    lines.append(
        f"Our server: ready in {zoo['ready_s']:.2f} s with {len(models)} models, RSS "
        f"{zoo['rss_idle_mb']:.0f} MB idle, {zoo['rss_peak_mb']:.0f} MB peak; no-op server "
        f"RSS {noop['rss_peak_mb']:.0f} MB peak. Load: perf_analyzer -i grpc, "
        f"{results['seconds']:.1f} s windows, client and server on the same "
        f"{results['cpus']}-CPU machine; repository {results['repository']}."
    )
    if all(kind in results for kind in HTTP_KINDS):
        lines += ["", *http_table(results, models)]
    return "\n".join(lines)


def http_table(results: dict, models: list[str]) -> list[str]:
    """Our server over HTTP (binary and JSON tensors) against gRPC, same run."""
    lines = [
        "| model | batch | conc. | gRPC req/s (p50 / p99 ms) | HTTP binary req/s (p50 / p99) "
        "| HTTP JSON req/s (p50 / p99) | binary / gRPC | JSON / gRPC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        for batch, concurrency in LOADS:
            key = f"{model} b{batch} c{concurrency}"
            g = results["zoo"][key]
            b, j = (results[kind][key] for kind in HTTP_KINDS)
            cells = [
                f"{r['requests_per_s']:.0f} ({r['p50_ms']:.2f} / {r['p99_ms']:.2f})"
                for r in (g, b, j)
            ]
            lines.append(
                f"| {model} | {batch} | {concurrency} | "
                + " | ".join(cells)
                + f" | {b['requests_per_s'] / g['requests_per_s']:.0%}"
                + f" | {j['requests_per_s'] / g['requests_per_s']:.0%} |"
            )
    return lines


def run_all(repository: Path, models: list[str], seconds: float) -> dict[str, dict]:
    """Start our server and the no-op one, measure everything, record their memory."""
    python, repo = sys.executable, str(repository)
    zoo_command = [python, "-m", "server", "--repository", repo, "--host", "127.0.0.1"]
    zoo_command += ["--port", "0", "--metrics-port", "-1", "--http-port", "0", "--device", "cpu"]
    noop_command = [python, str(Path(__file__).resolve()), "--noop-server", "--repository", repo]
    with tempfile.TemporaryDirectory() as logs:
        servers = {
            "zoo": ServerProcess(zoo_command, Path(logs) / "zoo.log"),
            "noop": ServerProcess(noop_command, Path(logs) / "noop.log"),
        }
        try:
            idle = {kind: server.rss_mb() for kind, server in servers.items()}
            results = measure(servers, repository, models, seconds)
            for kind, server in servers.items():
                results[kind].update(
                    ready_s=server.ready_s,
                    rss_idle_mb=idle[kind],
                    rss_peak_mb=server.rss_mb("VmHWM"),
                )
            return results
        finally:
            for server in servers.values():
                server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--models", type=lambda s: s.split(","), help="default: all")
    parser.add_argument("--seconds", type=float, default=2.0, help="measurement window")
    parser.add_argument("--output", type=Path, default=RESULTS / "serve.json")
    parser.add_argument("--noop-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.noop_server:
        return run_noop_server(args.repository)
    if not PERF_ANALYZER.exists():
        raise SystemExit(f"{PERF_ANALYZER} missing: run bash tools/install-perf-analyzer.sh")
    models = args.models or list_models(args.repository)
    results: dict[str, Any] = {
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],  # other work
        "machine": platform.platform(),
        "repository": str(args.repository),
        "models": models,
    }
    results.update(run_all(args.repository, models, args.seconds))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    markdown = table(results, models)
    args.output.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
