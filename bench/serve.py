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

    python bench/serve.py --peers [kserve,mlserver] [--rounds 5] [--seconds 2] [--models a,b]

`--peers` measures our server against KServe and MLServer instead, each serving the same
ONNX files with onnxruntime (CPU, default session options) from a small model class of
ours (bench/peers/), in its own virtual environment under bench/.peers/, created on first
use from the pinned bench/peers/*-requirements.txt (a peer that cannot be set up or
started is skipped with one line). Neither peer answers ModelConfig, which perf_analyzer
asks for before it sends anything, so this comparison takes its load from `zoo load` (one
generator process, closed loop, zero inputs, 1 s warm-up) for every server alike: ours,
the no-op server and both peers. Loads: bn_mlp and bn_cnn at batch 1 x 1 and 1 x 32 in
flight, batch 32 x 4. Rounds are interleaved: at each load point each server runs in turn
(the order rotating by round), then in-process onnxruntime with one thread calling; the
tables give medians over rounds and medians of the per-round ratios ours/KServe,
ours/MLServer and ours/roofline, where roofline = 1 / (1 / no-op req/s + seconds per
in-process call at that batch): a server that added nothing to the no-op stack's cost but
the model's own call. Each run records the load average before and after it and the CPU
that other work used during it (from /proc/stat, less the measured server's process tree
and the load generator). Every server runs with its defaults: ours; KServe logging each
request's latency; MLServer inferring in one worker process beside the one that serves,
its default debug mode logging each call. The peers serve REST too, unmeasured here
(`zoo load` speaks gRPC). Writes bench/results/peers.json and .md, and prints the tables.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from bench.processes import zoo_load  # noqa: E402
from proto import grpc_service_pb2 as pb  # noqa: E402
from zoo.repository import list_models, list_versions, model_file, read_model_config  # noqa: E402

log = logging.getLogger("bench.serve")

LOADS = ((1, 1), (1, 8), (1, 32), (32, 4))  # (batch, concurrency)
PERF_ANALYZER = ROOT / ".venv" / "bin" / "perf_analyzer"
RESULTS = ROOT / "bench" / "results"
_READY = re.compile(r"ready on (\S+):(\d+)(?:, metrics on port \d+)?(?:, http on port (\d+))?")
HTTP_KINDS = {"zoo http binary": "binary", "zoo http json": "json"}
PEERS = ("kserve", "mlserver")
PEER_NAMES = {"zoo": "zoo", "noop": "no-op", "kserve": "KServe", "mlserver": "MLServer"}
PEERS_DIR = ROOT / "bench" / "peers"  # committed: launcher, model classes, requirements
PEER_VENVS = ROOT / "bench" / ".peers"  # git-ignored: one virtual environment per peer
PEER_MODELS = ("bn_mlp", "bn_cnn")
PEER_LOADS = ((1, 1), (1, 32), (32, 4))  # (batch, concurrency)


# -- the no-op server ----------------------------------------------------------------


def canned_replies(core: Any) -> Callable[[pb.ModelInferRequest], pb.ModelInferResponse]:
    """ModelInfer replies of zeros shaped like the model's outputs (every zoo model's are
    [batch, 10]), made once per model and batch size: answering costs no computing."""
    canned: dict[tuple[str, int], pb.ModelInferResponse] = {}

    def reply(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        model = core.manager.get(request.model_name, request.model_version)
        batch = request.inputs[0].shape[0]
        key = (model.name, batch)
        if key not in canned:
            response = pb.ModelInferResponse(model_name=model.name, model_version=model.version)
            for spec in model.outputs:
                response.outputs.add(name=spec.name, datatype=spec.datatype, shape=[batch, 10])
                response.raw_output_contents.append(bytes(4 * 10 * batch))
            canned[key] = response
        return canned[key]

    return reply


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
    reply = canned_replies(core)

    class Noop(GRPCInferenceServiceServicer):
        def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)  # zoo load's generators connect with it

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


def _status_mb(pid: int, field: str) -> float:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM) in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    kb = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    return int(kb.group(1)) / 1024 if kb else float("nan")


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
        return _status_mb(self.process.pid, field)

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


def served_file(repository: Path, model: str) -> Path:
    """The model file the server would load for `model`: its latest version's."""
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
            str(served_file(repository, model)), providers=["CPUExecutionProvider"]
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


def zoo_command(repository: Path) -> list[str]:
    command = [sys.executable, "-m", "server", "--repository", str(repository)]
    command += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1"]
    return [*command, "--http-port", "0", "--device", "cpu"]


def noop_command(repository: Path) -> list[str]:
    script = str(Path(__file__).resolve())
    return [sys.executable, script, "--noop-server", "--repository", str(repository)]


def run_all(repository: Path, models: list[str], seconds: float) -> dict[str, dict]:
    """Start our server and the no-op one, measure everything, record their memory."""
    with tempfile.TemporaryDirectory() as logs:
        servers = {
            "zoo": ServerProcess(zoo_command(repository), Path(logs) / "zoo.log"),
            "noop": ServerProcess(noop_command(repository), Path(logs) / "noop.log"),
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


# -- peers: KServe and MLServer ------------------------------------------------------


def peer_python(peer: str) -> Path | None:
    """The python of the peer's own virtual environment, created (or remade when its
    pinned requirements changed) on first use; None, with one line logged, if that fails."""
    venv, requirements = PEER_VENVS / peer, PEERS_DIR / f"{peer}-requirements.txt"
    python, installed = venv / "bin" / "python", venv / "installed-requirements.txt"
    if installed.exists() and installed.read_text() == requirements.read_text():
        return python
    install_log = PEER_VENVS / f"{peer}-install.log"
    install_log.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--no-input", "-r", str(requirements)],
    ]
    log.info("%s: setting up %s (minutes, once): %s", peer, venv, " && ".join(map(" ".join, steps)))
    with install_log.open("w") as out:
        for step in steps:
            try:
                done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
            except (OSError, subprocess.TimeoutExpired) as error:
                log.warning("%s skipped: %s (%s)", peer, error, install_log)
                return None
            if done.returncode != 0:
                log.warning("%s skipped: could not set it up, see %s", peer, install_log)
                return None
    shutil.copyfile(requirements, installed)
    return python


def peer_versions(python: Path, peer: str) -> dict[str, str]:
    code = "import importlib.metadata as m, sys; print(*(m.version(p) for p in sys.argv[1:]))"
    packages = [peer, "onnxruntime", "grpcio"]
    done = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True)
    return dict(zip(packages, done.stdout.split(), strict=False))


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds all CPUs have spent busy since boot (/proc/stat's first line: user,
    nice, system, idle, iowait, irq, softirq, steal; guest time is counted in user)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces): state is [0]."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """The process and its descendants alive now (MLServer infers in a child process)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])
        except (OSError, IndexError):
            continue  # exited meanwhile
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def measured_cpu_s(pids: list[int]) -> float:
    """CPU seconds of what a window measures: the server's processes, this process (the
    in-process loop) and the children it has waited for (the load generator's)."""
    own = os.times()
    total = own.user + own.system + own.children_user + own.children_system
    for pid in pids:
        try:
            utime, stime = _stat_fields(pid)[11:13]
        except OSError:
            continue
        total += (int(utime) + int(stime)) / CLOCK_TICKS
    return total


def accounted(run: Callable[[], dict], server_pid: int | None) -> dict:
    """One measurement and the load around it: the 1-minute load average before and after,
    and `foreign_cpus`, how many CPUs' worth other work took meanwhile (all busy time less
    the server's and the load generator's)."""
    pids = process_tree(server_pid) if server_pid is not None else []
    load_before, start = os.getloadavg()[0], time.perf_counter()
    busy, measured = machine_busy_s(), measured_cpu_s(pids)
    result = run()
    foreign = (machine_busy_s() - busy) - (measured_cpu_s(pids) - measured)
    return {
        **result,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "foreign_cpus": round(max(foreign, 0.0) / (time.perf_counter() - start), 3),
    }


def start_peer_servers(
    repository: Path, models: list[str], peers: dict[str, Path], logs: Path
) -> dict[str, ServerProcess]:
    """Our server and the no-op one on a repository of just these models (as the peers
    load), then each peer on the same ONNX files; a peer that does not start is skipped."""
    subset = logs / "repository"
    shutil.rmtree(subset, ignore_errors=True)
    for model in models:
        shutil.copytree(repository / model, subset / model)
    servers = {"zoo": ServerProcess(zoo_command(subset), logs / "zoo.log")}
    try:
        servers["noop"] = ServerProcess(noop_command(subset), logs / "noop.log")
        files = [f"{m}={served_file(repository, m).resolve()}" for m in models]
        for peer, python in peers.items():
            command = [str(python), str(PEERS_DIR / "launch.py"), peer, *files]
            try:
                servers[peer] = ServerProcess(command, logs / f"{peer}.log")
            except RuntimeError:
                log.warning("%s skipped: it did not start, see %s", peer, logs / f"{peer}.log")
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def zoo_load_alone(address: str, model: str, batch: int, concurrency: int, seconds: float) -> dict:
    """`zoo load` from one generator process: the peers' load (they lack ModelConfig)."""
    return zoo_load(address, model, batch, concurrency, seconds, generators=1)


def measure_peers(
    servers: dict[str, ServerProcess],
    repository: Path,
    models: list[str],
    seconds: float,
    rounds: int,
    generator: Callable[[str, str, int, int, float], dict] = zoo_load_alone,
) -> dict[str, dict[str, list[dict]]]:
    """Every round visits every load point; at each, every server in turn (the order
    rotating by round, so that none always follows the same neighbour) under
    `generator(address, model, batch, concurrency, seconds)`, then in-process onnxruntime
    with one thread calling. Returns each target's runs per load point."""
    import onnxruntime as ort

    sessions = {
        m: ort.InferenceSession(str(served_file(repository, m)), providers=["CPUExecutionProvider"])
        for m in models
    }
    kinds = list(servers)
    runs: dict[str, dict[str, list[dict]]] = {kind: {} for kind in (*kinds, "onnxruntime")}
    for round_ in range(rounds):
        shift = round_ % len(kinds)
        for model in models:
            for batch, concurrency in PEER_LOADS:
                key = f"{model} b{batch} c{concurrency}"
                for kind in kinds[shift:] + kinds[:shift]:
                    server = servers[kind]
                    load = partial(generator, server.address, model, batch, concurrency, seconds)
                    runs[kind].setdefault(key, []).append(accounted(load, server.process.pid))
                local = partial(in_process, sessions[model], batch, 1, seconds)
                runs["onnxruntime"].setdefault(key, []).append(accounted(local, None))
                log.info(
                    "round %d/%d, %s: %s",
                    round_ + 1,
                    rounds,
                    key,
                    ", ".join(f"{kind} {_brief(r[key][-1])}" for kind, r in runs.items()),
                )
    return runs


def roofline(noop_rps: float, calls_per_s: float) -> float:
    """Requests/s of a server whose only cost beyond the no-op server's is the model's own
    call (in-process, one thread calling, at the same batch)."""
    return 1 / (1 / noop_rps + 1 / calls_per_s)


def median_ratio(ours: list[float], theirs: list[float]) -> float:
    """The median of round-by-round ratios: the two runs of a pair are seconds apart (one
    load point's turn), so the machine's load drifting over the whole run cancels out."""
    return statistics.median(
        a / b if b else float("nan") for a, b in zip(ours, theirs, strict=True)
    )


def summarise_peers(runs: dict[str, dict[str, list[dict]]]) -> list[dict]:
    """Per load point: each target's medians over rounds, the roofline, the ratios of ours
    to each other server and to the roofline, and the other work seen during its runs."""
    fields = ("requests_per_s", "images_per_s", "p50_ms", "p99_ms")
    points = []
    for key in runs["zoo"]:
        everything = [r for kind in runs for r in runs[kind][key]]
        rps = {kind: [r["requests_per_s"] for r in runs[kind][key]] for kind in runs}
        roof = [roofline(n, c) for n, c in zip(rps["noop"], rps["onnxruntime"], strict=True)]
        model, batch, concurrency = key.split()
        points.append(
            {
                "model": model,
                "batch": int(batch[1:]),
                "concurrency": int(concurrency[1:]),
                "medians": {
                    kind: {f: statistics.median(r[f] for r in runs[kind][key]) for f in fields}
                    for kind in runs
                },
                "roofline_rps": statistics.median(roof),
                "ratios": {
                    **{
                        f"zoo/{kind}": median_ratio(rps["zoo"], rps[kind])
                        for kind in runs
                        if kind not in ("zoo", "onnxruntime")
                    },
                    "zoo/roofline": median_ratio(rps["zoo"], roof),
                },
                "other_work_cpus": {
                    "median": statistics.median(r["foreign_cpus"] for r in everything),
                    "max": max(r["foreign_cpus"] for r in everything),
                },
                "load_average": [
                    min(r["load_before"] for r in everything),
                    max(r["load_after"] for r in everything),
                ],
            }
        )
    return points


def peers_table(results: dict) -> str:
    servers = list(results["servers"])
    others = [kind for kind in servers if kind != "zoo"]
    names = [PEER_NAMES[kind] for kind in servers]
    throughput = [
        "| model | batch × in flight | "
        + " | ".join(f"{n} req/s" for n in names)
        + " | in-process calls/s (1 caller) | roofline req/s | "
        + " | ".join(f"zoo/{PEER_NAMES[k]}" for k in others)
        + " | zoo/roofline |",
        "|---|---|" + "---:|" * (len(servers) + len(others) + 3),
    ]
    latency = [
        "| model | batch × in flight | "
        + " | ".join(f"{n} p50 / p99 ms" for n in names)
        + " | other work, CPUs | load average |",
        "|---|---|" + "---:|" * (len(servers) + 1) + "---|",
    ]
    for point in results["points"]:
        m, ratios = point["medians"], point["ratios"]
        head = f"| {point['model']} | {point['batch']} × {point['concurrency']} | "
        throughput.append(
            head
            + " | ".join(f"{m[kind]['requests_per_s']:,.0f}" for kind in servers)
            + f" | {m['onnxruntime']['requests_per_s']:,.0f} | {point['roofline_rps']:,.0f} | "
            + " | ".join(f"{ratios[f'zoo/{kind}']:.2f}" for kind in others)
            + f" | {ratios['zoo/roofline']:.2f} |"
        )
        other, (low, high) = point["other_work_cpus"], point["load_average"]
        latency.append(
            head
            + " | ".join(f"{m[kind]['p50_ms']:.2f} / {m[kind]['p99_ms']:.2f}" for kind in servers)
            + f" | {other['median']:.2f} (max {other['max']:.2f}) | {low:.1f}–{high:.1f} |"
        )
    return "\n".join([*throughput, "", *latency, "", *peers_notes(results)])


def peers_notes(results: dict) -> list[str]:
    def server(kind: str, about: dict) -> str:
        versions = ", ".join(f"{p} {v}" for p, v in about["versions"].items())
        return (
            f"{PEER_NAMES[kind]} ({versions}): {about['ready_s']:.1f} s, {about['rss_mb']:.0f} MB"
        )

    notes = [
        f"Medians of {results['rounds']} interleaved round(s), {results['seconds']:g} s per run "
        f"after 1 s of warm-up; ratios are medians of per-round ratios. Load: "
        f"{results['load_generator']}, on the same {results['cpus']}-CPU machine as the "
        f"servers, {results['date']}. Roofline = 1 / (1 / no-op req/s + seconds per "
        "in-process call at that batch). Other work: CPUs' worth used during a run by "
        "processes other than the measured server and the load generator (median and "
        "largest over the point's runs); load average: lowest before and highest after them.",
        "",
        "Servers, ready after start and RSS after the run (with child processes): "
        + "; ".join(server(kind, about) for kind, about in results["servers"].items())
        + ".",
    ]
    if results["skipped"]:
        skipped = "; ".join(f"{p} {why}" for p, why in results["skipped"].items())
        notes += ["", f"Skipped: {skipped}."]
    return notes


def tree_rss_mb(pid: int) -> float:
    return sum(_status_mb(p, "VmRSS") for p in process_tree(pid))


def run_peers(args: argparse.Namespace) -> dict[str, Any]:
    wanted = args.peers.split(",")
    pythons = {peer: peer_python(peer) for peer in wanted}
    peers = {peer: python for peer, python in pythons.items() if python is not None}
    models = args.models or list(PEER_MODELS)
    logs = PEER_VENVS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    servers = start_peer_servers(args.repository, models, peers, logs)
    try:
        runs = measure_peers(servers, args.repository, models, args.seconds, args.rounds)
        about: dict[str, dict] = {
            kind: {"ready_s": s.ready_s, "rss_mb": tree_rss_mb(s.process.pid)}
            for kind, s in servers.items()
        }
    finally:
        for server in servers.values():
            server.stop()
    ours = {p: importlib.metadata.version(p) for p in ("onnxruntime", "grpcio")}
    for kind in about:
        about[kind]["versions"] = peer_versions(peers[kind], kind) if kind in peers else ours
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "models": models,
        "load_generator": "zoo load (1 generator process, closed loop, zero inputs)",
        "servers": about,
        "skipped": {
            peer: "could not set up its environment" if pythons[peer] is None else "did not start"
            for peer in wanted
            if peer not in servers
        },
        "points": summarise_peers(runs),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument(
        "--models", type=lambda s: s.split(","), help="default: all (--peers: bn_mlp,bn_cnn)"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="measurement window")
    parser.add_argument(
        "--peers",
        nargs="?",
        const=",".join(PEERS),
        help=f"compare with these peers instead (given alone: {','.join(PEERS)})",
    )
    parser.add_argument("--rounds", type=int, default=5, help="--peers: interleaved rounds")
    parser.add_argument(
        "--output", type=Path, help="default: bench/results/serve.json (peers.json)"
    )
    parser.add_argument("--noop-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.noop_server:
        return run_noop_server(args.repository)
    if args.peers is not None:
        unknown = set(args.peers.split(",")) - set(PEERS)
        if unknown:
            parser.error(f"--peers: expected some of {','.join(PEERS)}, got {','.join(unknown)}")
        output = args.output or RESULTS / "peers.json"
        results = run_peers(args)
        peers_figure(results, output.with_suffix(".png"))
        return write_results(results, peers_table, output)
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
    return write_results(
        results, partial(table, models=models), args.output or RESULTS / "serve.json"
    )


def peers_figure(results: dict, path: Path) -> None:
    """Each computing server's requests/s as a fraction of the roofline, per load point
    (the no-op server, which computes nothing, is in the roofline): the aim's 0.9 across."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    servers = [kind for kind in results["servers"] if kind != "noop"]
    points = results["points"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(servers)
    for i, kind in enumerate(servers):
        shares = [p["medians"][kind]["requests_per_s"] / p["roofline_rps"] for p in points]
        xs = [x + (i - (len(servers) - 1) / 2) * width for x in range(len(points))]
        ax.bar(xs, shares, width, label=PEER_NAMES[kind])
    ax.axhline(0.9, color="black", linestyle="--", linewidth=1, label="0.9 of the roofline")
    ax.set_xticks(
        range(len(points)),
        [f"{p['model']}\nbatch {p['batch']} × {p['concurrency']}" for p in points],
    )
    ax.set_ylabel("req/s ÷ roofline")
    ax.set_title(f"Served requests/s against the roofline, {results['cpus']} CPUs, one run")
    ax.legend(fontsize=8, ncol=len(servers) + 1, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(results: dict, render: Callable[[dict], str], output: Path) -> int:
    """JSON at `output`, the markdown tables beside it (.md), and the tables printed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    markdown = render(results)
    output.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
