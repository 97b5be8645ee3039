"""Inference runs on threads of its own (--infer-threads): streams, which hold a server
thread each for as long as they are open, cannot starve it of threads."""

from __future__ import annotations

import json
import os
import queue
import re
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub

MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


def _open_stream(
    channel: grpc.Channel, request: pb.ModelInferRequest
) -> tuple[queue.Queue, object]:
    """A stream answered once that stays open (its handler holds a server thread)."""
    requests: queue.Queue = queue.Queue()
    call = channel.stream_stream(
        MODEL_STREAM_INFER,
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    replies = call(iter(requests.get, None), timeout=60)
    requests.put(request)
    assert not next(replies).error_message
    return requests, replies


def test_inference_is_answered_while_open_streams_hold_every_server_thread(
    start_zoo_server, tiny_repository: Path, request_for, decode
) -> None:
    server = start_zoo_server(tiny_repository, "--workers", "2", "--infer-threads", "1")
    channel = grpc.insecure_channel(server.address)
    request = request_for("tiny_mlp", np.zeros((2, 1, 28, 28), np.float32))
    streams = [_open_stream(channel, request) for _ in range(2)]  # both server threads
    try:
        reply = GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=20)
        assert decode(reply)["probabilities"].shape == (2, 10)
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "images",
                        "datatype": "FP32",
                        "shape": [1, 1, 28, 28],
                        "data": np.zeros(784).tolist(),
                    }
                ]
            }
        ).encode()
        url = f"{server.http_url}/v2/models/tiny_mlp/infer"
        post = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(post, timeout=20) as answer:
            assert {o["name"] for o in json.load(answer)["outputs"]} >= {"probabilities"}
    finally:
        for requests, _ in streams:
            requests.put(None)
        channel.close()


def test_each_model_times_every_core_against_its_share_unless_threads_are_set(
    start_zoo_server, tiny_repository: Path
) -> None:
    """A lone call may take every core (a second session); whether it does is timed at
    load, per model, and said. A thread count set by hand leaves one session."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: a model's share of the cores is all of them")
    timed = start_zoo_server(tiny_repository)
    said = r"model (\w+) version 1: a lone call takes .*: (every core|its share)"
    chosen = re.findall(said, timed.log())
    assert sorted(name for name, _ in chosen) == ["tiny_cnn", "tiny_mlp"]
    fixed = start_zoo_server(tiny_repository, "--intra-op-threads", "1")
    assert "a lone call takes" not in fixed.log()
