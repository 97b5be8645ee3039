"""Drive a running server's BYTES tensors and system shared memory with tritonclient.grpc
and tritonclient.utils.shared_memory, and print what it saw as JSON.

    python tritonclient_extensions.py bytes HOST:PORT
    python tritonclient_extensions.py shm HOST:PORT MODEL_DIR
    python tritonclient_extensions.py shm_bytes HOST:PORT

A script, run in its own process: tritonclient's stubs register the same protobuf names
as ours. `bytes` and `shm_bytes` use the string models of tests/server/conftest.py;
`shm` a model of images (its latest version's ONNX file is the reference).
"""

from __future__ import annotations

import json
import os
import queue
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
from tritonclient.utils import (
    InferenceServerException,
    serialize_byte_tensor,
    serialized_byte_size,
)

with warnings.catch_warnings():  # it imports pkg_resources, which warns of its end
    warnings.simplefilter("ignore")
    import tritonclient.utils.shared_memory as shm


def _texts(array: np.ndarray) -> list:
    return [item.decode() if isinstance(item, bytes) else item for item in array.ravel()]


def _bytes_input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def check_bytes(client: grpcclient.InferenceServerClient) -> dict[str, Any]:
    words = np.array([["héllo", "", "a\x00b"], ["x" * 300, "ünï", "7"]], dtype=object)
    identity = client.infer("string_identity", [_bytes_input("INPUT0", words)])
    done: queue.Queue = queue.Queue()
    client.async_infer(
        "string_identity",
        [_bytes_input("INPUT0", words[:1])],
        lambda result, error: done.put((result, error)),
    )
    async_result, async_error = done.get(timeout=30)
    # As Triton's simple_string example: numbers as text, their sums and differences.
    numbers = np.array([[str(i).encode() for i in range(16)]], dtype=np.object_)
    ones = np.array([[b"1"] * 16], dtype=np.object_)
    arithmetic = client.infer(
        "string_arithmetic", [_bytes_input("INPUT0", numbers), _bytes_input("INPUT1", ones)]
    )
    metadata = client.get_model_metadata("string_arithmetic", as_json=True)
    stats = client.get_inference_statistics("string_identity", as_json=True)["model_stats"]
    return {
        "identity": _texts(identity.as_numpy("OUTPUT0")),
        "identity_shape": list(identity.as_numpy("OUTPUT0").shape),
        "sent": _texts(words),
        "async_error": None if async_error is None else str(async_error),
        "async": _texts(async_result.as_numpy("OUTPUT0")),
        "sums": _texts(arithmetic.as_numpy("OUTPUT0")),
        "differences": _texts(arithmetic.as_numpy("OUTPUT1")),
        "datatypes": [t["datatype"] for t in metadata["inputs"] + metadata["outputs"]],
        "success_count": int(stats[0]["inference_stats"]["success"]["count"]),
    }


def _reference(model_dir: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    latest = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    session = ort.InferenceSession(str(model_dir / str(latest) / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": images}), strict=True))


def check_shm(client: grpcclient.InferenceServerClient, model_dir: Path) -> dict[str, Any]:
    images = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    want = _reference(model_dir, images)
    tag = os.getpid()
    # One region for the input; one for both outputs, the second at an offset.
    sizes = {name: array.nbytes for name, array in want.items()}
    handles = [
        shm.create_shared_memory_region("in", f"/zoo_tc_in_{tag}", images.nbytes),
        shm.create_shared_memory_region("out", f"/zoo_tc_out_{tag}", sum(sizes.values())),
    ]
    try:
        client.unregister_system_shared_memory()  # as perf_analyzer starts
        shm.set_shared_memory_region(handles[0], [images])
        client.register_system_shared_memory(f"in_{tag}", f"/zoo_tc_in_{tag}", images.nbytes)
        client.register_system_shared_memory(
            f"out_{tag}", f"/zoo_tc_out_{tag}", sum(sizes.values())
        )
        status = client.get_system_shared_memory_status(as_json=True)
        tensor = grpcclient.InferInput("images", list(images.shape), "FP32")
        tensor.set_shared_memory(f"in_{tag}", images.nbytes)
        outputs, offsets, offset = [], {}, 0
        for name, size in sizes.items():
            output = grpcclient.InferRequestedOutput(name)
            output.set_shared_memory(f"out_{tag}", size, offset)
            outputs.append(output)
            offsets[name], offset = offset, offset + size
        result = client.infer(model_dir.name, [tensor], outputs=outputs)
        got = {
            # A copy: the array is a view of the mapping, gone with the region.
            name: shm.get_contents_as_numpy(
                handles[1], np.float32, want[name].shape, offset=offsets[name]
            ).copy()
            for name in want
        }
        # (get_output(as_json=True) answers None in tritonclient 2.51: the message.)
        replied = {name: result.get_output(name) for name in want}
        try:
            too_small = grpcclient.InferRequestedOutput(next(iter(want)))
            too_small.set_shared_memory(f"out_{tag}", 8)
            client.infer(model_dir.name, [tensor], outputs=[too_small])
            refusal = None
        except InferenceServerException as error:
            refusal = {"status": error.status(), "message": error.message()}
        client.unregister_system_shared_memory(f"in_{tag}")
        after = client.get_system_shared_memory_status(as_json=True)
        client.unregister_system_shared_memory()
    finally:
        for handle in handles:
            shm.destroy_shared_memory_region(handle)
    return {
        "status": status,
        "max_diff": max(float(np.abs(got[n] - want[n]).max()) for n in want),
        "replied": {n: [o.datatype, list(o.shape)] for n, o in replied.items()},
        "raw_contents": [len(raw) for raw in result.get_response().raw_output_contents],
        "want_shapes": {n: list(a.shape) for n, a in want.items()},
        "too_small": refusal,
        "after_unregister": after,
    }


def check_shm_bytes(client: grpcclient.InferenceServerClient) -> dict[str, Any]:
    """BYTES in and out of shared memory: the serialized form of tritonclient's utilities."""
    words = np.array([["one", "twö"], ["", "three"]], dtype=np.object_)
    tag = os.getpid()
    size = 256
    handles = [
        shm.create_shared_memory_region("in", f"/zoo_tcb_in_{tag}", size),
        shm.create_shared_memory_region("out", f"/zoo_tcb_out_{tag}", size),
    ]
    try:
        serialized = serialize_byte_tensor(words)
        shm.set_shared_memory_region(handles[0], [serialized])
        client.register_system_shared_memory(f"bin_{tag}", f"/zoo_tcb_in_{tag}", size)
        client.register_system_shared_memory(f"bout_{tag}", f"/zoo_tcb_out_{tag}", size)
        tensor = grpcclient.InferInput("INPUT0", list(words.shape), "BYTES")
        tensor.set_shared_memory(f"bin_{tag}", serialized_byte_size(serialized))
        output = grpcclient.InferRequestedOutput("OUTPUT0")
        output.set_shared_memory(f"bout_{tag}", size)
        result = client.infer("string_identity", [tensor], outputs=[output])
        got = shm.get_contents_as_numpy(handles[1], np.object_, list(words.shape)).copy()
        client.unregister_system_shared_memory(f"bin_{tag}")
        client.unregister_system_shared_memory(f"bout_{tag}")
    finally:
        for handle in handles:
            shm.destroy_shared_memory_region(handle)
    return {
        "sent": _texts(words),
        "got": _texts(got),
        "replied": result.get_output("OUTPUT0").datatype,
    }


def main(mode: str, address: str, *rest: str) -> dict[str, Any]:
    client = grpcclient.InferenceServerClient(address)
    if mode == "bytes":
        return check_bytes(client)
    if mode == "shm":
        return check_shm(client, Path(rest[0]))
    return check_shm_bytes(client)


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
