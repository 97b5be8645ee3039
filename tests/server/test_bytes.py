"""BYTES (string) tensors end to end, on models of strings built here after Triton's
simple_identity and simple_string examples (tests/server/conftest.py): raw and typed
contents over gRPC, JSON and binary over HTTP, onnxruntime string tensors, dynamic
batches of strings, statistics, tritonclient (gRPC in a subprocess, HTTP in-process)
and perf_analyzer."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from client.protocol import build_infer_request, decode_outputs
from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from server.batcher import DynamicBatcher
from server.codec import TensorSpec, decode_inputs
from zoo.datatypes import encode_bytes

HERE = Path(__file__).resolve().parent
IDENTITY, ARITHMETIC = "string_identity", "string_arithmetic"
# Text a client may send: non-ASCII, empty, an embedded NUL, a long one.
WORDS = np.array([["héllo", "", "a\x00b"], ["x" * 300, "ünï", "7"]], dtype=object)
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def stub(string_server) -> Iterator[GRPCInferenceServiceStub]:
    with grpc.insecure_channel(string_server.address) as channel:
        yield GRPCInferenceServiceStub(channel)


def _texts(array: np.ndarray) -> list[str]:
    return [item.decode() if isinstance(item, bytes) else item for item in array.ravel()]


def _numbers(rows: int, start: int = 0) -> np.ndarray:
    return np.array([[str(start + r * 16 + i) for i in range(16)] for r in range(rows)], object)


def test_strings_come_back_whole_as_raw_and_as_typed_contents(stub) -> None:
    raw = stub.ModelInfer(build_infer_request(IDENTITY, {"INPUT0": WORDS}))
    (output,) = raw.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("OUTPUT0", "BYTES", [2, 3])
    assert _texts(decode_outputs(raw)["OUTPUT0"]) == _texts(WORDS)
    typed = pb.ModelInferRequest(model_name=IDENTITY)
    tensor = typed.inputs.add(name="INPUT0", datatype="BYTES", shape=[2, 3])
    tensor.contents.bytes_contents.extend(w.encode() for w in WORDS.ravel())
    assert _texts(decode_outputs(stub.ModelInfer(typed))["OUTPUT0"]) == _texts(WORDS)


def test_metadata_and_config_say_bytes_and_type_string(stub) -> None:
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=ARITHMETIC))
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("INPUT0", "BYTES", [-1, 16]),
        ("INPUT1", "BYTES", [-1, 16]),
    ]
    config = stub.ModelConfig(pb.ModelConfigRequest(name=ARITHMETIC)).config
    assert [t.data_type for t in config.output] == [13, 13]  # TYPE_STRING


def test_numbers_as_text_are_summed_and_subtracted(stub) -> None:
    a, b = _numbers(3), np.full((3, 16), "-5", object)
    reply = decode_outputs(
        stub.ModelInfer(build_infer_request(ARITHMETIC, {"INPUT0": a, "INPUT1": b}))
    )
    assert _texts(reply["OUTPUT0"]) == [str(int(x) - 5) for x in a.ravel()]
    assert _texts(reply["OUTPUT1"]) == [str(int(x) + 5) for x in a.ravel()]


def _raw_request(raw: bytes, shape: list[int]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=IDENTITY)
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=shape)
    request.raw_input_contents.append(raw)
    return request


def _bad_requests() -> dict[str, tuple[pb.ModelInferRequest, str]]:
    good = encode_bytes(np.array(["ab", "cd"], object))
    typed = pb.ModelInferRequest(model_name=IDENTITY)
    typed.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 3]).contents.bytes_contents.extend(
        [b"a", b"b"]
    )
    classify = build_infer_request(IDENTITY, {"INPUT0": WORDS})
    classify.outputs.add(name="OUTPUT0").parameters["classification"].int64_param = 2
    return {
        "not UTF-8": (
            _raw_request(encode_bytes(np.array([b"ok", b"\xff\xfe"], object)), [1, 2]),
            r"input 'INPUT0': element 1 is not UTF-8 text \(invalid start byte at byte 0\)",
        ),
        "cut length": (_raw_request(good[:-1], [1, 2]), "an element of 2 bytes runs past the end"),
        "cut prefix": (_raw_request(good + b"\x01\x00", [1, 2]), "a length prefix is cut"),
        "too few": (_raw_request(good, [1, 3]), "expected 3 BYTES elements in its raw contents"),
        "typed count": (typed, r"expected 3 values in contents.bytes_contents, got 2"),
        "classification": (classify, "classification needs a numeric output, got BYTES"),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(_bad_requests()))
def test_a_bad_string_tensor_is_invalid_argument_and_the_server_serves_on(stub, case) -> None:
    request, message = _bad_requests()[case]
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request)
    assert error.value.code() == INVALID
    assert re.search(message, error.value.details()), error.value.details()
    reply = stub.ModelInfer(build_infer_request(IDENTITY, {"INPUT0": WORDS}))
    assert _texts(decode_outputs(reply)["OUTPUT0"]) == _texts(WORDS)


def test_statistics_count_string_requests(stub) -> None:
    def successes() -> tuple[int, int]:
        (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name=ARITHMETIC)).model_stats
        return stats.inference_stats.success.count, stats.inference_count

    before = successes()
    request = build_infer_request(ARITHMETIC, {"INPUT0": _numbers(2), "INPUT1": _numbers(2)})
    for _ in range(3):
        stub.ModelInfer(request)
    after = successes()
    assert (after[0] - before[0], after[1] - before[1]) == (3, 6)  # requests, batch items


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.001)


def test_queued_string_requests_run_as_one_batch_and_are_split_back(
    string_repository: Path,
) -> None:
    """Decoded requests of strings, through the real batcher into a real session: the
    first call is held until three more requests queue, which then run as one batch."""
    session = ort.InferenceSession(str(string_repository / IDENTITY / "1" / "model.onnx"))
    held, release, sizes = threading.Event(), threading.Event(), []

    def run(feeds: dict[str, np.ndarray], only_call: bool) -> list[np.ndarray]:
        sizes.append(len(feeds["INPUT0"]))
        if len(sizes) == 1:
            held.set()
            release.wait(30)
        return session.run(["OUTPUT0"], feeds)

    batcher = DynamicBatcher(run, max_batch_size=8, batching=True)
    spec = {"INPUT0": TensorSpec("INPUT0", "BYTES", (-1, -1))}
    sent = [np.array([[f"request {i}", f"é{i}"]], object) for i in range(4)]

    def submit(words: np.ndarray) -> list[str]:
        arrays, size = decode_inputs(build_infer_request(IDENTITY, {"INPUT0": words}), spec, 8)
        return _texts(batcher.submit(arrays, size).outputs[0])

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(submit, sent[0])
        held.wait(30)
        rest = [pool.submit(submit, words) for words in sent[1:]]
        _wait_until(lambda: len(batcher._queue) == 3)
        release.set()
        answers = [first.result(30)] + [f.result(30) for f in rest]
    assert sizes == [1, 3]
    assert answers == [_texts(words) for words in sent]


def test_tritonclient_grpc_sends_and_reads_strings(string_server) -> None:
    done = subprocess.run(
        [sys.executable, str(HERE / "tritonclient_extensions.py"), "bytes", string_server.address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)
    assert seen["identity"] == seen["sent"] == _texts(WORDS)
    assert seen["identity_shape"] == [2, 3]
    assert seen["async_error"] is None and seen["async"] == _texts(WORDS[:1])
    assert seen["sums"] == [str(i + 1) for i in range(16)]
    assert seen["differences"] == [str(i - 1) for i in range(16)]
    assert seen["datatypes"] == ["BYTES"] * 4
    assert seen["success_count"] >= 2


@pytest.fixture(scope="module")
def http_client(string_server) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{string_server.http_port}")
    yield client
    client.close()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http_strings_as_json_and_binary(http_client, binary: bool) -> None:
    tensor = triton_http.InferInput("INPUT0", list(WORDS.shape), "BYTES")
    tensor.set_data_from_numpy(WORDS, binary_data=binary)
    output = triton_http.InferRequestedOutput("OUTPUT0", binary_data=binary)
    result = http_client.infer(IDENTITY, [tensor], outputs=[output])
    got = result.as_numpy("OUTPUT0")
    assert got.shape == (2, 3)
    assert _texts(got) == _texts(WORDS)
    a = triton_http.InferInput("INPUT0", [1, 16], "BYTES")
    a.set_data_from_numpy(_numbers(1), binary_data=binary)
    b = triton_http.InferInput("INPUT1", [1, 16], "BYTES")
    b.set_data_from_numpy(np.full((1, 16), "2", object), binary_data=binary)
    sums = http_client.infer(ARITHMETIC, [a, b]).as_numpy("OUTPUT0")
    assert _texts(sums) == [str(i + 2) for i in range(16)]


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    ("data", "shape", "message"),
    [
        ([["a", 3]], [1, 2], "BYTES data must be strings, got int"),
        ([["a", "b"]], [1, 3], r"shape \[1, 3\] needs 3 strings, got 2"),
        ([["a", "\udcff"]], [1, 2], "element 1 is not UTF-8 text"),
    ],
    ids=["number", "count", "lone surrogate"],
)
def test_rest_string_mistakes_are_400_with_the_reason(
    string_server, data: list, shape: list[int], message: str
) -> None:
    body = {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": shape, "data": data}]}
    status, reply = _post(f"{string_server.http_url}/v2/models/{IDENTITY}/infer", body)
    assert status == 400
    assert re.search(message, reply["error"]), reply


def test_nested_json_strings_answer_as_json_strings(string_server) -> None:
    body = {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [2, 2],
                        "data": [["a", "ß"], ["", "d"]]}]}  # fmt: skip
    status, reply = _post(f"{string_server.http_url}/v2/models/{IDENTITY}/infer", body)
    assert status == 200, reply
    (output,) = reply["outputs"]
    assert output == {"name": "OUTPUT0", "datatype": "BYTES", "shape": [2, 2],
                      "data": ["a", "ß", "", "d"]}  # fmt: skip


def test_a_string_output_cannot_be_classified_over_http(http_client) -> None:
    tensor = triton_http.InferInput("INPUT0", list(WORDS.shape), "BYTES")
    tensor.set_data_from_numpy(WORDS)
    output = triton_http.InferRequestedOutput("OUTPUT0", class_count=2)
    with pytest.raises(InferenceServerException, match="classification needs a numeric output"):
        http_client.infer(IDENTITY, [tensor], outputs=[output])


@pytest.mark.parametrize(
    ("model", "flags"),
    [
        (IDENTITY, ["--string-data", "hello", "--shape", "INPUT0:4", "-b", "2"]),
        (ARITHMETIC, ["--string-data", "7"]),  # numbers as text: the model parses them
    ],
)
def test_perf_analyzer_measures_a_string_model(
    perf_analyzer: Path, string_server, model: str, flags: list[str], tmp_path: Path
) -> None:
    report = tmp_path / "report.csv"
    command = [str(perf_analyzer), "-m", model, "-u", string_server.address, "-i", "grpc"]
    command += [*flags, "--concurrency-range", "2", "-f", str(report)]
    command += ["--measurement-mode", "count_windows", "--measurement-request-count", "50"]
    command += ["-s", "100", "--max-trials", "5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (row,) = list(csv.DictReader(report.open()))
    assert float(row["Inferences/Second"]) > 0
    assert int(row["Server Compute Infer"]) > 0
