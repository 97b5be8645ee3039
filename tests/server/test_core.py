"""The grpc-free core in-process: codec corner cases, config auto-completion, load errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from proto import grpc_service_pb2 as pb
from proto.model_config_pb2 import ModelConfig
from server.codec import TensorSpec, decode_inputs
from server.core import InferenceCore
from server.settings import ServeSettings
from zoo.errors import InvalidArgumentError, NotFoundError, UnavailableError
from zoo.repository import read_model_config, write_model_config


def _request(**inputs: tuple[str, np.ndarray]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest()
    for name, (datatype, array) in inputs.items():
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


def test_an_unbatched_model_takes_any_leading_dim_its_config_allows() -> None:
    specs = {"x": TensorSpec("x", "INT64", (3, -1))}
    arrays, batch = decode_inputs(_request(x=("INT64", np.arange(6).reshape(3, 2))), specs, 0)
    assert batch == 1 and arrays["x"].tolist() == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(InvalidArgumentError, match=r"expected shape \[3, -1\], got \[2, 2\]"):
        decode_inputs(_request(x=("INT64", np.zeros((2, 2), np.int64))), specs, 0)


def test_typed_contents_use_the_datatypes_field() -> None:
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="x", datatype="INT32", shape=[1, 3])
    tensor.contents.int_contents.extend([1, 2, 3])
    arrays, _ = decode_inputs(request, {"x": TensorSpec("x", "INT32", (-1, 3))}, 8)
    assert arrays["x"].dtype == np.int32 and arrays["x"].tolist() == [[1, 2, 3]]
    tensor.datatype = "FP16"
    with pytest.raises(InvalidArgumentError, match="send FP16 as raw bytes"):
        decode_inputs(request, {"x": TensorSpec("x", "FP16", (-1, 3))}, 8)


def test_inputs_must_agree_on_the_batch_size() -> None:
    specs = {n: TensorSpec(n, "FP32", (-1, 2)) for n in ("a", "b")}
    request = _request(a=("FP32", np.zeros((2, 2), "<f4")), b=("FP32", np.zeros((3, 2), "<f4")))
    with pytest.raises(InvalidArgumentError, match="disagree on the batch size"):
        decode_inputs(request, specs, 8)


@pytest.fixture
def repository(tiny_repository: Path, tmp_path: Path) -> Path:
    shutil.copytree(tiny_repository, tmp_path / "repo")
    return tmp_path / "repo"


def _core(repository: Path) -> InferenceCore:
    core = InferenceCore(ServeSettings(repository=repository, device="cpu"))
    core.start()
    return core


def test_a_config_without_inputs_and_outputs_is_completed_from_the_graph(
    repository: Path,
) -> None:
    config = read_model_config(repository / "tiny_mlp")
    del config.input[:]
    del config.output[:]
    write_model_config(repository / "tiny_mlp", config)
    meta = _core(repository).model_metadata("tiny_mlp", "")
    assert [(t.name, list(t.shape)) for t in meta.inputs] == [("images", [-1, 1, 28, 28])]
    assert [t.name for t in meta.outputs] == ["logits", "probabilities"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda c: setattr(c.input[0], "name", "pixels"), "config input 'pixels' is not in"),
        (lambda c: c.input[0].dims.__setitem__(0, 3), "the model has FP32 [-1, 1, 28, 28]"),
        (lambda c: setattr(c, "platform", "tensorflow_savedmodel"), "we serve only onnxruntime"),
    ],
)
def test_a_config_that_contradicts_its_model_is_a_load_failure_with_the_reason(
    repository: Path, change, reason: str
) -> None:
    config: ModelConfig = read_model_config(repository / "tiny_cnn")
    change(config)
    write_model_config(repository / "tiny_cnn", config)
    core = _core(repository)
    (entry,) = [m for m in core.repository_index(False).models if m.name == "tiny_cnn"]
    assert entry.state == "UNAVAILABLE" and reason in entry.reason
    with pytest.raises(UnavailableError, match=reason.split("[")[0]):
        core.model_metadata("tiny_cnn", "")
    assert core.model_ready("tiny_mlp", "")  # the others are served


def test_a_model_folder_without_versions_is_reported(repository: Path) -> None:
    shutil.rmtree(repository / "tiny_cnn" / "1")
    core = _core(repository)
    (entry,) = [m for m in core.repository_index(False).models if m.name == "tiny_cnn"]
    assert entry.version == "" and "no version folder" in entry.reason
    with pytest.raises(NotFoundError):
        core.model_metadata("tiny_cnn", "7")


def test_parameters_of_a_known_name_must_have_its_type() -> None:
    specs = {"x": TensorSpec("x", "FP32", (-1, 2))}
    request = _request(x=("FP32", np.zeros((1, 2), "<f4")))
    request.parameters["priority"].int64_param = 1
    request.parameters["whatever"].string_param = "ignored"
    decode_inputs(request, specs, 8)
    request.parameters["timeout"].string_param = "1s"
    with pytest.raises(InvalidArgumentError, match="request parameter 'timeout': expected"):
        decode_inputs(request, specs, 8)
    del request.parameters["timeout"]
    request.inputs[0].parameters["binary_data_size"].bool_param = True
    with pytest.raises(InvalidArgumentError, match="input 'x' parameter 'binary_data_size'"):
        decode_inputs(request, specs, 8)
