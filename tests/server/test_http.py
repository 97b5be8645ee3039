"""The KServe v2 REST API beside gRPC, against real server processes: tritonclient.http
on every served model, JSON and binary tensors, errors as status codes, TLS and tokens,
one core for both protocols, and perf_analyzer -i http."""

from __future__ import annotations

import csv
import json
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.http as triton_http

from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub

ROOT = Path(__file__).resolve().parents[2]
IMAGES = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
TOKEN = "http-t0ken"


def tensor(datatype: str = "FP32", shape: tuple[int, ...] = (1, 1, 28, 28), **fields: Any) -> bytes:
    """An infer request body of one "images" tensor, as JSON bytes."""
    value = {"name": "images", "datatype": datatype, "shape": list(shape), **fields}
    return json.dumps({"inputs": [value]}).encode()


BINARY_PAST_THE_BODY = tensor(shape=(1,), parameters={"binary_data_size": 8})


def call(
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request: (status, headers, body), error statuses included."""
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def post_json(url: str, value: Any, **headers: str) -> tuple[int, Any]:
    status, _, body = call(
        url, json.dumps(value).encode(), {"Content-Type": "application/json", **headers}
    )
    return status, json.loads(body)


def infer_json(images: np.ndarray, nested: bool = False, **extra: Any) -> dict[str, Any]:
    data = images.tolist() if nested else images.ravel().tolist()
    tensor = {"name": "images", "datatype": "FP32", "shape": list(images.shape), "data": data}
    return {"inputs": [tensor], **extra}


def grpc_probabilities(stub: GRPCInferenceServiceStub, model: str) -> np.ndarray:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="images", datatype="FP32", shape=IMAGES.shape)
    request.raw_input_contents.append(IMAGES.tobytes())
    request.outputs.add(name="probabilities")
    reply = stub.ModelInfer(request, timeout=30)
    return np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(len(IMAGES), 10)


def test_tritonclient_http_on_every_model_answers_as_grpc(zoo_server, model_names, stub) -> None:
    # (tritonclient.grpc cannot share a process with our protos: same proto file names.)
    http = triton_http.InferenceServerClient(f"127.0.0.1:{zoo_server.http_port}")
    assert http.is_server_live() and http.is_server_ready()
    for model in model_names:
        assert http.is_model_ready(model)
        assert http.get_model_metadata(model)["inputs"][0]["shape"] == [-1, 1, 28, 28]
        assert http.get_model_config(model)["name"] == model
        for binary in (False, True):
            given = triton_http.InferInput("images", list(IMAGES.shape), "FP32")
            given.set_data_from_numpy(IMAGES, binary_data=binary)
            wanted = [triton_http.InferRequestedOutput("probabilities", binary_data=binary)]
            by_http = http.infer(model, [given], outputs=wanted).as_numpy("probabilities")
            np.testing.assert_array_equal(by_http, grpc_probabilities(stub, model))
    index = http.get_model_repository_index()
    assert {m["name"] for m in index} == set(model_names)


def test_json_tensors_flat_or_nested_and_the_outputs_asked_for(zoo_server, model_names) -> None:
    url = f"{zoo_server.http_url}/v2/models/{model_names[0]}/infer"
    status, flat = post_json(url, infer_json(IMAGES, id="r1"))
    assert status == 200 and flat["id"] == "r1"
    assert [o["name"] for o in flat["outputs"]] == ["logits", "probabilities"]
    assert flat["outputs"][1]["shape"] == [3, 10] and len(flat["outputs"][1]["data"]) == 30
    status, nested = post_json(
        url, infer_json(IMAGES, nested=True, outputs=[{"name": "probabilities"}])
    )
    assert status == 200 and [o["name"] for o in nested["outputs"]] == ["probabilities"]
    assert nested["outputs"][0]["data"] == flat["outputs"][1]["data"]
    # binary_data_output: the outputs come as raw bytes after the JSON header.
    body = json.dumps(infer_json(IMAGES, parameters={"binary_data_output": True})).encode()
    status, headers, reply = call(url, body, {"Content-Type": "application/json"})
    assert status == 200
    length = int(headers["Inference-Header-Content-Length"])
    header = json.loads(reply[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [3 * 10 * 4, 3 * 10 * 4] and len(reply) == length + sum(sizes)
    probabilities = np.frombuffer(reply[length + sizes[0] :], "<f4")
    np.testing.assert_allclose(probabilities, flat["outputs"][1]["data"], rtol=1e-6)


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{not json", {}, 400, "not valid JSON"),
        (b"[1, 2]", {}, 400, "expected a JSON object, got an array"),
        (b"{}", {"Content-Type": "text/plain"}, 400, "expected Content-Type application/json"),
        (b"{}", {"Inference-Header-Content-Length": "999"}, 400, "is 999, but the body has 2"),
        (b"{}", {"Inference-Header-Content-Length": "x"}, 400, "expected a number, got 'x'"),
        (b'{"inputs": []}', {}, 400, "expected 'inputs', a non-empty array"),
        (tensor(data=[1.0]), {}, 400, "shape [1, 1, 28, 28] needs 784 values, got 1"),
        (tensor("INT8", data=[0] * 784), {}, 400, "expected datatype FP32, got 'INT8'"),
        (
            BINARY_PAST_THE_BODY,
            {"Inference-Header-Content-Length": str(len(BINARY_PAST_THE_BODY))},
            400,
            "binary_data_size 8 runs past the 0 bytes after the header",
        ),
    ],
)
def test_a_clients_mistake_is_a_4xx_that_says_what_arrived(
    zoo_server, model_names, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    url = f"{zoo_server.http_url}/v2/models/{model_names[0]}/infer"
    got, _, reply = call(url, body, {"Content-Type": "application/json", **headers})
    assert got == status, reply
    assert message in json.loads(reply)["error"]
    # ... and the server serves on.
    assert post_json(url, infer_json(IMAGES))[0] == 200


def test_unknown_not_ready_and_too_large(start_zoo_server, tiny_repository, tmp_path) -> None:
    repository = tmp_path / "repository"
    subprocess.run(["cp", "-r", str(tiny_repository), str(repository)], check=True)
    broken = repository / "tiny_cnn" / "2"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not a model")
    server = start_zoo_server(repository, "--max-message-mb", "1")
    base = server.http_url
    status, reply = post_json(f"{base}/v2/models/nope/infer", infer_json(IMAGES))
    assert status == 404 and "Request for unknown model: 'nope' is not found" in reply["error"]
    status, _, body = call(f"{base}/v2/models/nope/ready")
    assert status == 404
    # A known model whose only candidate version fails to load: not ready.
    status, _, body = call(f"{base}/v2/models/tiny_cnn/ready")
    assert status == 503 and "not ready" in json.loads(body)["error"]
    assert call(f"{base}/v2/models/tiny_mlp/ready")[0] == 200
    big = np.zeros((400, 1, 28, 28), np.float32)  # ~2.5 MB as JSON, past the 1 MiB limit
    status, reply = post_json(f"{base}/v2/models/tiny_mlp/infer", infer_json(big))
    assert status == 413 and "--max-message-mb" in reply["error"]
    assert post_json(f"{base}/v2/models/tiny_mlp/infer", infer_json(IMAGES))[0] == 200
    status, index = post_json(f"{base}/v2/repository/index", {"ready": True})
    assert status == 200 and [(m["name"], m["version"]) for m in index] == [("tiny_mlp", "1")]
    assert "Traceback" not in server.log()


def test_one_core_for_both_protocols(zoo_server, model_names) -> None:
    """An HTTP request counts in the statistics gRPC reports, and in /metrics."""
    model = model_names[0]

    def successes() -> int:
        with grpc.insecure_channel(zoo_server.address) as channel:
            stats = GRPCInferenceServiceStub(channel).ModelStatistics(
                pb.ModelStatisticsRequest(name=model), timeout=30
            )
        return sum(s.inference_stats.success.count for s in stats.model_stats)

    before = successes()
    url = f"{zoo_server.http_url}/v2/models/{model}/infer"
    for _ in range(3):
        assert post_json(url, infer_json(IMAGES))[0] == 200
    assert successes() == before + 3
    _, _, text = call(f"http://127.0.0.1:{zoo_server.metrics_port}/metrics")
    counted = f'zoo_inference_requests_total{{model="{model}",status="OK",version="1"}}'
    assert counted in text.decode()
    _, _, body = call(f"{zoo_server.http_url}/v2/models/{model}/stats")
    (entry,) = json.loads(body)["model_stats"]
    assert entry["inference_stats"]["success"]["count"] == successes()  # a number, not "3"


def test_tls_and_token_apply_to_http_health_stays_open(
    start_zoo_server, tiny_repository, tls_files
) -> None:
    cert, key = tls_files
    server = start_zoo_server(
        tiny_repository, "--tls-cert", str(cert), "--tls-key", str(key), "--auth-token", TOKEN
    )
    context = ssl.create_default_context(cafile=str(cert))
    base = f"https://localhost:{server.http_port}"
    assert call(f"{base}/v2/health/ready", context=context)[0] == 200
    status, _, body = call(f"{base}/v2/models/tiny_mlp", context=context)
    assert (
        status == 401
        and "missing header 'authorization: Bearer <token>'" in json.loads(body)["error"]
    )
    wrong = {"Authorization": "Bearer nope"}
    status, _, body = call(f"{base}/v2/models/tiny_mlp", headers=wrong, context=context)
    assert status == 401 and "wrong bearer token" in json.loads(body)["error"]
    right = {"Authorization": f"Bearer {TOKEN}"}
    status, _, body = call(f"{base}/v2/models/tiny_mlp", headers=right, context=context)
    assert status == 200 and json.loads(body)["name"] == "tiny_mlp"
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext to TLS: refused
        urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/v2/health/ready", timeout=10)
    triton = triton_http.InferenceServerClient(
        f"localhost:{server.http_port}", ssl=True, ssl_options={"ca_certs": str(cert)}
    )
    given = triton_http.InferInput("images", list(IMAGES.shape), "FP32")
    given.set_data_from_numpy(IMAGES)
    reply = triton.infer("tiny_mlp", [given], headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.as_numpy("probabilities").shape == (3, 10)


def test_cors_only_when_asked_for(start_zoo_server, tiny_repository, zoo_server) -> None:
    _, headers, _ = call(f"{zoo_server.http_url}/v2/health/ready")
    assert "Access-Control-Allow-Origin" not in headers
    server = start_zoo_server(tiny_repository, "--http-cors-origin", "https://example.org")
    _, headers, _ = call(f"{server.http_url}/v2/health/ready")
    assert headers["Access-Control-Allow-Origin"] == "https://example.org"
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/tiny_mlp/infer", method="OPTIONS"
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 204
        assert "Content-Type" in reply.headers["Access-Control-Allow-Headers"]


def test_http_can_be_turned_off(start_zoo_server, tiny_repository) -> None:
    server = start_zoo_server(tiny_repository, "--http-port", "-1")
    assert server.http_port is None


def test_the_readme_curl_examples_run(zoo_server) -> None:
    """Every `curl` line of the README's REST block, against a real server."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n\s*(# REST examples.*?)```", readme, re.S)
    assert block is not None, "the README has no REST examples block"
    lines = [line.strip() for line in block[1].splitlines()]
    commands = [line for line in lines if line.startswith("curl ")]
    assert len(commands) >= 4
    for command in commands:
        command = command.replace("localhost:8000", f"127.0.0.1:{zoo_server.http_port}")
        done = subprocess.run(
            ["bash", "-c", command + " --fail-with-body -sS"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert done.stdout.strip(), command


@pytest.mark.parametrize("batch", [1, 8])
def test_perf_analyzer_over_http(
    perf_analyzer: Path,
    zoo_server,
    model_names: list[str],
    batch: int,
    tmp_path: Path,
) -> None:
    report = tmp_path / "report.csv"
    address = f"127.0.0.1:{zoo_server.http_port}"
    command = [str(perf_analyzer), "-m", model_names[0], "-u", address, "-i", "http"]
    command += ["-b", str(batch), "--concurrency-range", "2", "-f", str(report)]
    command += ["--measurement-mode", "count_windows", "--measurement-request-count", "100"]
    command += ["-s", "100", "--max-trials", "10"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (row,) = list(csv.DictReader(report.open()))
    assert float(row["Inferences/Second"]) > 0
    assert int(row["Server Compute Infer"]) > 0  # from our statistics, over HTTP


def test_classification_over_http_with_tritonclient(zoo_server, model_names) -> None:
    http = triton_http.InferenceServerClient(f"127.0.0.1:{zoo_server.http_port}")
    given = triton_http.InferInput("images", list(IMAGES.shape), "FP32")
    given.set_data_from_numpy(IMAGES)
    for binary in (False, True):
        wanted = [
            triton_http.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)
        ]
        top = http.infer(model_names[0], [given], outputs=wanted).as_numpy("probabilities")
        assert top.shape == (3, 2)
        for row in top:
            # JSON strings come back as str, binary ones as bytes.
            first = row[0].decode() if isinstance(row[0], bytes) else row[0]
            value, index, label = first.split(":")
            assert label == index and 0 <= int(index) <= 9 and 0 <= float(value) <= 1
