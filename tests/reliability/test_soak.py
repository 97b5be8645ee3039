"""The soak: half an hour of mixed load on one server (ZOO_SOAK_SECONDS to try it
shorter). Valid requests to three models from background threads, our client's requests
checked against in-process onnxruntime, streams and unary calls of the fuzz generator's
messages, and metadata, statistics, index and health calls, all at once. No request may
fail or get another code than the contract's, and once warm the server's memory may not
grow by 5%."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import ZooClient
from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub

SOAK_S = float(os.environ.get("ZOO_SOAK_SECONDS", "1800"))
# Memory is measured from the end of the warm-up: arenas and caches have filled by then.
WARMUP_S = min(60.0, SOAK_S / 10)
RSS_GROWTH = 0.05
# Messages per round of each fuzz loop; round n sends cases n * FUZZ_ROUND onwards, so
# that the soak goes on through every kind's whole list of mistakes.
FUZZ_ROUND = 100


@pytest.mark.slow
@pytest.mark.timeout(SOAK_S + 600)
def test_soak_mixed_load_without_errors_or_memory_growth(
    start_zoo_server,
    reliability_repository: Path,
    fuzz_target,
    fuzz_cases,
    send_unary,
    send_stream,
    stream_failures,
    background_load,
    request_bytes,
    rss,
    reference,
) -> None:
    server = start_zoo_server(reliability_repository)
    address, pid = server.address, server.process.pid
    problems: list[str] = []
    rounds: dict[str, int] = {}
    stop = threading.Event()

    def loop(name: str, step: Callable[[int], list[str]]) -> threading.Thread:
        def run() -> None:
            n = 0
            while not stop.is_set():
                try:
                    problems.extend(f"{name}: {p}" for p in step(n))
                except Exception as error:  # a failure of the step itself counts too
                    problems.append(f"{name}: {type(error).__name__}: {error}")
                n += 1
                rounds[name] = n

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    channel = grpc.insecure_channel(address)
    stub = GRPCInferenceServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    client = ZooClient(address)
    images = np.random.default_rng(11).random((4, 1, 28, 28), dtype=np.float32)
    want = reference(reliability_repository / "tiny_cnn", 1, images)

    def our_client(n: int) -> list[str]:
        got = client.infer_raw("tiny_cnn", {"images": images}, timeout=30)
        exact = all(np.allclose(got[k], v, atol=1e-5) for k, v in want.items())
        return [] if exact else ["an answer differs from onnxruntime's"]

    def unary_fuzz(n: int) -> list[str]:
        cases = fuzz_cases(1, FUZZ_ROUND, fuzz_target, start=n * FUZZ_ROUND)
        outcomes = send_unary(channel, cases, threads=2)
        return [str(o) for o in outcomes if o.forbidden or o.code not in o.allowed]

    def stream_fuzz(n: int) -> list[str]:
        cases = fuzz_cases(2, FUZZ_ROUND, fuzz_target, start=n * FUZZ_ROUND)
        outcomes, broken = send_stream(channel, cases)
        return broken + [str(o) for o in stream_failures(outcomes)]

    def control(n: int) -> list[str]:
        for model in ("tiny_mlp", "tiny_cnn", "tiny_slow"):
            stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=30)
            stub.ModelConfig(pb.ModelConfigRequest(name=model), timeout=30)
            stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30)
        stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
        ready = stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
        serving = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30).status
        time.sleep(0.1)  # a monitoring client's pace, not a load of its own
        ok = ready and serving == health_pb2.HealthCheckResponse.SERVING
        return [] if ok else [f"ready {ready}, health {serving}"]

    load = background_load(
        address,
        {
            "tiny_mlp": (request_bytes("tiny_mlp", 2), 2),
            "tiny_cnn": (request_bytes("tiny_cnn", 8), 8),
            "tiny_slow": (request_bytes("tiny_slow", 1), 1),
        },
    )
    steps = {"our client": our_client, "unary fuzz": unary_fuzz}
    steps |= {"stream fuzz": stream_fuzz, "control": control}
    threads = [loop(name, step) for name, step in steps.items()]
    time.sleep(WARMUP_S)  # the soak's own clock: how long the load runs is the test
    settled = rss(pid)
    peak = settled
    deadline = time.monotonic() + SOAK_S - WARMUP_S
    while time.monotonic() < deadline and server.process.poll() is None:
        time.sleep(min(5.0, max(deadline - time.monotonic(), 0)))
        peak = max(peak, rss(pid))
    final = rss(pid) if server.process.poll() is None else 0
    stop.set()
    for thread in threads:
        thread.join(120)
    load.stop()
    client.close()
    channel.close()

    assert server.process.poll() is None, f"the server died:\n{server.log()[-3000:]}"
    assert all(rounds.get(name, 0) > 0 for name in steps), rounds
    failures = [
        f"{label}: {codes}"
        for label in load.replies
        if (codes := {code: n for code, n in load.codes(label).items() if code != "OK"})
    ]
    if final > settled * (1 + RSS_GROWTH):
        failures.append(
            f"server RSS grew {settled / 1024:.1f} -> {final / 1024:.1f} MB "
            f"(peak {peak / 1024:.1f} MB) after {SOAK_S:.0f} s"
        )
    failures += [f"{n} x {p}" for p, n in Counter(problems).most_common(40)]
    assert not failures, f"{len(problems)} failed calls in {rounds} rounds:\n" + "\n".join(failures)
