"""One inference with tritonclient.grpc against a running server; prints JSON.

    python tritonclient_infer.py HOST:PORT REPOSITORY MODEL

A script, run in its own process: tritonclient's stubs register the same protobuf names
as ours. It compares the answer with in-process onnxruntime on the model's latest version
(read by hand, not with zoo.repository, for the same reason).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient


def main(address: str, repository: str, model: str) -> None:
    model_dir = Path(repository) / model
    latest = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    session = ort.InferenceSession(str(model_dir / str(latest) / "model.onnx"))
    images = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    want = session.run(["probabilities"], {"images": images})[0]
    with grpcclient.InferenceServerClient(address) as client:
        tensor = grpcclient.InferInput("images", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        outputs = [grpcclient.InferRequestedOutput("probabilities")]
        got = client.infer(model, [tensor], outputs=outputs).as_numpy("probabilities")
        report = {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(model),
            "shape": list(got.shape),
            "max_diff": float(np.abs(got - want).max()),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
