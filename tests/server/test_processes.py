"""`zoo serve --processes N`: several worker processes on one port that a client sees as
one server (statistics, metrics, model control), restarted when they die."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from server.workers import merge_statistics

ROOT = Path(__file__).resolve().parents[2]

CONNECTIONS = 24  # fresh connections per check: all on one worker by chance is 2**-23


def _stub(address: str) -> tuple[grpc.Channel, GRPCInferenceServiceStub]:
    # A channel of its own connection: grpc would otherwise share one between channels.
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, GRPCInferenceServiceStub(channel)


def _on_fresh_connections(address: str, call: Callable[[GRPCInferenceServiceStub], Any]) -> list:
    answers = []
    for _ in range(CONNECTIONS):
        channel, stub = _stub(address)
        with channel:
            answers.append(call(stub))
    return answers


def _infer(stub: GRPCInferenceServiceStub) -> pb.ModelInferResponse:
    image = np.zeros((1, 1, 28, 28), np.float32)
    request = pb.ModelInferRequest(model_name="tiny_mlp")
    request.inputs.add(name="images", datatype="FP32", shape=image.shape)
    request.raw_input_contents.append(image.tobytes())
    return stub.ModelInfer(request, timeout=30)


def _ready(model: str) -> Callable[[GRPCInferenceServiceStub], bool]:
    return lambda stub: stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=30).ready


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _workers(pid: int) -> list[int]:
    """The worker processes of supervisor `pid` (children started by multiprocessing)."""
    workers = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in _read(task / "children").split():
            if "spawn_main" in _read(Path(f"/proc/{child}/cmdline")):
                workers.append(int(child))
    return workers


def _read(path: Path) -> str:
    """A /proc file's text, or "" when its thread or process has just gone."""
    try:
        return path.read_text(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _wait_for(condition: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def repository(tiny_repository: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "repository"
    shutil.copytree(tiny_repository, copy)
    return copy


def test_statistics_and_metrics_count_every_workers_requests(start_zoo_server, repository):
    server = start_zoo_server(repository, "--processes", "2")
    assert len(_workers(server.process.pid)) == 2
    replies = _on_fresh_connections(server.address, _infer)
    assert all(len(r.raw_output_contents) == 2 for r in replies)
    # The HTTP port is shared the same way (urllib opens a connection per request).
    body = json.dumps(
        {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 1, 28, 28],
                     "data": [0.0] * 784}]}
    ).encode()  # fmt: skip
    for _ in range(CONNECTIONS):
        request = urllib.request.Request(
            f"{server.http_url}/v2/models/tiny_mlp/infer", data=body,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert len(json.loads(reply.read())["outputs"]) == 2
    channel, stub = _stub(server.address)
    with channel:
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="tiny_mlp"), timeout=30)
    (model,) = stats.model_stats
    # Each worker counts only its own requests: the sum is every request.
    assert model.inference_count == 2 * CONNECTIONS
    assert model.inference_stats.success.count == 2 * CONNECTIONS
    assert sum(b.compute_infer.count for b in model.batch_stats) == model.execution_count
    assert server.metrics_port is not None
    text = _metrics(server.metrics_port)
    requests = _metric(text, "zoo_inference_requests_total", model="tiny_mlp", status="OK")
    assert requests == 2 * CONNECTIONS
    # Triton's counters, from every worker's ModelStatistics, summed.
    assert _metric(text, "nv_inference_request_success", model="tiny_mlp") == 2 * CONNECTIONS
    assert _metric(text, "nv_inference_exec_count", model="tiny_mlp") == model.execution_count
    for worker in ("0", "1"):
        assert (_metric(text, "zoo_worker_resident_memory_bytes", worker=worker) or 0) > 10 * 2**20


def test_model_control_reaches_every_worker_and_a_restarted_one(start_zoo_server, repository):
    server = start_zoo_server(repository, "--processes", "2", "--allow-model-control")
    channel, stub = _stub(server.address)
    with channel:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tiny_cnn"))
    assert _on_fresh_connections(server.address, _ready("tiny_cnn")) == [False] * CONNECTIONS
    assert _on_fresh_connections(server.address, _ready("tiny_mlp")) == [True] * CONNECTIONS

    # A worker that dies is restarted, and redoes the unload it was not there for.
    killed = _workers(server.process.pid)[0]
    os.kill(killed, signal.SIGKILL)
    _wait_for(lambda: re.search(r"worker \d restarted", server.log()), "the worker's restart")
    assert "exited with status -9" in server.log()
    assert killed not in _workers(server.process.pid)
    assert len(_workers(server.process.pid)) == 2
    assert server.metrics_port is not None
    text = _metrics(server.metrics_port)
    restarts = [_metric(text, "zoo_worker_restarts_total", worker=w) for w in ("0", "1")]
    assert sorted(restarts) == [0, 1]
    _wait_for(
        lambda: _on_fresh_connections(server.address, _ready("tiny_mlp")) == [True] * CONNECTIONS,
        "every worker to serve tiny_mlp",
    )
    assert _on_fresh_connections(server.address, _ready("tiny_cnn")) == [False] * CONNECTIONS

    channel, stub = _stub(server.address)
    with channel:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny_cnn"))
    assert _on_fresh_connections(server.address, _ready("tiny_cnn")) == [True] * CONNECTIONS


def test_sigterm_stops_every_worker_and_frees_the_port(start_zoo_server, repository):
    server = start_zoo_server(repository, "--processes", "2")
    workers = _workers(server.process.pid)
    runtime = re.search(r"workers share (\S+)", server.log())
    assert runtime and Path(runtime[1]).is_dir() and len(workers) == 2
    assert server.stop() == 0
    for pid in workers:  # stopped and reaped by the supervisor
        assert not Path(f"/proc/{pid}").exists()
    assert not Path(runtime[1]).exists()
    host, port = server.address.rsplit(":", 1)
    with socket.socket() as s:  # nothing holds the port any more
        s.bind((host, int(port)))


def test_a_bad_process_count_is_one_line(repository):
    done = subprocess.run(
        [sys.executable, "-m", "server", "--repository", str(repository), "--processes", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode != 0
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith("--processes: Input should be greater than or equal to 1 (got '0')")
    )


def _stats(name: str, count: int, sizes: dict[int, int], last: int) -> pb.ModelStatistics:
    stats = pb.ModelStatistics(name=name, version="1", last_inference=last)
    stats.inference_count = count
    stats.execution_count = sum(sizes.values())
    stats.inference_stats.success.count = count
    stats.inference_stats.success.ns = 1000 * count
    stats.inference_stats.queue.count = count
    for size, n in sizes.items():
        batch = stats.batch_stats.add(batch_size=size)
        batch.compute_infer.count = n
        batch.compute_infer.ns = 10 * n
    return stats


def test_merged_statistics_sum_counts_durations_and_batch_sizes():
    a = pb.ModelStatisticsResponse(
        model_stats=[_stats("m", 5, {1: 3, 8: 1}, 100), _stats("only_a", 1, {1: 1}, 7)]
    )
    b = pb.ModelStatisticsResponse(model_stats=[_stats("m", 7, {1: 2, 4: 2}, 300)])
    merged = {s.name: s for s in merge_statistics([a, b]).model_stats}
    m = merged["m"]
    assert (m.inference_count, m.execution_count, m.last_inference) == (12, 8, 300)
    assert (m.inference_stats.success.count, m.inference_stats.success.ns) == (12, 12_000)
    assert m.inference_stats.queue.count == 12
    assert [(s.batch_size, s.compute_infer.count, s.compute_infer.ns) for s in m.batch_stats] == [
        (1, 5, 50),
        (4, 2, 20),
        (8, 1, 10),
    ]
    assert merged["only_a"] == a.model_stats[1]
    # The inputs are left as they were.
    assert a.model_stats[0].inference_count == 5 and len(a.model_stats[0].batch_stats) == 2
