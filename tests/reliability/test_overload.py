"""Load shedding on a slow model that runs one session call at a time: past
--max-in-flight RPCs, or past --max-queue-size queued requests, the excess is refused at
once with RESOURCE_EXHAUSTED, no request gets any other error, and as soon as the burst is
over every request is served again, exactly."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import grpc
import pytest

SLOW_BATCH = 16  # a few tenths of a second per call of tiny_slow on 2 cores
BURST = 16  # four times what either limit below admits
BURST_SCRIPT = Path(__file__).with_name("tritonclient_burst.py")
SHED = {"OK", "RESOURCE_EXHAUSTED"}


def _after_the_burst(address: str, repository: Path, request_bytes, judge, exactly) -> list[str]:
    """Requests one at a time to both models: what is wrong with their answers."""
    problems = []
    with grpc.insecure_channel(address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for n in range(8):
            try:
                code, _ = judge(infer(request_bytes("tiny_slow", 1, n), timeout=60), 1)
            except grpc.RpcError as error:
                code = error.code().name
            if code != "OK":
                problems.append(f"tiny_slow request {n} after the burst: {code}")
    problems += [
        f"tiny_mlp after the burst: {p}" for p in exactly(address, repository / "tiny_mlp")
    ]
    return problems


def test_past_max_in_flight_the_excess_is_refused_and_service_recovers(
    start_zoo_server, reliability_repository: Path, request_bytes, judge, exactly
) -> None:
    if importlib.util.find_spec("tritonclient") is None:
        pytest.skip("tritonclient is not installed (pip install -e .[dev])")
    server = start_zoo_server(reliability_repository, "--max-in-flight", "4")
    # The reference client sends the burst: it must see RESOURCE_EXHAUSTED as such.
    command = [sys.executable, str(BURST_SCRIPT), server.address, "tiny_slow"]
    done = subprocess.run(
        [*command, str(SLOW_BATCH), str(BURST)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    codes = Counter(json.loads(done.stdout))
    assert codes["RESOURCE_EXHAUSTED"] >= 1 and codes["OK"] >= 1, codes
    assert set(codes) <= SHED, codes
    assert not _after_the_burst(
        server.address, reliability_repository, request_bytes, judge, exactly
    )


def test_past_max_queue_size_the_excess_is_refused_and_service_recovers(
    start_zoo_server, reliability_repository: Path, request_bytes, judge, exactly
) -> None:
    # Requests reach the model's queue only on an inference thread: more of them than
    # the queue and the two session calls hold.
    server = start_zoo_server(
        reliability_repository, "--max-queue-size", "2", "--infer-threads", str(BURST)
    )
    with grpc.insecure_channel(server.address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        message = request_bytes("tiny_slow", SLOW_BATCH)
        # Futures: all sent before any reply is awaited (exception() waits for the reply).
        futures = [infer.future(message, timeout=120) for _ in range(BURST)]
        codes = Counter(f.exception().code().name if f.exception() else "OK" for f in futures)
    assert codes["RESOURCE_EXHAUSTED"] >= 1 and codes["OK"] >= 1, codes
    assert set(codes) <= SHED, codes
    assert not _after_the_burst(
        server.address, reliability_repository, request_bytes, judge, exactly
    )
