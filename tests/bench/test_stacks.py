"""bench/stacks.py: its asyncio no-op server answers as the other no-op servers do, and
the summary and table on made-up runs (the benchmark itself is minutes of load)."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from bench.serve import ServerProcess, served_file
from bench.stacks import NOOPS, summarise, table
from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub

ROOT = Path(__file__).resolve().parents[2]


def test_the_asyncio_noop_server_answers_canned_replies(
    tiny_repository: Path, tmp_path: Path
) -> None:
    command = [sys.executable, str(ROOT / "bench/stacks.py"), "--serve-aio"]
    server = ServerProcess([*command, "--repository", str(tiny_repository)], tmp_path / "aio.log")
    try:
        stub = GRPCInferenceServiceStub(grpc.insecure_channel(server.address))
        config = stub.ModelConfig(pb.ModelConfigRequest(name="tiny_mlp"), timeout=30).config
        assert config.name == "tiny_mlp"
        request = pb.ModelInferRequest(model_name="tiny_mlp")
        request.inputs.add(name="images", datatype="FP32", shape=[3, 1, 28, 28])
        request.raw_input_contents.append(np.zeros((3, 1, 28, 28), np.float32).tobytes())
        reply = stub.ModelInfer(request, timeout=30)
        assert [list(o.shape) for o in reply.outputs] == [[3, 10]] * len(reply.outputs)
        assert all(raw == bytes(120) for raw in reply.raw_output_contents)
    finally:
        server.stop()


def test_the_batching_sketch_answers_each_request_with_its_own_rows(
    tiny_repository: Path, tmp_path: Path
) -> None:
    command = [sys.executable, str(ROOT / "bench/stacks.py"), "--serve-aio-batched"]
    server = ServerProcess([*command, "--repository", str(tiny_repository)], tmp_path / "b.log")
    session = ort.InferenceSession(str(served_file(tiny_repository, "tiny_mlp")))
    rng = np.random.default_rng(0)
    images = [rng.random((n, 1, 28, 28), dtype=np.float32) for n in (1, 3, 2, 5) * 4]
    try:
        stub = GRPCInferenceServiceStub(grpc.insecure_channel(server.address))

        def infer(x: np.ndarray) -> list[np.ndarray]:
            request = pb.ModelInferRequest(model_name="tiny_mlp", raw_input_contents=[x.tobytes()])
            request.inputs.add(name="images", datatype="FP32", shape=x.shape)
            reply = stub.ModelInfer(request, timeout=30)
            return [np.frombuffer(raw, np.float32) for raw in reply.raw_output_contents]

        with ThreadPoolExecutor(len(images)) as pool:  # concurrent: several may share a batch
            replies = list(pool.map(infer, images))
    finally:
        server.stop()
    for x, outputs in zip(images, replies, strict=True):
        expected = session.run(None, {"images": x})
        for got, want in zip(outputs, expected, strict=True):
            np.testing.assert_allclose(got, want.ravel(), rtol=1e-5, atol=1e-6)


def _run(rps: float) -> dict:
    return {"requests_per_s": rps, "foreign_cpus": 0.05}


def test_each_noop_stack_sets_its_own_roofline() -> None:
    # 0.5 ms a no-op round trip + 0.5 ms a call: a roofline of 1,000 req/s.
    rps = {"zoo": [800.0] * 3, "sync-64": [2000.0] * 3, "sync-ours": [4000.0] * 3}
    rps |= {"aio": [1000.0] * 3, "aio-batched": [1200.0] * 3, "onnxruntime": [2000.0] * 3}
    runs = {kind: {"bn_mlp b1 c1": [_run(v) for v in values]} for kind, values in rps.items()}
    (point,) = summarise(runs)
    assert point["zoo_share_of_roofline"] == pytest.approx(
        {"sync-64": 0.8, "sync-ours": 0.8 / (4 / 3), "aio": 0.8 / (2 / 3)}
    )
    results = {"points": [point], "rounds": 3, "seconds": 2.0, "date": "today", "cpus": 2,
               "machine": "here", "load_average": [0.1, 0.2]}  # fmt: skip
    text = table(results)
    assert text.splitlines()[0].count("roofline of") == len(NOOPS)
    assert point["batched_over_zoo"] == 1.5
    rates = "| bn_mlp b1 c1 | 800 | 1,200 | 2,000 | 4,000 | 1,000 | 2,000 |"
    assert f"{rates} 1.50 | 0.80 | 0.60 | 1.20 |" in text
