"""--device cuda on a machine with onnxruntime-gpu and a GPU (skipped elsewhere)."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub

pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda() -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider (needs onnxruntime-gpu)")


def test_cuda_serves_the_same_predictions_as_cpu(  # --device cuda refuses a CPU fall-back
    cuda: None, start_zoo_server, tiny_repository: Path, request_for, decode
) -> None:
    server = start_zoo_server(tiny_repository, "--device", "cuda")
    stub = GRPCInferenceServiceStub(grpc.insecure_channel(server.address))
    x = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    got = decode(stub.ModelInfer(request_for("tiny_cnn", x)))
    want = ort.InferenceSession(str(tiny_repository / "tiny_cnn" / "1" / "model.onnx")).run(
        ["logits"], {"images": x}
    )[0]
    np.testing.assert_allclose(got["logits"], want, rtol=1e-3, atol=1e-4)
