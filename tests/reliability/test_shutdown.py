"""SIGTERM against a real server: under load, with open ModelStreamInfer streams and open
grpc.health.v1 Watch streams whose clients never hang up, and right after streams that
sent unparseable bytes (a race: repeated). Requests in flight at the signal complete OK,
later ones are refused with UNAVAILABLE, and the process exits 0 within --grace seconds,
whatever the streams do (plus a margin for the interpreter's exit on a busy machine)."""

from __future__ import annotations

import contextlib
import queue
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proto import grpc_service_pb2 as pb

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
GRACE_S = 10.0
MARGIN_S = 10.0
# Three calls of the slow model's largest batch, one at a time (they cannot share a
# batch): 0.3-0.6 s each on 2 cores, so two of them are in flight for long enough that
# polling the metrics cannot miss it, and all three end well within the grace.
SLOW_BATCH = 64
SLOW_IN_FLIGHT = 3
UNPARSEABLE_STREAMS = 3
ATTEMPTS = 4


def _signal(server) -> float:
    server.process.send_signal(signal.SIGTERM)
    return time.monotonic()


def _wait_for_exit(server, signalled: float) -> tuple[int | None, float]:
    """Wait until grace + margin after the signal: (exit status or None, seconds taken)."""
    try:
        status = server.process.wait(max(signalled + GRACE_S + MARGIN_S - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        status = None
        server.process.kill()  # the contract is broken already; do not wait any longer
        server.process.wait()
    return status, time.monotonic() - signalled


def _exit_problems(status: int | None, took: float, log: str) -> list[str]:
    problems = []
    if status is None:
        problems.append(f"still running {GRACE_S + MARGIN_S:.0f} s after SIGTERM (killed)")
    elif status != 0:
        problems.append(f"exit status {status}")
    elif took > GRACE_S + MARGIN_S:
        problems.append(f"took {took:.1f} s to exit")
    if "Traceback" in log:
        problems.append(f"a traceback in the log:\n{log[log.index('Traceback') :][:2000]}")
    return problems


def _open_stream(channel: grpc.Channel, message: bytes) -> tuple[queue.Queue, object]:
    """A stream that has had one request answered and stays open: its client never ends it."""
    requests: queue.Queue = queue.Queue()
    call = channel.stream_stream(
        MODEL_STREAM_INFER, response_deserializer=pb.ModelStreamInferResponse.FromString
    )
    replies = call(iter(requests.get, None), timeout=120)
    requests.put(message)
    assert not next(replies).error_message
    return requests, replies


def test_sigterm_under_load_with_open_streams_and_watches_finishes_in_flight_and_exits_0(
    start_zoo_server,
    reliability_repository: Path,
    background_load,
    request_bytes,
    judge,
    serving_now,
    until,
) -> None:
    server = start_zoo_server(reliability_repository, "--grace", str(GRACE_S))
    channel = grpc.insecure_channel(server.address)
    health = health_pb2_grpc.HealthStub(channel)
    watches = [
        health.Watch(health_pb2.HealthCheckRequest(service=s), timeout=120)
        for s in ("", "tiny_mlp")
    ]
    assert all(next(w).status == health_pb2.HealthCheckResponse.SERVING for w in watches)
    streams = [_open_stream(channel, request_bytes("tiny_mlp", 1, n)) for n in range(2)]
    load = background_load(server.address, {"tiny_mlp": (request_bytes("tiny_mlp"), 2)}, threads=2)
    load.wait_for_more(5)
    infer = channel.unary_unary(MODEL_INFER)
    slow = [
        infer.future(request_bytes("tiny_slow", SLOW_BATCH, n), timeout=120)
        for n in range(SLOW_IN_FLIGHT)
    ]
    until(
        lambda: serving_now(server.metrics_port, "tiny_slow") >= 2,
        what="slow requests in flight",
    )
    signalled = _signal(server)
    load.stop()  # the requests it has in flight complete; it sends nothing more
    status, took = _wait_for_exit(server, signalled)
    slow_codes = [
        f.exception().code().name if f.exception() else judge(f.result(), SLOW_BATCH)[0]
        for f in slow
    ]
    channel.close()
    del streams, watches

    problems = _exit_problems(status, took, server.log())
    if slow_codes != ["OK"] * SLOW_IN_FLIGHT:
        problems.append(f"requests in flight at the signal got {slow_codes}")
    if wrong := {c: n for c, n in load.codes("tiny_mlp").items() if c not in ("OK", "UNAVAILABLE")}:
        problems.append(
            f"requests under load got {wrong}; allowed OK, or UNAVAILABLE once stopping"
        )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("attempt", range(ATTEMPTS))
def test_sigterm_after_streams_sent_unparseable_bytes_exits_0_within_grace(
    attempt: int, start_zoo_server, tiny_repository: Path
) -> None:
    server = start_zoo_server(tiny_repository, "--grace", str(GRACE_S))
    channel = grpc.insecure_channel(server.address)
    call = channel.stream_stream(MODEL_STREAM_INFER)
    streams = [call(iter([b"\xff\xff\xff"]), timeout=60) for _ in range(UNPARSEABLE_STREAMS)]
    if attempt % 2:
        # Every other attempt lets the streams finish first; the others signal at once,
        # while the server may still be reading them.
        for stream in streams:
            # How the stream ended is the fuzz tests' business.
            with contextlib.suppress(grpc.RpcError):
                list(stream)
    status, took = _wait_for_exit(server, _signal(server))
    channel.close()
    assert not (problems := _exit_problems(status, took, server.log())), "\n".join(problems)
