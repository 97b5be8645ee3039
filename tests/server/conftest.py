"""Fixtures for the server's tests: a channel and stub on the session's server, and
request builders (as fixtures: importlib test mode cannot import helper modules)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from zoo.repository import list_models, list_versions, model_file, read_model_config


@pytest.fixture(scope="session")
def channel(zoo_server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(zoo_server.address) as channel:
        yield channel


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> GRPCInferenceServiceStub:
    return GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="session")
def model_names(served_repository: Path) -> list[str]:
    return list_models(served_repository)


def infer_request(model: str, images: np.ndarray, **fields: object) -> pb.ModelInferRequest:
    """A ModelInfer request carrying `images` as raw FP32 "images"."""
    request = pb.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name="images", datatype="FP32", shape=images.shape)
    request.raw_input_contents.append(images.astype("<f4").tobytes())
    return request


def outputs_of(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        out.name: np.frombuffer(raw, "<f4").reshape(out.shape)
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def reference_outputs(repository: Path, model: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """In-process onnxruntime on the version the server serves by default."""
    model_dir = repository / model
    config = read_model_config(model_dir)
    version = list_versions(model_dir, config.version_policy)[-1]
    session = ort.InferenceSession(str(model_file(model_dir, version, config)))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": images}), strict=True))


def images(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 1, 28, 28), dtype=np.float32)


@pytest.fixture(scope="session")
def request_for() -> Callable[..., pb.ModelInferRequest]:
    return infer_request


@pytest.fixture(scope="session")
def decode() -> Callable[[pb.ModelInferResponse], dict[str, np.ndarray]]:
    return outputs_of


@pytest.fixture(scope="session")
def reference(served_repository: Path) -> Callable[[str, np.ndarray], dict[str, np.ndarray]]:
    return lambda model, x: reference_outputs(served_repository, model, x)


@pytest.fixture(scope="session")
def random_images() -> Callable[..., np.ndarray]:
    return images
