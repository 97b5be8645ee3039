"""Send a burst of concurrent inferences with tritonclient.grpc; print each one's status
(OK or the gRPC code's name) as a JSON list.

    python tritonclient_burst.py HOST:PORT MODEL BATCH COUNT

A script, run in its own process: tritonclient's stubs register the same protobuf names
as ours, so it cannot share a process with them.
"""

from __future__ import annotations

import functools
import json
import sys
import threading

import numpy as np
import tritonclient.grpc as grpcclient

TIMEOUT_S = 120.0


def burst(address: str, model: str, batch: int, count: int) -> list[str]:
    client = grpcclient.InferenceServerClient(address)
    images = np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)
    statuses: list[str] = ["NO_REPLY"] * count
    answered = threading.Semaphore(0)

    def done(i: int, result: object, error: Exception | None) -> None:
        statuses[i] = "OK" if error is None else error.status().removeprefix("StatusCode.")
        answered.release()

    # All sent before any reply is awaited: the server sees them arrive together.
    for i in range(count):
        tensor = grpcclient.InferInput("images", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        client.async_infer(
            model, [tensor], callback=functools.partial(done, i), client_timeout=TIMEOUT_S
        )
    for _ in range(count):
        answered.acquire(timeout=TIMEOUT_S + 10)
    client.close()
    return statuses


if __name__ == "__main__":
    address, model, batch, count = sys.argv[1:]
    print(json.dumps(burst(address, model, int(batch), int(count))))
