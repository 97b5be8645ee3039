"""The grpc-free core in-process on real exported models: codec corner cases, config
auto-completion, load errors, batch-less configs, configs that disagree with their graph,
versions that fail to load while another serves, files that lead outside the repository."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from proto import grpc_service_pb2 as pb
from proto.model_config_pb2 import ModelConfig
from server.codec import TensorSpec, decode_inputs
from server.core import InferenceCore
from server.settings import ServeSettings
from zoo.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
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


def _model_request(model: str, version: str = "", **inputs: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype="FP32", shape=array.shape)
        request.raw_input_contents.append(array.astype("<f4").tobytes())
    return request


def _index(core: InferenceCore) -> dict[tuple[str, str], pb.RepositoryIndexResponse.ModelIndex]:
    return {(m.name, m.version): m for m in core.repository_index(False).models}


def _save(model_dir: Path, graph: onnx.GraphProto, config: str) -> None:
    (model_dir / "1").mkdir(parents=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(model_dir / "1" / "model.onnx"))
    (model_dir / "config.pbtxt").write_text(config)


def _images(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).random((batch, 1, 28, 28), dtype=np.float32)


@pytest.mark.parametrize("config_text", ["max_batch_size: 0", ""])
def test_a_batchless_config_serves_the_whole_tensor(
    repository: Path, config_text: str, decode
) -> None:
    # An empty config (a truncated file) is completed from the graph, without a batch axis.
    (repository / "tiny_mlp" / "config.pbtxt").write_text(config_text)
    core = _core(repository)
    x = _images(8)
    got = decode(core.infer(_model_request("tiny_mlp", images=x), None))
    session = ort.InferenceSession(str(repository / "tiny_mlp" / "1" / "model.onnx"))
    (want,) = session.run(["logits"], {"images": x})
    assert got["logits"].shape == (8, 10)
    np.testing.assert_allclose(got["logits"], want, rtol=1e-5, atol=1e-6)


def test_a_model_without_batch_axis_answers_every_value(repository: Path, decode) -> None:
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "flatten",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [24])],
        [helper.make_tensor("shape", TensorProto.INT64, [1], [24])],
    )
    _save(repository / "flat", graph, 'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n')
    x = np.arange(24, dtype=np.float32).reshape(3, 8)
    got = decode(_core(repository).infer(_model_request("flat", x=x), None))
    assert got["y"].tolist() == x.ravel().tolist()


def test_a_config_missing_an_input_the_graph_needs_is_a_load_failure(repository: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"])],
        "add",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [-1, 4]) for n in "ab"],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [-1, 4])],
    )
    config = (
        'max_batch_size: 8\ninput { name: "a" data_type: TYPE_FP32 dims: [4] }\n'
        'output { name: "sum" data_type: TYPE_FP32 dims: [4] }\n'
    )
    _save(repository / "add", graph, config)
    core = _core(repository)
    entry = _index(core)[("add", "1")]
    assert entry.state == "UNAVAILABLE"
    assert "the model needs inputs ['b'] that the config does not list" in entry.reason
    assert not core.model_ready("add", "")


@pytest.mark.parametrize("version", ["²", "-1", "1e3", "01", " 1", "9" * 40, "9" * 5000])
def test_an_odd_version_is_not_found(repository: Path, version: str) -> None:
    core = _core(repository)
    with pytest.raises(NotFoundError, match="has no version"):
        core.infer(_model_request("tiny_mlp", version, images=_images(1)), None)
    assert not core.model_ready("tiny_mlp", version)
    with pytest.raises(NotFoundError):
        core.statistics("tiny_mlp", version)


def test_an_input_given_twice_is_refused(repository: Path) -> None:
    request = _model_request("tiny_mlp", images=_images(1))
    request.inputs.append(request.inputs[0])
    request.raw_input_contents.append(request.raw_input_contents[0])
    with pytest.raises(InvalidArgumentError, match="input 'images' given twice"):
        _core(repository).infer(request, None)


def test_a_broken_new_version_leaves_the_last_good_one_serving(
    repository: Path, export_model
) -> None:
    core = _core(repository)  # tiny_mlp's config serves the latest version only
    (repository / "tiny_mlp" / "2").mkdir()
    (repository / "tiny_mlp" / "2" / "model.onnx").write_bytes(os.urandom(4096))
    core.manager.scan()
    assert core.infer(_model_request("tiny_mlp", images=_images(1)), None).model_version == "1"
    index = _index(core)
    assert index[("tiny_mlp", "1")].state == "READY"
    assert "serving until a newer version is ready" in index[("tiny_mlp", "1")].reason
    assert index[("tiny_mlp", "2")].state == "UNAVAILABLE"
    assert "onnxruntime cannot load it" in index[("tiny_mlp", "2")].reason
    # A version folder still being filled is no different: version 1 goes on.
    (repository / "tiny_mlp" / "2" / "model.onnx").unlink()
    core.manager.scan()
    assert core.infer(_model_request("tiny_mlp", images=_images(1)), None).model_version == "1"
    # Once version 2 loads, version 1 goes.
    export_model(repository, "tiny_mlp", version=2, seed=1)
    core.manager.scan()
    assert core.infer(_model_request("tiny_mlp", images=_images(1)), None).model_version == "2"
    assert _index(core)[("tiny_mlp", "1")].state == "UNAVAILABLE"


def test_garbage_over_a_served_file_keeps_its_session_and_the_index_says_so(
    repository: Path, decode
) -> None:
    core = _core(repository)
    x = _images(2)
    before = decode(core.infer(_model_request("tiny_mlp", images=x), None))
    (repository / "tiny_mlp" / "1" / "model.onnx").write_bytes(os.urandom(4096))
    core.manager.scan()
    after = decode(core.infer(_model_request("tiny_mlp", images=x), None))
    np.testing.assert_array_equal(before["logits"], after["logits"])
    entry = _index(core)[("tiny_mlp", "1")]
    assert entry.state == "READY"
    assert entry.reason.startswith("serving the previous load; reloading failed:")


def test_reasons_name_files_relative_to_the_repository(repository: Path) -> None:
    (repository / "tiny_cnn" / "config.pbtxt").write_text("max_batch_size: nonsense")
    shutil.rmtree(repository / "tiny_mlp" / "1")
    (repository / "tiny_mlp" / "1").mkdir()
    (repository / "tiny_mlp" / "1" / "model.onnx").write_bytes(b"garbage")
    reasons = [m.reason for m in _core(repository).repository_index(False).models]
    assert any("tiny_cnn/config.pbtxt" in r for r in reasons)
    assert any("tiny_mlp/1/model.onnx" in r for r in reasons)
    for reason in reasons:
        assert str(repository) not in reason and str(repository.resolve()) not in reason


def test_files_leading_outside_the_repository_are_refused(repository: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(repository / "tiny_cnn", outside / "evil")
    (repository / "linked").symlink_to(outside / "evil", target_is_directory=True)
    config: ModelConfig = read_model_config(repository / "tiny_cnn")
    config.default_model_filename = "../../../outside/evil/1/model.onnx"
    write_model_config(repository / "tiny_cnn", config)
    inner = repository / "tiny_mlp" / "1" / "model.onnx"
    inner.rename(outside / "model.onnx")
    inner.symlink_to(outside / "model.onnx")
    core = InferenceCore(
        ServeSettings(repository=repository, device="cpu", allow_model_control=True)
    )
    core.start()
    index = _index(core)
    assert "leads outside the model repository" in index[("linked", "")].reason
    assert "expected a file name inside the version folder" in index[("tiny_cnn", "")].reason
    assert "tiny_mlp/1/model.onnx leads outside" in index[("tiny_mlp", "1")].reason
    assert core.manager.loaded() == []
    with pytest.raises(FailedPreconditionError, match="leads outside the model repository"):
        core.load("linked", {})
