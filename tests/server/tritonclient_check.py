"""Drive a running server with tritonclient.grpc and print what it saw as JSON.

    python tritonclient_check.py HOST:PORT REPOSITORY

A script, run in its own process: tritonclient's stubs register the same protobuf
names as ours. It therefore reads the repository by hand instead of via zoo.repository.
"""

from __future__ import annotations

import json
import queue
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient


def _reference(model_dir: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    latest = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    session = ort.InferenceSession(str(model_dir / str(latest) / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": images}), strict=True))


def _inputs(images: np.ndarray) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    return [tensor]


def _check_model(client: grpcclient.InferenceServerClient, model_dir: Path) -> dict[str, Any]:
    name = model_dir.name
    images = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    want = _reference(model_dir, images)
    outputs = [grpcclient.InferRequestedOutput(n) for n in want]
    result = client.infer(name, _inputs(images), outputs=outputs, request_id="tc-1")
    done: queue.Queue = queue.Queue()
    client.async_infer(
        name,
        _inputs(images),
        lambda result, error: done.put((result, error)),
        outputs=outputs,
        request_id="tc-2",
    )
    async_result, async_error = done.get(timeout=30)
    metadata = client.get_model_metadata(name, as_json=True)
    config = client.get_model_config(name, as_json=True)["config"]
    stats = client.get_inference_statistics(name, as_json=True)["model_stats"]
    return {
        "ready": client.is_model_ready(name),
        "input_shape": metadata["inputs"][0]["shape"],
        "max_batch_size": config.get("max_batch_size", 0),
        "id": result.get_response().id,
        "max_diff": max(float(np.abs(result.as_numpy(n) - want[n]).max()) for n in want),
        "async_error": None if async_error is None else str(async_error),
        "async_max_diff": max(
            float(np.abs(async_result.as_numpy(n) - want[n]).max()) for n in want
        ),
        "success_count": int(stats[0]["inference_stats"]["success"]["count"]),
        "stats_version": stats[0]["version"],
    }


def main(address: str, repository: Path) -> dict[str, Any]:
    client = grpcclient.InferenceServerClient(address)
    index = client.get_model_repository_index(as_json=True).get("models", [])
    models = sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "extensions": client.get_server_metadata(as_json=True).get("extensions", []),
        "index": sorted({m["name"] for m in index if m.get("state") == "READY"}),
        "models": {p.name: _check_model(client, p) for p in models},
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]))))
