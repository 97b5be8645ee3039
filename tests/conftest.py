"""Shared fixtures: tiny exported models in a Triton-layout repository, and real server
processes on free ports.

    def test_x(zoo_server):                 # a server on the served repository
        channel = grpc.insecure_channel(zoo_server.address)

    def test_y(start_zoo_server, tmp_path):  # your own repository and flags
        server = start_zoo_server(tmp_path, "--allow-model-control")

    export_model(repository, "my_cnn", version=2)  # a random model: *_mlp, *_cnn, *_slow

`served_repository` is $ZOO_TEST_REPOSITORY if set, else the shipped `model_repository/`
once it holds models, else the tiny test repository (`tiny_repository`: models
"tiny_mlp" and "tiny_cnn", version 1).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_REPOSITORY = ROOT / "model_repository"
TINY_MODELS = ("tiny_mlp", "tiny_cnn")
_READY = re.compile(r"ready on (\S+):(\d+)(?:, metrics on port (\d+))?(?:, http on port (\d+))?")


def _tiny_body(torch: Any, kind: str) -> Any:
    nn = torch.nn
    if kind == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 13 * 13, 10)
        )
    if kind == "slow":
        # 400 chained 784x784 matmuls: ~0.3-0.6 s at batch 64 on 2 cores (lifecycle tests).
        square = nn.Linear(784, 784)
        return nn.Sequential(nn.Flatten(), *[square] * 400, nn.Linear(784, 10))
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


def export_tiny_model(
    repository: Path, name: str, version: int = 1, *, kind: str = "", seed: int = 0
) -> Path:
    """Export a small random model (kind mlp, cnn or slow; by default guessed from `name`)
    with its config.pbtxt and card; inputs and outputs as every zoo model's (zoo.card)."""
    import torch

    from zoo.card import ModelCard
    from zoo.repository import config_for_card, write_model_config

    torch.manual_seed(seed)
    body = _tiny_body(torch, kind or name.rsplit("_", 1)[-1])

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.body(images)
            return logits, torch.softmax(logits, dim=-1)

    model_dir = repository / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    batch = {0: "batch"}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but exports 15-20x faster than dynamo.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            Tiny().eval(),
            (torch.rand(2, 1, 28, 28),),
            str(model_dir / str(version) / "model.onnx"),
            input_names=["images"],
            output_names=["logits", "probabilities"],
            dynamic_axes={"images": batch, "logits": batch, "probabilities": batch},
            opset_version=17,
            dynamo=False,
        )
    card = ModelCard(
        name=name,
        family="test",
        architecture="Tiny",
        config={"seed": seed},
        params=sum(p.numel() for p in body.parameters()),
        normalisation_mean=0.0,
        normalisation_std=1.0,
    )
    (model_dir / "card.json").write_text(card.to_json())
    write_model_config(model_dir, config_for_card(card, max_batch_size=64))
    return model_dir


@pytest.fixture(scope="session")
def export_model() -> Callable[..., Path]:
    """export_tiny_model, for tests that build their own repositories."""
    return export_tiny_model


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with TINY_MODELS, each version 1. Treat as read-only: copy to change."""
    repository = tmp_path_factory.mktemp("tiny_repository")
    for name in TINY_MODELS:
        export_tiny_model(repository, name)
    return repository


@pytest.fixture(scope="session")
def served_repository(tiny_repository: Path) -> Path:
    """$ZOO_TEST_REPOSITORY if set, else the shipped repository, else the tiny one."""
    override = os.environ.get("ZOO_TEST_REPOSITORY")
    if override:
        return Path(override)
    if SHIPPED_REPOSITORY.is_dir() and any(SHIPPED_REPOSITORY.glob("*/config.pbtxt")):
        return SHIPPED_REPOSITORY
    return tiny_repository


@dataclass
class RunningServer:
    """A `python -m server` process; `address` is HOST:PORT for grpc and tritonclient."""

    process: subprocess.Popen
    address: str
    metrics_port: int | None
    log_path: Path
    http_port: int | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.address.rsplit(':', 1)[0]}:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def launch_server(repository: Path, *args: str, log_path: Path) -> RunningServer:
    """Start a server on 127.0.0.1, free ports; return once it says it is ready."""
    command = [sys.executable, "-m", "server", "--repository", str(repository)]
    command += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--http-port", "0"]
    command += args
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True
        )
    line = _first_line(process)
    match = _READY.search(line)
    if match is None:
        process.kill()
        process.wait()
        raise RuntimeError(f"server did not start: {line!r}\n{log_path.read_text()}")
    metrics = int(match.group(3)) if match.group(3) else None
    http = int(match.group(4)) if match.group(4) else None
    return RunningServer(process, f"{match.group(1)}:{match.group(2)}", metrics, log_path, http)


def _first_line(process: subprocess.Popen) -> str:
    # "" when the server died before announcing; a hang is caught by pytest-timeout.
    assert process.stdout is not None
    return process.stdout.readline()


@pytest.fixture(scope="session")
def launch_zoo_server() -> Callable[..., RunningServer]:
    """launch_server(repository, *flags, log_path=...), for fixtures of a wider scope than
    start_zoo_server's: they stop what they start."""
    return launch_server


@pytest.fixture
def start_zoo_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """A factory: start_zoo_server(repository, *flags) -> RunningServer, stopped at teardown."""
    started: list[RunningServer] = []

    def start(repository: Path, *args: str) -> RunningServer:
        log_path = tmp_path / f"server-{len(started)}.log"
        started.append(launch_server(repository, *args, log_path=log_path))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def zoo_server(
    served_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One server for the session on `served_repository`, default flags."""
    log_path = tmp_path_factory.mktemp("zoo_server") / "server.log"
    server = launch_server(served_repository, log_path=log_path)
    yield server
    server.stop()
