"""System shared memory (Triton's extension) against real server processes: regions of
real POSIX shared memory objects (/dev/shm) registered over gRPC and HTTP, inputs read
from them and outputs written into them, precise refusals, CUDA shared memory refused,
tritonclient's shared-memory utilities (gRPC in a subprocess, HTTP in-process),
perf_analyzer --shared-memory system, and `--processes 2`, where a registration reaches
every worker and a restarted one."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from client.protocol import build_infer_request, decode_outputs
from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub

with warnings.catch_warnings():  # it imports pkg_resources, which warns of its end
    warnings.simplefilter("ignore")
    import tritonclient.utils.shared_memory as triton_shm

HERE = Path(__file__).resolve().parent
SHM = Path("/dev/shm")
INVALID = grpc.StatusCode.INVALID_ARGUMENT
IMAGES = np.random.default_rng(3).random((2, 1, 28, 28), dtype=np.float32)


@pytest.fixture
def shm_object() -> Iterator[Callable[[int], str]]:
    """A factory: shm_object(size) -> the key of a new POSIX shared memory object of
    `size` zero bytes (as shm_open(O_CREAT) makes it), unlinked at teardown."""
    made: list[Path] = []

    def make(size: int) -> str:
        key = f"/zoo_test_{uuid.uuid4().hex[:12]}"
        path = SHM / key[1:]
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(fd, size)
        os.close(fd)
        made.append(path)
        return key

    yield make
    for path in made:
        path.unlink(missing_ok=True)


def _write(key: str, offset: int, data: bytes) -> None:
    with open(SHM / key[1:], "r+b") as f:
        f.seek(offset)
        f.write(data)


def _read(key: str, offset: int, size: int) -> bytes:
    with open(SHM / key[1:], "rb") as f:
        f.seek(offset)
        return f.read(size)


@pytest.fixture
def regions(stub) -> Iterator[Callable[..., str]]:
    """A factory: regions(key, byte_size, offset=0) registers a uniquely named region
    over gRPC and returns its name; every one is unregistered at teardown."""
    names: list[str] = []

    def register(key: str, byte_size: int, offset: int = 0) -> str:
        name = f"region_{uuid.uuid4().hex[:8]}"
        stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(
                name=name, key=key, offset=offset, byte_size=byte_size
            )
        )
        names.append(name)
        return name

    yield register
    for name in names:
        stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name=name))


def _shared(parameters: Any, region: str, byte_size: int | None, offset: int | None = None) -> None:
    parameters["shared_memory_region"].string_param = region
    if byte_size is not None:
        parameters["shared_memory_byte_size"].int64_param = byte_size
    if offset is not None:
        parameters["shared_memory_offset"].int64_param = offset


def _images_request(model: str, region: str, offset: int = 0) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="images", datatype="FP32", shape=IMAGES.shape)
    _shared(tensor.parameters, region, IMAGES.nbytes, offset or None)
    return request


# --- registration -----------------------------------------------------------------


def test_regions_register_list_and_unregister(stub, shm_object) -> None:
    key = shm_object(8192)
    for name, offset in (("zoo_a", 0), ("zoo_b", 4096)):
        stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name=name, key=key, offset=offset, byte_size=4096)
        )
    try:
        everything = stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest())
        listed = {n: (r.key, r.offset, r.byte_size) for n, r in everything.regions.items()}
        assert listed.items() >= {"zoo_a": (key, 0, 4096), "zoo_b": (key, 4096, 4096)}.items()
        one = stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="zoo_b"))
        assert list(one.regions) == ["zoo_b"]
    finally:
        for name in ("zoo_a", "zoo_b"):
            stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name=name))
    with pytest.raises(grpc.RpcError) as error:
        stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="zoo_a"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Unable to find system shared memory region: 'zoo_a'" in error.value.details()
    # Unregistering what is not registered is no error, as in Triton.
    stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="zoo_a"))


def _registration_mistakes(key: str, link: str) -> dict[str, tuple[dict, grpc.StatusCode, str]]:
    return {
        "no such object": (
            {"key": "/zoo_test_nothing_here", "byte_size": 64},
            INVALID,
            "Unable to open shared memory region: '/zoo_test_nothing_here': No such file",
        ),
        "past the end": (
            {"key": key, "offset": 4000, "byte_size": 200},
            INVALID,
            r"offset 4000 \+ byte_size 200 runs past the end of .* \(4096 bytes\)",
        ),
        "not an object name": (
            {"key": "/../etc/passwd", "byte_size": 64},
            INVALID,
            "expected a POSIX shared memory object name",
        ),
        "a link": ({"key": link, "byte_size": 64}, INVALID, "Unable to open shared memory"),
        "no size": ({"key": key, "byte_size": 0}, INVALID, "byte_size > 0, got .* byte_size 0"),
        "no name": ({"name": "", "key": key, "byte_size": 64}, INVALID, "'region name' is"),
    }


@pytest.mark.parametrize(
    "case", ["no such object", "past the end", "not an object name", "a link", "no size", "no name"]
)
def test_a_registration_mistake_is_refused_with_the_reason(stub, shm_object, case) -> None:
    key = shm_object(4096)
    link = f"/zoo_test_link_{uuid.uuid4().hex[:8]}"
    (SHM / link[1:]).symlink_to(SHM / key[1:])
    try:
        fields, code, message = _registration_mistakes(key, link)[case]
        request = pb.SystemSharedMemoryRegisterRequest(**{"name": "zoo_mistake", **fields})
        with pytest.raises(grpc.RpcError) as error:
            stub.SystemSharedMemoryRegister(request)
    finally:
        (SHM / link[1:]).unlink()
    assert error.value.code() == code
    assert re.search(message, error.value.details()), error.value.details()
    status = stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest())
    assert "zoo_mistake" not in status.regions


def test_a_name_registered_twice_is_already_exists(stub, shm_object, regions) -> None:
    key = shm_object(64)
    name = regions(key, 64)
    with pytest.raises(grpc.RpcError) as error:
        stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name=name, key=key, byte_size=64)
        )
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert f"shared memory region '{name}' already in manager" in error.value.details()


def test_cuda_shared_memory_is_unimplemented_and_has_no_regions(stub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stub.CudaSharedMemoryRegister(
            pb.CudaSharedMemoryRegisterRequest(name="gpu", raw_handle=b"\0" * 64, byte_size=64)
        )
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "does not support CUDA shared memory" in error.value.details()
    assert not stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest()).regions
    stub.CudaSharedMemoryUnregister(pb.CudaSharedMemoryUnregisterRequest())  # a no-op
    metadata = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert "system_shared_memory" in metadata.extensions
    assert "cuda_shared_memory" not in metadata.extensions


# --- inference --------------------------------------------------------------------


def test_inputs_are_read_from_and_outputs_written_into_regions(
    stub, shm_object, regions, model_names, reference
) -> None:
    model = model_names[0]
    want = reference(model, IMAGES)
    in_key, out_key = shm_object(64 + IMAGES.nbytes), shm_object(4096 + 8192)
    _write(in_key, 64, IMAGES.tobytes())
    source, target = regions(in_key, 64 + IMAGES.nbytes), regions(out_key, 8192, offset=4096)
    request = _images_request(model, source, offset=64)
    first, second = list(want)
    _shared(request.outputs.add(name=first).parameters, target, 4096, 100)
    request.outputs.add(name=second)  # in the reply, as usual
    reply = stub.ModelInfer(request)
    # The region's output holds the model's answer; the reply says what it is.
    got = np.frombuffer(_read(out_key, 4096 + 100, want[first].nbytes), np.float32)
    np.testing.assert_allclose(got.reshape(want[first].shape), want[first], rtol=1e-5, atol=1e-6)
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [
        (first, "FP32", list(want[first].shape)),
        (second, "FP32", list(want[second].shape)),
    ]
    assert len(reply.raw_output_contents[0]) == 0  # by position, as Triton answers
    second_got = np.frombuffer(reply.raw_output_contents[1], np.float32)
    np.testing.assert_allclose(second_got.reshape(want[second].shape), want[second], rtol=1e-5)


def test_inputs_mix_regions_and_raw_contents(string_server, shm_object) -> None:
    """string_arithmetic's first input from a region (BYTES, serialized), its second as
    raw contents: raw_input_contents pair with the inputs not in shared memory."""
    from zoo.datatypes import encode_bytes

    numbers = np.array([[str(i) for i in range(16)]], object)
    serialized = encode_bytes(numbers)
    key = shm_object(len(serialized))
    _write(key, 0, serialized)
    with grpc.insecure_channel(string_server.address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name="text", key=key, byte_size=len(serialized))
        )
        try:
            request = build_infer_request(
                "string_arithmetic", {"INPUT0": numbers, "INPUT1": np.full((1, 16), "3", object)}
            )
            del request.raw_input_contents[0]
            _shared(request.inputs[0].parameters, "text", len(serialized))
            reply = decode_outputs(stub.ModelInfer(request))
        finally:
            stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="text"))
    assert [x.decode() for x in reply["OUTPUT0"].ravel()] == [str(i + 3) for i in range(16)]


def _inference_mistakes(model: str, region: str, output: str) -> dict[str, tuple[Any, str]]:
    unknown = _images_request(model, "zoo_nowhere")
    past = _images_request(model, region, offset=IMAGES.nbytes)
    size = _images_request(model, region)
    size.inputs[0].parameters["shared_memory_byte_size"].int64_param = IMAGES.nbytes - 4
    no_size = _images_request(model, region)
    del no_size.inputs[0].parameters["shared_memory_byte_size"]
    both = _images_request(model, region)
    both.inputs[0].contents.fp32_contents.extend([0.0])
    small = build_infer_request(model, {"images": IMAGES})
    _shared(small.outputs.add(name=output).parameters, region, 16)
    classified = build_infer_request(model, {"images": IMAGES})
    classified.outputs.add(name=output).parameters["classification"].int64_param = 3
    _shared(classified.outputs[0].parameters, region, 1024)
    negative = _images_request(model, region, offset=-8)
    return {
        "unknown region": (unknown, "Unable to find shared memory region: 'zoo_nowhere'"),
        "past the end": (past, r"Invalid offset \+ byte size for shared memory region"),
        "byte size": (
            size,
            rf"expected shared_memory_byte_size {IMAGES.nbytes} for FP32 \[2, 1, 28, 28\], "
            rf"got {IMAGES.nbytes - 4}",
        ),
        "no byte size": (no_size, "without 'shared_memory_byte_size'"),
        "contents too": (both, "unexpected 'content' provided when using shared memory"),
        "output too small": (
            small,
            rf"for output '{output}' \(16 bytes\) should be at least 80 bytes to hold the results",
        ),
        "classification": (classified, "can't set both 'shared_memory_region' and 'classif"),
        "negative offset": (negative, "expected shared_memory_offset and .* >= 0, got -8"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unknown region",
        "past the end",
        "byte size",
        "no byte size",
        "contents too",
        "output too small",
        "classification",
        "negative offset",
    ],
)
def test_a_shared_memory_mistake_is_invalid_argument_and_counted(
    stub, shm_object, regions, model_names, reference, case
) -> None:
    model = model_names[0]
    key = shm_object(IMAGES.nbytes)
    region = regions(key, IMAGES.nbytes)
    output = next(iter(reference(model, IMAGES[:1])))
    request, message = _inference_mistakes(model, region, output)[case]

    def failures() -> int:
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats
        return sum(s.inference_stats.fail.count for s in stats)

    before = failures()
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request)
    assert error.value.code() == INVALID
    assert re.search(message, error.value.details()), error.value.details()
    assert failures() == before + 1
    assert stub.ModelInfer(build_infer_request(model, {"images": IMAGES})).outputs


def test_an_object_truncated_after_registration_is_refused_not_a_crash(
    stub, shm_object, regions, model_names
) -> None:
    key = shm_object(IMAGES.nbytes)
    region = regions(key, IMAGES.nbytes)
    os.truncate(SHM / key[1:], 16)  # touching the mapping past here would be SIGBUS
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(_images_request(model_names[0], region))
    assert error.value.code() == INVALID
    assert "has been truncated since" in error.value.details()
    assert stub.ServerLive(pb.ServerLiveRequest()).live


def test_an_unregistered_region_is_gone_for_the_next_request(stub, shm_object, model_names) -> None:
    key = shm_object(IMAGES.nbytes)
    register = pb.SystemSharedMemoryRegisterRequest(name="zoo_gone", key=key, byte_size=64)
    stub.SystemSharedMemoryRegister(register)
    stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="zoo_gone"))
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(_images_request(model_names[0], "zoo_gone"))
    assert "Unable to find shared memory region: 'zoo_gone'" in error.value.details()


def test_no_shared_memory_refuses_registrations_and_serves_the_rest(
    start_zoo_server, tiny_repository: Path, shm_object
) -> None:
    server = start_zoo_server(tiny_repository, "--no-shared-memory")
    stub = GRPCInferenceServiceStub(grpc.insecure_channel(server.address))
    key = shm_object(IMAGES.nbytes)
    register = pb.SystemSharedMemoryRegisterRequest(name="off", key=key, byte_size=IMAGES.nbytes)
    with pytest.raises(grpc.RpcError) as refused:
        stub.SystemSharedMemoryRegister(register)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == (
        "cannot register shared memory region 'off': system shared memory is off on this "
        "server (--no-shared-memory); send tensors in the request"
    )
    url = f"{server.http_url}/v2/systemsharedmemory/region/off/register"
    code, reply = _http(url, {"key": key, "byte_size": IMAGES.nbytes})
    assert code == 400 and "system shared memory is off" in reply["error"]
    status = stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest())
    assert list(status.regions) == []
    extensions = stub.ServerMetadata(pb.ServerMetadataRequest()).extensions
    assert "system_shared_memory" not in extensions and "statistics" in extensions
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(_images_request("tiny_mlp", "off"))
    assert "Unable to find shared memory region: 'off'" in error.value.details()
    request = pb.ModelInferRequest(model_name="tiny_mlp", raw_input_contents=[IMAGES.tobytes()])
    request.inputs.add(name="images", datatype="FP32", shape=IMAGES.shape)
    assert len(stub.ModelInfer(request).raw_output_contents) == 2


# --- tritonclient -------------------------------------------------------------------


def _tritonclient(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(HERE / "tritonclient_extensions.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_tritonclient_grpc_shared_memory_utilities(
    zoo_server, served_repository: Path, model_names: list[str]
) -> None:
    seen = _tritonclient("shm", zoo_server.address, str(served_repository / model_names[0]))
    assert len(seen["status"]["regions"]) == 2
    assert seen["max_diff"] < 1e-5
    assert seen["replied"] == {n: ["FP32", s] for n, s in seen["want_shapes"].items()}
    assert seen["raw_contents"] == [0, 0]
    assert seen["too_small"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "should be at least" in seen["too_small"]["message"]
    assert list(seen["after_unregister"]["regions"]) == [
        n for n in seen["status"]["regions"] if n.startswith("out_")
    ]


def test_tritonclient_grpc_strings_in_shared_memory(string_server) -> None:
    seen = _tritonclient("shm_bytes", string_server.address)
    assert seen["got"] == seen["sent"] == ["one", "twö", "", "three"]
    assert seen["replied"] == "BYTES"


@pytest.fixture
def http_client(zoo_server) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{zoo_server.http_port}")
    yield client
    client.close()


def test_tritonclient_http_shared_memory_utilities(
    http_client, zoo_server, model_names, reference
) -> None:
    model = model_names[0]
    want = reference(model, IMAGES)
    tag = uuid.uuid4().hex[:8]
    out_size = sum(a.nbytes for a in want.values())
    handles = [
        triton_shm.create_shared_memory_region(f"in_{tag}", f"/zoo_h_in_{tag}", IMAGES.nbytes),
        triton_shm.create_shared_memory_region(f"out_{tag}", f"/zoo_h_out_{tag}", out_size),
    ]
    try:
        triton_shm.set_shared_memory_region(handles[0], [IMAGES])
        http_client.register_system_shared_memory(f"in_{tag}", f"/zoo_h_in_{tag}", IMAGES.nbytes)
        http_client.register_system_shared_memory(f"out_{tag}", f"/zoo_h_out_{tag}", out_size)
        status = http_client.get_system_shared_memory_status(f"in_{tag}")
        assert status == [
            {"name": f"in_{tag}", "key": f"/zoo_h_in_{tag}", "offset": 0,
             "byte_size": IMAGES.nbytes}
        ]  # fmt: skip
        tensor = triton_http.InferInput("images", list(IMAGES.shape), "FP32")
        tensor.set_shared_memory(f"in_{tag}", IMAGES.nbytes)
        outputs, offset = [], 0
        for name, array in want.items():
            output = triton_http.InferRequestedOutput(name, binary_data=True)
            output.set_shared_memory(f"out_{tag}", array.nbytes, offset)
            outputs.append(output)
            offset += array.nbytes
        result = http_client.infer(model, [tensor], outputs=outputs)
        offset = 0
        for name, array in want.items():
            got = triton_shm.get_contents_as_numpy(handles[1], np.float32, array.shape, offset)
            np.testing.assert_allclose(got, array, rtol=1e-5, atol=1e-6)
            offset += array.nbytes
            reply = result.get_output(name)
            assert reply["shape"] == list(array.shape) and "data" not in reply
        with pytest.raises(InferenceServerException, match="already in manager"):
            http_client.register_system_shared_memory(f"in_{tag}", f"/zoo_h_in_{tag}", 64)
        http_client.unregister_system_shared_memory(f"in_{tag}")
        names = [r["name"] for r in http_client.get_system_shared_memory_status()]
        assert f"out_{tag}" in names and f"in_{tag}" not in names
        http_client.unregister_system_shared_memory()
        assert http_client.get_system_shared_memory_status() == []
    finally:
        for handle in handles:
            triton_shm.destroy_shared_memory_region(handle)


def _http(url: str, body: Any = None, method: str = "POST") -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("systemsharedmemory/region/r/register", {"byte_size": 64}, 400, "has no 'key' field"),
        ("systemsharedmemory/region/r/register", {"key": "/x"}, 400, "has no 'byte_size'"),
        (
            "systemsharedmemory/region/r/register",
            {"key": "/x", "byte_size": -1},
            400,
            "'byte_size': expected an integer >= 0",
        ),
        ("systemsharedmemory/region/nope/status", None, 404, "Unable to find system shared"),
        ("cudasharedmemory/region/g/register", {"raw_handle": {"b64": ""}}, 501, "CUDA shared"),
        ("cudasharedmemory/region/g/status", None, 404, "Unable to find cuda shared memory"),
    ],
)
def test_rest_shared_memory_mistakes_have_status_codes(
    zoo_server, path: str, body: Any, status: int, message: str
) -> None:
    method = "GET" if path.endswith("status") else "POST"
    code, reply = _http(f"{zoo_server.http_url}/v2/{path}", body, method)
    assert code == status and message in reply["error"], reply


def test_rest_cuda_shared_memory_has_no_regions(zoo_server) -> None:
    assert _http(f"{zoo_server.http_url}/v2/cudasharedmemory/status", method="GET") == (200, [])
    assert _http(f"{zoo_server.http_url}/v2/cudasharedmemory/unregister", {}) == (200, {})


def test_rest_infer_refuses_a_shared_output_also_asked_as_binary(
    zoo_server, shm_object, regions, model_names, reference
) -> None:
    key = shm_object(4096)
    region = regions(key, 4096)
    output = next(iter(reference(model_names[0], IMAGES[:1])))
    body = {
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 1, 28, 28],
                    "data": [0.0] * 784}],
        "outputs": [{"name": output, "parameters": {"shared_memory_region": region,
                     "shared_memory_byte_size": 4096, "binary_data": True}}],
    }  # fmt: skip
    code, reply = _http(f"{zoo_server.http_url}/v2/models/{model_names[0]}/infer", body)
    assert code == 400
    assert "Output can't set both 'shared_memory_region' and 'binary_data'" in reply["error"]


# --- perf_analyzer ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "protocol", "flags"),
    [
        ("images", "grpc", ["-b", "2"]),
        ("images", "http", []),
        ("strings", "grpc", ["--shape", "INPUT0:4", "--output-shared-memory-size", "4096"]),
    ],
)
def test_perf_analyzer_with_system_shared_memory(
    perf_analyzer: Path,
    zoo_server,
    string_server,
    model_names: list[str],
    which: str,
    protocol: str,
    flags: list[str],
    tmp_path: Path,
) -> None:
    server, model = (zoo_server, model_names[0])
    if which == "strings":
        server, model = string_server, "string_identity"
    url = server.address if protocol == "grpc" else f"127.0.0.1:{server.http_port}"
    report = tmp_path / "report.csv"
    command = [str(perf_analyzer), "-m", model, "-u", url, "-i", protocol]
    command += ["--shared-memory", "system", *flags, "--concurrency-range", "2"]
    command += ["-f", str(report), "--measurement-mode", "count_windows"]
    command += ["--measurement-request-count", "50", "-s", "100", "--max-trials", "5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (row,) = list(csv.DictReader(report.open()))
    assert float(row["Inferences/Second"]) > 0
    assert int(row["Server Compute Infer"]) > 0


# --- several worker processes ----------------------------------------------------


def _worker_stubs(log: str) -> list[tuple[grpc.Channel, GRPCInferenceServiceStub]]:
    """A stub on each worker's own Unix socket (a call there is answered by that worker)."""
    runtime = re.search(r"workers share (\S+)", log)
    assert runtime, log[-2000:]
    sockets = sorted((Path(runtime[1]) / "sockets").glob("worker-*.sock"))
    channels = [grpc.insecure_channel(f"unix:{path}") for path in sockets]
    return [(c, GRPCInferenceServiceStub(c)) for c in channels]


def _regions_of_each_worker(log: str) -> list[list[str]]:
    answers = []
    for channel, stub in _worker_stubs(log):
        with channel:
            status = stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(), timeout=30)
            answers.append(sorted(status.regions))
    return answers


def _workers(pid: int) -> list[int]:
    """The worker processes of supervisor `pid` (children started by multiprocessing)."""
    workers = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text(errors="replace"):
                workers.append(int(child))
    return workers


def _wait_for(condition: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_registration_reaches_every_worker_and_a_restarted_one(
    start_zoo_server, tiny_repository: Path, shm_object
) -> None:
    server = start_zoo_server(tiny_repository, "--processes", "2")
    key = shm_object(IMAGES.nbytes)
    _write(key, 0, IMAGES.tobytes())
    with grpc.insecure_channel(server.address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name="images", key=key, byte_size=IMAGES.nbytes)
        )
    assert _regions_of_each_worker(server.log()) == [["images"], ["images"]]
    # Each worker reads the region itself.
    answers = []
    for channel, stub in _worker_stubs(server.log()):
        with channel:
            reply = stub.ModelInfer(_images_request("tiny_mlp", "images"), timeout=30)
            answers.append(decode_outputs(reply)["logits"])
    np.testing.assert_array_equal(answers[0], answers[1])

    # A worker that dies is restarted, and registers what it was told before.
    os.kill(_workers(server.process.pid)[0], signal.SIGKILL)
    _wait_for(lambda: re.search(r"worker \d restarted", server.log()), "the worker's restart")
    assert _regions_of_each_worker(server.log()) == [["images"], ["images"]]

    with grpc.insecure_channel(server.address) as channel:
        GRPCInferenceServiceStub(channel).SystemSharedMemoryUnregister(
            pb.SystemSharedMemoryUnregisterRequest()
        )
    assert _regions_of_each_worker(server.log()) == [[], []]
