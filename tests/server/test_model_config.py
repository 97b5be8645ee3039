"""Triton's model configuration beyond the basics, against one real server: `reshape`
(Triton's densenet_onnx layout and a batched one) over gRPC and HTTP, `model_warmup`
before a version is READY, and the fields we parse but do not implement refused at load
by name while the other models serve on."""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as triton_http
from google.protobuf import json_format, text_format
from onnx import TensorProto, helper, numpy_helper

from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from proto.model_config_pb2 import ModelConfig
from server.config_support import QueueTimeout

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(0)

# Triton's densenet_onnx example, small: the client sends CHW, the model takes NCHW
# with N = 1 and gives [1, classes, 1, 1]; the client gets [classes].
DENSE_CONFIG = """
name: "dense"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 4, 4 ]
    reshape { shape: [ 1, 3, 4, 4 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 5 ]
    reshape { shape: [ 1, 5, 1, 1 ] }
    label_filename: "labels.txt"
  }
]
model_warmup {
  name: "chw"
  batch_size: 1
  inputs { key: "data_0" value: { data_type: TYPE_FP32 dims: [ 3, 4, 4 ] random_data: true } }
}
"""
LABELS = ["ant", "bee", "cat", "dog", "eel"]

# tiny_mlp (images [N, 1, 28, 28] -> logits, probabilities [N, 10]) seen as flat images
# in and logits as 2 x 5 out, with dynamic batching and a warm-up sample in the
# client's shape.
FLAT_CONFIG = """
name: "flat"
platform: "onnxruntime_onnx"
max_batch_size: 8
input { name: "images" data_type: TYPE_FP32 dims: [ 784 ] reshape { shape: [ 1, 28, 28 ] } }
output { name: "logits" data_type: TYPE_FP32 dims: [ 2, 5 ] reshape { shape: [ 10 ] } }
output { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] }
dynamic_batching { max_queue_delay_microseconds: 2000 }
model_warmup {
  name: "flat_zeros"
  batch_size: 2
  inputs { key: "images" value: { data_type: TYPE_FP32 dims: [ 784 ] zero_data: true } }
}
"""

MLP_IO = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input { name: "images" data_type: TYPE_FP32 dims: [ 1, 28, 28 ] }
output { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] }
"""
IMAGES = 'inputs { key: "images" value: { data_type: TYPE_FP32 dims: [ 1, 28, 28 ] %s } }'
WARM_CONFIG = (
    MLP_IO
    + f"""
model_warmup {{ name: "zeros" batch_size: 4 count: 3 {IMAGES % "zero_data: true"} }}
model_warmup {{ name: "noise" batch_size: 1 {IMAGES % "random_data: true"} }}
model_warmup {{ name: "digit" batch_size: 2 count: 2 {IMAGES % 'input_data_file: "digit.bin"'} }}
model_warmup {{ name: "none" batch_size: 0 {IMAGES % "zero_data: true"} }}
"""
)

# Row lookups (Gather): any index outside 0..9 makes onnxruntime fail, so random
# INT64 warm-up data (random bits, as Triton's) fails and zeros do not.
GATHER_IO = """
platform: "onnxruntime_onnx"
max_batch_size: 4
input { name: "indices" data_type: TYPE_INT64 dims: [ 3 ] }
output { name: "rows" data_type: TYPE_FP32 dims: [ 3, 2 ] }
"""
INDICES = 'inputs { key: "indices" value: { data_type: TYPE_INT64 dims: [ 3 ] %s } }'

# Each parsed, none implemented: refused at load, by name.
REFUSED = {
    "sequence": (
        "sequence_batching { max_sequence_idle_microseconds: 5000000 }",
        "sequence_batching",
    ),
    "ensemble": (
        'ensemble_scheduling { step { model_name: "warm" model_version: -1 '
        'input_map { key: "images" value: "images" } '
        'output_map { key: "logits" value: "logits" } } }',
        "ensemble_scheduling",
    ),
    "decoupled": (
        "model_transaction_policy { decoupled: true }",
        "model_transaction_policy.decoupled",
    ),
    "cached": ("response_cache { enable: true }", "response_cache.enable"),
    "ragged": (
        'batch_input { kind: BATCH_ELEMENT_COUNT target_name: "n" data_type: TYPE_FP32 '
        'source_input: "images" }',
        "batch_input",
    ),
    "scattered": (
        'batch_output { target_name: "logits" kind: BATCH_SCATTER_WITH_INPUT_SHAPE '
        'source_input: "images" }',
        "batch_output",
    ),
    "accelerated": (
        "optimization { execution_accelerators { gpu_execution_accelerator { "
        'name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } } }',
        "optimization.execution_accelerators.gpu_execution_accelerator",
    ),
    "prioritised": (
        "dynamic_batching { priority_levels: 2 default_priority_level: 1 }",
        "dynamic_batching.priority_levels",
    ),
    "delayed": (
        "dynamic_batching { default_queue_policy { timeout_action: DELAY } }",
        "dynamic_batching.default_queue_policy.timeout_action (DELAY)",
    ),
    "custom_ops": (
        'model_operations { op_library_filename: "libcustom.so" }',
        "model_operations.op_library_filename",
    ),
    "checksummed": (
        'model_repository_agents { agents { name: "checksum" } }',
        "model_repository_agents",
    ),
    "optional": (
        'input { name: "mask" data_type: TYPE_FP32 dims: [ 1 ] optional: true }',
        "input['mask'].optional",
    ),
    "passive": ("instance_group { count: 1 kind: KIND_CPU passive: true }", "passive"),
    "bucketed": (
        "model_metrics { metric_control { "
        'metric_identifier { family: "nv_inference_request_duration" } '
        "histogram_options { buckets: [ 1, 10 ] } } }",
        "model_metrics",
    ),
}

# Performance-only settings are accepted (and ignored); the graph level is applied.
TUNED_CONFIG = (
    MLP_IO
    + """
optimization {
  graph { level: 2 }
  priority: PRIORITY_MAX
  input_pinned_memory { enable: true }
  output_pinned_memory { enable: false }
  cuda { graphs: true busy_wait_events: true }
  gather_kernel_buffer_threshold: 4
  eager_batching: true
}
instance_group { count: 1 kind: KIND_CPU host_policy: "cpu" rate_limiter { priority: 2 } }
dynamic_batching { preserve_ordering: true }
model_transaction_policy { decoupled: false }
response_cache { enable: false }
"""
)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime of the last years reads
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _dense_model(path: Path) -> None:
    """[1, 3, 4, 4] -> 1x1 convolution to 5 channels -> global average -> [1, 5, 1, 1]."""
    weights = RNG.standard_normal((5, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["data_0", "w"], ["mixed"]),
            helper.make_node("GlobalAveragePool", ["mixed"], ["fc6_1"]),
        ],
        "dense",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [1, 5, 1, 1])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    _save(graph, path)


def _gather_model(path: Path) -> None:
    """indices [N, 3] (INT64) -> rows of a 10 x 2 table [N, 3, 2]."""
    table = RNG.standard_normal((10, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "indices"], ["rows"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("indices", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 3, 2])],
        initializer=[numpy_helper.from_array(table, "table")],
    )
    _save(graph, path)


def _model(repository: Path, name: str, config: str, onnx_file: Path | None = None) -> Path:
    """A model folder: config.pbtxt (with its name), and version 1 from `onnx_file`."""
    model_dir = repository / name
    model_dir.mkdir()
    (model_dir / "config.pbtxt").write_text(f'name: "{name}"\n{config}')
    if onnx_file is not None:
        (model_dir / "1").mkdir()
        shutil.copy(onnx_file, model_dir / "1" / "model.onnx")
    return model_dir


@pytest.fixture(scope="module")
def repository(
    tmp_path_factory: pytest.TempPathFactory, tiny_repository: Path, export_model
) -> Path:
    repo = tmp_path_factory.mktemp("model_config")
    files = tmp_path_factory.mktemp("onnx")
    mlp = tiny_repository / "tiny_mlp" / "1" / "model.onnx"
    _dense_model(files / "dense.onnx")
    _gather_model(files / "gather.onnx")

    dense = _model(repo, "dense", DENSE_CONFIG.replace('name: "dense"', ""), files / "dense.onnx")
    (dense / "labels.txt").write_text("\n".join(LABELS) + "\n")
    _model(repo, "flat", FLAT_CONFIG.replace('name: "flat"', ""), mlp)
    bad = DENSE_CONFIG.replace('name: "dense"', "").replace("labels.txt", "")
    _model(
        repo, "reshape_count", bad.replace("[ 1, 3, 4, 4 ]", "[ 1, 3, 5, 5 ]"), files / "dense.onnx"
    )
    _model(repo, "reshape_graph", bad.replace("[ 1, 3, 4, 4 ]", "[ 1, 48 ]"), files / "dense.onnx")

    warm = _model(repo, "warm", WARM_CONFIG, mlp)
    (warm / "warmup").mkdir()
    digit = np.zeros((1, 28, 28), np.float32)
    digit[0, 4:24, 13:16] = 1.0  # a "1"
    (warm / "warmup" / "digit.bin").write_bytes(digit.astype("<f4").tobytes())
    gather = files / "gather.onnx"
    zeros = f'model_warmup {{ name: "zeros" batch_size: 4 {INDICES % "zero_data: true"} }}'
    noise = f'model_warmup {{ name: "noise" batch_size: 1 {INDICES % "random_data: true"} }}'
    _model(repo, "gather_zeros", GATHER_IO + zeros, gather)
    _model(repo, "gather_noise", GATHER_IO + zeros + noise, gather)
    stranger = INDICES.replace('"indices"', '"index"') % "zero_data: true"
    _model(
        repo,
        "warm_stranger",
        GATHER_IO + f'model_warmup {{ name: "x" batch_size: 1 {stranger} }}',
        gather,
    )
    missing = INDICES % 'input_data_file: "nowhere.bin"'
    _model(
        repo,
        "warm_missing",
        GATHER_IO + f'model_warmup {{ name: "f" batch_size: 1 {missing} }}',
        gather,
    )
    twice = bad.replace("batch_size: 1", "batch_size: 2")  # no batch dimension: 1 only
    _model(repo, "warm_unbatched", twice, files / "dense.onnx")

    for name, (snippet, _) in REFUSED.items():
        _model(repo, name, MLP_IO + snippet, mlp)
    _model(repo, "tuned", TUNED_CONFIG, mlp)

    # ~0.3-0.6 s a call at batch 64 on 2 cores; one call at a time; 1 ms in the queue.
    slow = export_model(repo, "impatient", kind="slow")
    config = text_format.Parse((slow / "config.pbtxt").read_text(), ModelConfig())
    config.instance_group.add(count=1, kind="KIND_CPU")
    config.dynamic_batching.default_queue_policy.default_timeout_microseconds = 1000
    (slow / "config.pbtxt").write_text(text_format.MessageToString(config))
    return repo


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator:
    # launch_server is in the root conftest, which importlib mode cannot import by name.
    conftest = request.config.pluginmanager.get_plugin(str(ROOT / "tests" / "conftest.py"))
    log_path = tmp_path_factory.mktemp("model_config_server") / "server.log"
    running = conftest.launch_server(repository, "--allow-model-control", log_path=log_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def stub(server) -> Iterator[GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def http(server) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")


@pytest.fixture(scope="module")
def index(stub: GRPCInferenceServiceStub) -> dict[str, list[pb.RepositoryIndexResponse.ModelIndex]]:
    models: dict[str, list] = {}
    for entry in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models:
        models.setdefault(entry.name, []).append(entry)
    return models


def _infer(
    stub: GRPCInferenceServiceStub, model: str, **inputs: np.ndarray
) -> dict[str, np.ndarray]:
    request = pb.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        datatype = {"float32": "FP32", "int64": "INT64"}[array.dtype.name]
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    reply = stub.ModelInfer(request)
    return {
        out.name: np.frombuffer(raw, "<f4").reshape(out.shape)
        for out, raw in zip(reply.outputs, reply.raw_output_contents, strict=True)
    }


def _reference(repository: Path, model: str, **feeds: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(repository / model / "1" / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _reason(index: dict, model: str) -> str:
    entries = index.get(model)
    assert entries, f"{model} is not in the repository index: {sorted(index)}"
    assert all(e.state == "UNAVAILABLE" for e in entries), entries
    return " ".join(e.reason for e in entries)


# --- reshape ------------------------------------------------------------------------


def test_tritons_densenet_layout_serves_with_the_config_dims_over_grpc_and_http(
    stub: GRPCInferenceServiceStub, http: triton_http.InferenceServerClient, repository: Path
) -> None:
    x = RNG.random((3, 4, 4), dtype=np.float32)
    expected = _reference(repository, "dense", data_0=x.reshape(1, 3, 4, 4))["fc6_1"].reshape(5)

    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="dense"))
    assert [list(t.shape) for t in (*metadata.inputs, *metadata.outputs)] == [[3, 4, 4], [5]]
    got = _infer(stub, "dense", data_0=x)["fc6_1"]
    assert got.shape == (5,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    data = triton_http.InferInput("data_0", [3, 4, 4], "FP32")
    data.set_data_from_numpy(x, binary_data=True)
    outputs = [triton_http.InferRequestedOutput("fc6_1")]
    np.testing.assert_allclose(
        http.infer("dense", [data], outputs=outputs).as_numpy("fc6_1"),
        expected,
        rtol=1e-5,
        atol=1e-6,
    )
    top = http.infer(
        "dense", [data], outputs=[triton_http.InferRequestedOutput("fc6_1", class_count=2)]
    )
    best = int(np.argmax(expected))
    assert top.as_numpy("fc6_1")[0].decode().split(":")[1:] == [str(best), LABELS[best]]
    # The config as Triton's clients read it keeps the reshape.
    config = http.get_model_config("dense")
    assert config["input"][0]["reshape"]["shape"] == [1, 3, 4, 4]


def test_a_request_in_the_models_own_shape_is_refused(
    stub: GRPCInferenceServiceStub, http: triton_http.InferenceServerClient
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _infer(stub, "dense", data_0=np.zeros((1, 3, 4, 4), np.float32))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected shape [3, 4, 4], got [1, 3, 4, 4]" in caught.value.details()
    data = triton_http.InferInput("data_0", [1, 3, 4, 4], "FP32")
    data.set_data_from_numpy(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(triton_http.InferenceServerException, match=r"expected shape \[3, 4, 4\]"):
        http.infer("dense", [data])


def test_reshape_with_a_batch_dimension_under_dynamic_batching(
    stub: GRPCInferenceServiceStub, http: triton_http.InferenceServerClient, repository: Path
) -> None:
    batches = [RNG.random((n, 784), dtype=np.float32) for n in (3, 1, 2, 1, 1)]
    # Concurrent requests may be batched together: each must get its own rows back.
    with ThreadPoolExecutor(len(batches)) as pool:
        replies = list(pool.map(lambda x: _infer(stub, "flat", images=x), batches))
    for x, got in zip(batches, replies, strict=True):
        want = _reference(repository, "flat", images=x.reshape(-1, 1, 28, 28))
        assert got["logits"].shape == (len(x), 2, 5)
        np.testing.assert_allclose(
            got["logits"], want["logits"].reshape(-1, 2, 5), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            got["probabilities"], want["probabilities"], rtol=1e-5, atol=1e-6
        )

    metadata = http.get_model_metadata("flat")
    assert [t["shape"] for t in metadata["inputs"]] == [[-1, 784]]
    assert [t["shape"] for t in metadata["outputs"]] == [[-1, 2, 5], [-1, 10]]
    data = triton_http.InferInput("images", [2, 784], "FP32")
    data.set_data_from_numpy(batches[2], binary_data=False)  # JSON tensors
    logits = http.infer("flat", [data]).as_numpy("logits")
    np.testing.assert_allclose(logits, replies[2]["logits"], rtol=1e-6, atol=1e-7)


def test_a_reshape_that_does_not_fit_is_a_load_failure_with_its_reason(index: dict) -> None:
    reason = _reason(index, "reshape_count")
    assert "input 'data_0': reshape [1, 3, 5, 5] of dims [3, 4, 4]" in reason
    assert "different numbers of elements" in reason
    # A valid reshape, but not the graph's shape: the graph is held to the reshape.
    assert "config says FP32 [1, 48], the model has FP32 [1, 3, 4, 4]" in _reason(
        index, "reshape_graph"
    )


# --- warm-up ------------------------------------------------------------------------


def test_warm_up_samples_run_before_the_version_is_ready(
    server, stub: GRPCInferenceServiceStub, index: dict
) -> None:
    assert [e.state for e in index["warm"]] == ["READY"]
    log = server.log()
    ran = [
        (m.group(1), int(m.group(2)), int(m.group(3)))
        for m in re.finditer(
            r"model warm version 1: warm-up sample '(\w+)' ran (\d+) time\(s\) at batch size (\d+)",
            log,
        )
    ]
    assert ran == [("zeros", 3, 4), ("noise", 1, 1), ("digit", 2, 2)]
    assert "model_warmup 'none' of warm: batch_size 0, skipped" in log
    assert log.index("sample 'digit' ran") < log.index("loaded warm version 1")
    # Through the reshape, in the client's shape.
    assert "model flat version 1: warm-up sample 'flat_zeros' ran 1 time(s) at batch size 2" in log
    assert "model dense version 1: warm-up sample 'chw' ran 1 time(s) at batch size 1" in log
    # Warm-up is not traffic: the statistics start at zero.
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="warm")).model_stats[0]
    assert (stats.inference_count, stats.execution_count) == (0, 0)


def test_a_failing_warm_up_is_a_load_failure_and_the_others_serve_on(
    stub: GRPCInferenceServiceStub, index: dict
) -> None:
    reason = _reason(index, "gather_noise")
    assert "model_warmup 'noise' failed (run 1 of 1, batch size 1)" in reason
    assert "indices" in reason.lower()  # onnxruntime's own words on the bad index
    assert [e.state for e in index["gather_zeros"]] == ["READY"]
    rows = _infer(stub, "gather_zeros", indices=np.array([[0, 9, 3]], np.int64))["rows"]
    assert rows.shape == (1, 3, 2)

    assert (
        "model_warmup 'x': ['index'] are not inputs of the model (it has ['indices'])"
        in _reason(index, "warm_stranger")
    )
    assert "model_warmup 'chw': batch_size 2 exceeds what the model takes (max_batch_size 0" in (
        _reason(index, "warm_unbatched")
    )
    missing = _reason(index, "warm_missing")
    assert "model_warmup 'f' input 'indices': input_data_file 'nowhere.bin'" in missing
    assert "No such file" in missing


def test_load_runs_the_new_configs_warm_up_before_it_returns(
    server, stub: GRPCInferenceServiceStub, repository: Path
) -> None:
    config = text_format.Parse(
        (repository / "gather_zeros" / "config.pbtxt").read_text(), ModelConfig()
    )
    again = config.model_warmup.add(name="again", batch_size=2, count=5)
    again.inputs["indices"].data_type = config.input[0].data_type
    again.inputs["indices"].dims.append(3)
    again.inputs["indices"].zero_data = True
    request = pb.RepositoryModelLoadRequest(model_name="gather_zeros")
    request.parameters["config"].string_param = json_format.MessageToJson(config)
    stub.RepositoryModelLoad(request)
    assert "model gather_zeros version 1: warm-up sample 'again' ran 5 time(s) at batch size 2" in (
        server.log()
    )

    config.sequence_batching.max_sequence_idle_microseconds = 1000
    request.parameters["config"].string_param = json_format.MessageToJson(config)
    with pytest.raises(grpc.RpcError) as caught:
        stub.RepositoryModelLoad(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not implement: sequence_batching;" in caught.value.details()
    assert stub.ModelReady(pb.ModelReadyRequest(name="gather_zeros")).ready


# --- refused and accepted fields ---------------------------------------------------


@pytest.mark.parametrize("model", sorted(REFUSED))
def test_unimplemented_fields_are_refused_at_load_by_name(
    server, stub: GRPCInferenceServiceStub, index: dict, model: str
) -> None:
    field = REFUSED[model][1]
    reason = _reason(index, model)
    assert "model configuration uses what this server does not implement" in reason
    assert field in reason
    assert field in server.log()
    ready = stub.ModelReady(pb.ModelReadyRequest(name=model)).ready
    assert not ready


def test_queue_timeout_is_tritons_default_or_a_shorter_override() -> None:
    config = ModelConfig()
    assert QueueTimeout.of(config)(None) is None
    assert QueueTimeout.of(config)(0.5) == 0.5  # no default: the request's own, as before
    policy = config.dynamic_batching.default_queue_policy
    policy.default_timeout_microseconds = 200_000
    assert [QueueTimeout.of(config)(t) for t in (None, 0.1, 0.5)] == [0.2, 0.2, 0.2]
    policy.allow_timeout_override = True
    assert [QueueTimeout.of(config)(t) for t in (None, 0.1, 0.5)] == [0.2, 0.1, 0.2]


def _in_flight(server) -> float:
    """Requests the server is serving now, from its metrics endpoint."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    prefix = "zoo_inference_in_flight{"
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(prefix))


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


def test_the_queue_policys_default_timeout_refuses_a_request_left_waiting(
    server, stub: GRPCInferenceServiceStub
) -> None:
    def images(n: int) -> dict[str, np.ndarray]:
        return {"images": RNG.random((n, 1, 28, 28), dtype=np.float32)}

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(_infer, stub, "impatient", **images(64))
        _wait_for(lambda: _in_flight(server) >= 1)
        # No timeout of its own: the config's 1 ms passes while the big batch runs.
        with pytest.raises(grpc.RpcError) as caught:
            _infer(stub, "impatient", **images(3))
        assert running.result()["logits"].shape == (64, 10)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="impatient")).model_stats
    assert 3 not in {b.batch_size for b in stats.batch_stats}


def test_settings_that_change_nothing_visible_are_accepted_and_the_graph_level_applied(
    server, stub: GRPCInferenceServiceStub, index: dict, repository: Path
) -> None:
    assert [e.state for e in index["tuned"]] == ["READY"]
    assert "model tuned: onnxruntime graph optimisation ORT_DISABLE_ALL" in server.log()
    x = RNG.random((2, 1, 28, 28), dtype=np.float32)
    got = _infer(stub, "tuned", images=x)["logits"]
    np.testing.assert_allclose(
        got, _reference(repository, "tuned", images=x)["logits"], rtol=1e-5, atol=1e-6
    )
