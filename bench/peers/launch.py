"""Start a peer server (KServe or MLServer) on ONNX files, for bench/serve.py --peers.

    python bench/peers/launch.py kserve|mlserver NAME=PATH/model.onnx ...

Runs inside the peer's own virtual environment (bench/.peers/NAME), never the project's.
Picks free loopback ports, starts the peer with its default settings, and prints one line,
`NAME: ready on 127.0.0.1:GRPC, http on port HTTP`, once every model answers ready over
REST: the line bench/serve.py's ServerProcess waits for. Everything else the peer prints
goes to stderr, so that a pipe nobody reads cannot fill and stall the server.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
# onnxruntime's type strings to the v2 protocol's datatypes (the ones our models use).
DATATYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64"}


@dataclass(frozen=True)
class Ports:
    host: str  # MLServer listens here; KServe's ModelServer takes no address (all of them)
    grpc: int
    http: int
    metrics: int


@dataclass(frozen=True)
class Served:
    """One ONNX file to serve, with its v2 tensor metadata (name, datatype, shape; -1 for
    a named or unknown dimension, as the batch axis is)."""

    name: str
    path: Path
    inputs: list[dict]
    outputs: list[dict]


def describe(name: str, path: str) -> Served:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def tensors(args: list) -> list[dict]:
        return [
            {
                "name": arg.name,
                "datatype": DATATYPES[arg.type],
                "shape": [d if isinstance(d, int) else -1 for d in arg.shape],
            }
            for arg in args
        ]

    return Served(name, Path(path), tensors(session.get_inputs()), tensors(session.get_outputs()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def announce_when_ready(peer: str, ports: Ports, models: list[Served]) -> None:
    """From now on fd 1 is stderr; a thread prints the ready line on the real stdout."""
    ready_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def wait() -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = [m.name for m in models]
        while pending and time.monotonic() < deadline:
            url = f"http://{ports.host}:{ports.http}/v2/models/{pending[0]}/ready"
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    if reply.status == 200:
                        pending.pop(0)
                        continue
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        if pending:  # no line: the benchmark reports the peer's log and moves on
            ready_out.close()
            return
        print(
            f"{peer}: ready on {ports.host}:{ports.grpc}, http on port {ports.http}", file=ready_out
        )
        ready_out.flush()

    threading.Thread(target=wait, daemon=True).start()


def main(argv: list[str]) -> int:
    peer, pairs = argv[0], argv[1:]
    models = [describe(*pair.split("=", 1)) for pair in pairs]
    ports = Ports(HOST, free_port(), free_port(), free_port())
    announce_when_ready(peer, ports, models)
    importlib.import_module(f"{peer}_onnx").serve(models, ports)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
