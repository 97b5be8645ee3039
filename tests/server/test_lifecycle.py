"""Server lifecycle against real processes: SIGTERM with grace, repository polling,
model control, queue limits and deadlines, the CLI's one-line errors, JSON logs."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from zoo.repository import config_for_card, read_card, write_model_config

ROOT = Path(__file__).resolve().parents[2]
SLOW_BATCH = 64  # ~0.3-0.6 s per call of the slow model on 2 cores


@pytest.fixture(scope="module")
def slow_repository(tmp_path_factory: pytest.TempPathFactory, export_model) -> Path:
    """One slow model, one session call at a time (so a second request queues), whose
    queue holds at most 2 requests."""
    repository = tmp_path_factory.mktemp("slow")
    model_dir = export_model(repository, "tiny_slow")
    config = config_for_card(read_card(model_dir), max_batch_size=64, max_queue_size=2)
    config.instance_group.add(count=1)
    write_model_config(model_dir, config)
    return repository


def _stub(address: str) -> GRPCInferenceServiceStub:
    return GRPCInferenceServiceStub(grpc.insecure_channel(address))


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_sigterm_turns_health_off_refuses_new_requests_finishes_in_flight_ones_exits_0(
    start_zoo_server, slow_repository: Path, request_for, random_images
) -> None:
    # Three in flight at once: more inference threads than the model's two session calls.
    server = start_zoo_server(slow_repository, "--grace", "20", "--infer-threads", "4")
    channel = grpc.insecure_channel(server.address)
    stub = GRPCInferenceServiceStub(channel)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    request = request_for("tiny_slow", random_images(SLOW_BATCH))
    with ThreadPoolExecutor(3) as pool:
        in_flight = [pool.submit(stub.ModelInfer, request, timeout=60) for _ in range(3)]
        _wait_for(lambda: _in_flight(server) == 3)
        server.process.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()  # a watcher is an RPC in flight too: let the server go
        # Health turns first, the port closes a moment later (the queue is full meanwhile).
        small = request_for("tiny_slow", random_images(1))
        _wait_for(lambda: _code(lambda: stub.ModelInfer(small)) == grpc.StatusCode.UNAVAILABLE)
        replies = [f.result() for f in in_flight]
    assert all(len(r.outputs) == 2 for r in replies)
    assert server.process.wait(30) == 0
    assert "SIGTERM: stopping" in server.log()


def _in_flight(server) -> float:
    """Requests the server is serving now, from its metrics endpoint."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    prefix = "zoo_inference_in_flight{"
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(prefix))


def test_past_the_queue_limit_requests_get_resource_exhausted_and_others_are_served(
    start_zoo_server, slow_repository: Path, request_for, random_images
) -> None:
    # Requests reach the model's queue only on an inference thread: more of them than
    # the queue and the two session calls hold.
    stub = _stub(start_zoo_server(slow_repository, "--infer-threads", "8").address)
    request = request_for("tiny_slow", random_images(SLOW_BATCH))
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: _code(lambda: stub.ModelInfer(request)), range(8)))
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert grpc.StatusCode.OK in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert _code(lambda: stub.ModelInfer(request_for("tiny_slow", random_images(1)))) == (
        grpc.StatusCode.OK
    )


def test_a_request_whose_deadline_passes_in_the_queue_is_not_computed(
    start_zoo_server, slow_repository: Path, request_for, random_images
) -> None:
    server = start_zoo_server(slow_repository)
    stub = _stub(server.address)
    big = request_for("tiny_slow", random_images(SLOW_BATCH))
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(stub.ModelInfer, big)
        _wait_for(lambda: _in_flight(server) >= 1)
        late = _code(
            lambda: stub.ModelInfer(request_for("tiny_slow", random_images(3)), timeout=0.05)
        )
        running.result()
    assert late == grpc.StatusCode.DEADLINE_EXCEEDED
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="tiny_slow")).model_stats
    assert 3 not in {b.batch_size for b in stats.batch_stats}


def test_polling_swaps_versions_without_failing_requests_and_reports_broken_models(
    start_zoo_server,
    tiny_repository: Path,
    tmp_path: Path,
    export_model,
    request_for,
    random_images,
) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(tiny_repository / "tiny_mlp", repository / "tiny_mlp")
    server = start_zoo_server(repository, "--poll-interval", "0.2")
    stub = _stub(server.address)
    errors: list[grpc.StatusCode] = []
    stop = threading.Event()

    def hammer() -> None:
        request = request_for("tiny_mlp", random_images(2))
        while not stop.is_set():
            code = _code(lambda: stub.ModelInfer(request))
            if code != grpc.StatusCode.OK:
                errors.append(code)

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        export_model(repository, "tiny_mlp", version=2, seed=1)
        _wait_for(lambda: _versions(stub, "tiny_mlp") == ["2"])
    finally:
        stop.set()
        worker.join()
    assert errors == []
    reply = stub.ModelInfer(request_for("tiny_mlp", random_images(1)))
    assert reply.model_version == "2"
    index = {
        (m.name, m.version): m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
    }
    assert index[("tiny_mlp", "1")].state == "UNAVAILABLE"
    assert index[("tiny_mlp", "1")].reason == "unloaded"

    broken = repository / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "model.onnx").write_bytes(b"not an onnx file")
    card = read_card(repository / "tiny_mlp").model_copy(update={"name": "broken"})
    write_model_config(broken, config_for_card(card))
    # Listed by name as soon as its folder is there; with a state once a poll tried it.
    _wait_for(lambda: any(m.name == "broken" and m.state for m in _index(stub)))
    (entry,) = [m for m in _index(stub) if m.name == "broken"]
    assert entry.state == "UNAVAILABLE" and "onnxruntime cannot load it" in entry.reason
    assert _code(lambda: stub.ModelInfer(request_for("broken", random_images(1)))) == (
        grpc.StatusCode.UNAVAILABLE
    )
    time.sleep(1.0)  # five more polls: unchanged files are not loaded again
    assert server.log().count("model broken version 1 failed to load") == 1

    shutil.rmtree(repository / "tiny_mlp")
    _wait_for(lambda: not stub.ModelReady(pb.ModelReadyRequest(name="tiny_mlp")).ready)
    assert _code(lambda: stub.ModelInfer(request_for("tiny_mlp", random_images(1)))) == (
        grpc.StatusCode.NOT_FOUND
    )


def _versions(stub: GRPCInferenceServiceStub, name: str) -> list[str]:
    try:
        return list(stub.ModelMetadata(pb.ModelMetadataRequest(name=name)).versions)
    except grpc.RpcError:
        return []


def _index(stub: GRPCInferenceServiceStub) -> list[pb.RepositoryIndexResponse.ModelIndex]:
    return list(stub.RepositoryIndex(pb.RepositoryIndexRequest()).models)


def test_model_control_unloads_and_loads_with_health_following(
    start_zoo_server, tiny_repository: Path, request_for, random_images
) -> None:
    server = start_zoo_server(tiny_repository, "--allow-model-control")
    channel = grpc.insecure_channel(server.address)
    stub, health = GRPCInferenceServiceStub(channel), health_pb2_grpc.HealthStub(channel)

    def model_health() -> int:
        return health.Check(health_pb2.HealthCheckRequest(service="tiny_cnn")).status

    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tiny_cnn"))
    assert not stub.ModelReady(pb.ModelReadyRequest(name="tiny_cnn")).ready
    assert model_health() == health_pb2.HealthCheckResponse.NOT_SERVING
    request = request_for("tiny_cnn", random_images(1))
    assert _code(lambda: stub.ModelInfer(request)) == grpc.StatusCode.UNAVAILABLE
    assert stub.ModelReady(pb.ModelReadyRequest(name="tiny_mlp")).ready
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny_cnn"))
    assert model_health() == health_pb2.HealthCheckResponse.SERVING
    assert len(stub.ModelInfer(request).outputs) == 2
    missing = pb.RepositoryModelLoadRequest(model_name="nope")
    assert _code(lambda: stub.RepositoryModelLoad(missing)) == grpc.StatusCode.NOT_FOUND
    outside = pb.RepositoryModelLoadRequest(model_name=f"../{tiny_repository.name}/tiny_mlp")
    assert _code(lambda: stub.RepositoryModelLoad(outside)) == grpc.StatusCode.INVALID_ARGUMENT


def _serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--repository: Field required"),
        (("--repository", "/nonexistent", "--metrics-port", "-1"), "is not a directory"),
        (("--repository", ".", "--device", "cuda"), "--device cuda: onnxruntime has no"),
        (("--repository", ".", "--port", "70000"), "--port: Input should be less than"),
    ],
)
def test_cli_mistakes_exit_2_with_one_line(args: tuple[str, ...], message: str) -> None:
    done = _serve(*args)
    assert done.returncode == 2
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("zoo serve: error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def test_a_port_in_use_is_one_line(zoo_server) -> None:
    port = zoo_server.address.rsplit(":", 1)[1]
    done = _serve("--repository", ".", "--host", "127.0.0.1", "--port", port)
    assert done.returncode == 2 and "(in use?)" in done.stderr, done.stderr


def test_json_logs(start_zoo_server, tiny_repository: Path) -> None:
    server = start_zoo_server(tiny_repository, "--log-format", "json")
    assert server.stop() == 0
    records = [json.loads(line) for line in server.log().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any("loaded tiny_mlp version 1" in r["message"] for r in records)


def test_random_bytes_as_perf_analyzer_sends_are_served(
    zoo_server, request_for, model_names: list[str]
) -> None:
    # NaN and Inf in, a reply out: the server does not judge the values.
    noise = np.frombuffer(np.random.default_rng(0).bytes(784 * 4 * 2), "<f4").reshape(2, 1, 28, 28)
    reply = _stub(zoo_server.address).ModelInfer(request_for(model_names[0], noise))
    assert [list(o.shape) for o in reply.outputs] == [[2, 10], [2, 10]]


def test_a_removed_model_finishes_its_in_flight_requests(
    start_zoo_server, slow_repository: Path, tmp_path: Path, request_for, random_images
) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(slow_repository, repository)
    server = start_zoo_server(repository, "--poll-interval", "0.1")
    stub = _stub(server.address)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(stub.ModelInfer, request_for("tiny_slow", random_images(SLOW_BATCH)))
        _wait_for(lambda: _in_flight(server) == 1)
        shutil.rmtree(repository / "tiny_slow")
        _wait_for(lambda: not stub.ModelReady(pb.ModelReadyRequest(name="tiny_slow")).ready)
        assert len(running.result().outputs) == 2


def test_a_request_cancelled_while_queued_is_not_computed(
    start_zoo_server, slow_repository: Path, request_for, random_images
) -> None:
    server = start_zoo_server(slow_repository)
    stub = _stub(server.address)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(stub.ModelInfer, request_for("tiny_slow", random_images(SLOW_BATCH)))
        _wait_for(lambda: _in_flight(server) == 1)
        queued = stub.ModelInfer.future(request_for("tiny_slow", random_images(5)))
        _wait_for(lambda: _in_flight(server) == 2)
        queued.cancel()
        running.result()
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="tiny_slow")).model_stats
    assert [b.batch_size for b in stats.batch_stats] == [SLOW_BATCH]
    assert "Traceback" not in server.log()


def test_a_stream_cancelled_while_its_request_is_queued_computes_nothing_more(
    start_zoo_server, slow_repository: Path, request_for, random_images
) -> None:
    server = start_zoo_server(slow_repository)
    stub = _stub(server.address)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(stub.ModelInfer, request_for("tiny_slow", random_images(SLOW_BATCH)))
        _wait_for(lambda: _in_flight(server) == 1)
        stream = stub.ModelStreamInfer(iter([request_for("tiny_slow", random_images(5))]))
        _wait_for(lambda: _in_flight(server) == 2)
        stream.cancel()
        running.result()
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="tiny_slow")).model_stats
    assert [b.batch_size for b in stats.batch_stats] == [SLOW_BATCH]
    assert "Traceback" not in server.log()


def _thread_count(server) -> int:
    return len(list(Path(f"/proc/{server.process.pid}/task").iterdir()))


def test_garbage_bytes_are_invalid_argument_unary_and_in_streams(
    start_zoo_server, tiny_repository: Path, request_for, random_images
) -> None:
    server = start_zoo_server(tiny_repository)
    channel = grpc.insecure_channel(server.address)
    for method in ("ModelInfer", "ModelMetadata", "RepositoryIndex"):
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\xff\xff\xff", timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cannot parse the request as inference." in caught.value.details()
    stream = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    good = request_for("tiny_mlp", random_images(2)).SerializeToString()
    first, second = list(stream(iter([b"\xff\xff\xff", good]), timeout=10))
    assert "cannot parse the request" in first.error_message
    assert not second.error_message and len(second.infer_response.outputs) == 2
    assert "Traceback" not in server.log()


def test_a_huge_name_is_not_found_with_a_short_message(
    start_zoo_server, tiny_repository: Path, request_for, random_images
) -> None:
    stub = _stub(start_zoo_server(tiny_repository).address)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request_for("x" * 100_000, random_images(1)), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(caught.value.details()) < 2000 and "characters)" in caught.value.details()


def test_client_mistakes_log_at_most_a_line_a_second(
    start_zoo_server, tiny_repository: Path, request_for, random_images
) -> None:
    server = start_zoo_server(tiny_repository)
    stub = _stub(server.address)
    started = time.monotonic()
    for _ in range(300):
        assert _code(lambda: stub.ModelInfer(request_for("nope", random_images(1)))) == (
            grpc.StatusCode.NOT_FOUND
        )
    seconds = time.monotonic() - started
    assert server.stop() == 0
    lines = [ln for ln in server.log().splitlines() if "ModelInfer: NOT_FOUND" in ln]
    assert 1 <= len(lines) <= seconds + 2


def test_past_max_in_flight_rpcs_are_refused_at_once(
    start_zoo_server, slow_repository: Path, request_for, random_images
) -> None:
    server = start_zoo_server(slow_repository, "--max-in-flight", "2")
    stub = _stub(server.address)
    with ThreadPoolExecutor(2) as pool:
        busy = [
            pool.submit(stub.ModelInfer, request_for("tiny_slow", random_images(SLOW_BATCH)))
            for _ in range(2)
        ]
        _wait_for(lambda: _in_flight(server) == 2)
        refused = _code(lambda: stub.ModelInfer(request_for("tiny_slow", random_images(1))))
        assert [len(f.result().outputs) for f in busy] == [2, 2]
    assert refused == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _code(lambda: stub.ModelInfer(request_for("tiny_slow", random_images(1)))) == (
        grpc.StatusCode.OK
    )


def test_a_health_watch_ends_at_sigterm_and_the_server_exits_0(
    start_zoo_server, tiny_repository: Path
) -> None:
    server = start_zoo_server(tiny_repository, "--grace", "600")
    channel = grpc.insecure_channel(server.address)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    server.process.send_signal(signal.SIGTERM)
    # The stream ends by itself with OK: it does not hold the stop for the grace period.
    assert [r.status for r in watch] == [health_pb2.HealthCheckResponse.NOT_SERVING]
    assert watch.code() == grpc.StatusCode.OK
    assert server.process.wait(60) == 0


def test_model_control_takes_a_json_config_and_refuses_file_parameters(
    start_zoo_server, tiny_repository: Path, request_for, random_images
) -> None:
    stub = _stub(start_zoo_server(tiny_repository, "--allow-model-control").address)

    def load(**parameters: pb.ModelRepositoryParameter) -> grpc.StatusCode:
        request = pb.RepositoryModelLoadRequest(model_name="tiny_mlp", parameters=parameters)
        return _code(lambda: stub.RepositoryModelLoad(request))

    def max_batch_size() -> int:
        return stub.ModelConfig(pb.ModelConfigRequest(name="tiny_mlp")).config.max_batch_size

    bad = {
        "config": pb.ModelRepositoryParameter(string_param="{not json"),
        "file:1/model.onnx": pb.ModelRepositoryParameter(bytes_param=b"onnx"),
    }
    for name, parameter in bad.items():
        assert load(**{name: parameter}) == grpc.StatusCode.INVALID_ARGUMENT
        # Triton's wording first: its example clients look for "failed to load".
        request = pb.RepositoryModelLoadRequest(model_name="tiny_mlp", parameters={name: parameter})
        with pytest.raises(grpc.RpcError) as refused:
            stub.RepositoryModelLoad(request)
        assert refused.value.details().startswith("failed to load 'tiny_mlp': ")
    assert load(config=pb.ModelRepositoryParameter(string_param='{"max_batch_size": 4}')) == (
        grpc.StatusCode.OK
    )
    assert max_batch_size() == 4
    eight = request_for("tiny_mlp", random_images(8))
    assert _code(lambda: stub.ModelInfer(eight)) == grpc.StatusCode.INVALID_ARGUMENT
    assert load() == grpc.StatusCode.OK  # a plain load goes back to config.pbtxt
    assert max_batch_size() == 64 and _code(lambda: stub.ModelInfer(eight)) == grpc.StatusCode.OK


def test_a_load_that_fails_says_so_while_the_previous_load_serves_on(
    start_zoo_server, tiny_repository: Path, tmp_path: Path, request_for, random_images
) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(tiny_repository / "tiny_mlp", repository / "tiny_mlp")
    stub = _stub(start_zoo_server(repository, "--allow-model-control").address)
    request = request_for("tiny_mlp", random_images(2))
    before = stub.ModelInfer(request)
    load = pb.RepositoryModelLoadRequest(model_name="tiny_mlp")

    def refusal() -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as refused:
            stub.RepositoryModelLoad(load)
        return refused.value

    model_file = repository / "tiny_mlp" / "1" / "model.onnx"
    good_model = model_file.read_bytes()
    model_file.write_bytes(b"not an onnx file")
    error = refusal()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details().startswith("failed to load 'tiny_mlp': 1: serving the previous load")
    assert "onnxruntime cannot load it" in error.details()
    assert stub.ModelInfer(request).raw_output_contents == before.raw_output_contents

    model_file.write_bytes(good_model)
    config = repository / "tiny_mlp" / "config.pbtxt"
    good_config = config.read_text()
    config.write_text("max_batch_size: nonsense")
    error = refusal()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "tiny_mlp/config.pbtxt" in error.details()
    assert error.details().endswith("(the previous load serves on: version 1)")
    assert stub.ModelInfer(request).raw_output_contents == before.raw_output_contents

    config.write_text(good_config)
    assert _code(lambda: stub.RepositoryModelLoad(load)) == grpc.StatusCode.OK


def test_the_index_lists_a_model_folder_added_since_the_start_before_it_is_loaded(
    start_zoo_server, tiny_repository: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(tiny_repository / "tiny_mlp", repository / "tiny_mlp")
    stub = _stub(start_zoo_server(repository, "--allow-model-control").address)
    shutil.copytree(tiny_repository / "tiny_cnn", repository / "tiny_cnn")

    def index(ready: bool = False) -> list[tuple[str, str, str]]:
        reply = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=ready))
        return [(m.name, m.version, m.state) for m in reply.models]

    # Loadable, not loaded: a name alone, as Triton lists it; not among the ready ones.
    assert index() == [("tiny_cnn", "", ""), ("tiny_mlp", "1", "READY")]
    assert index(ready=True) == [("tiny_mlp", "1", "READY")]
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny_cnn"))
    assert index() == [("tiny_cnn", "1", "READY"), ("tiny_mlp", "1", "READY")]


def test_idle_connections_to_the_metrics_port_take_a_bounded_number_of_threads(
    start_zoo_server, tiny_repository: Path
) -> None:
    server = start_zoo_server(tiny_repository)
    before = _thread_count(server)
    idle = [socket.create_connection(("127.0.0.1", server.metrics_port)) for _ in range(100)]
    try:
        # Each connection is accepted (and then held or closed) by the server's loop.
        _wait_for(lambda: _thread_count(server) >= before + 1)
        assert _thread_count(server) <= before + 8
    finally:
        for connection in idle:
            connection.close()
    _wait_for(lambda: _in_flight(server) == 0)  # scrapes are answered again


def test_a_taken_metrics_port_is_one_line(zoo_server, tmp_path: Path) -> None:
    taken = _serve(
        "--repository", str(tmp_path), "--host", "127.0.0.1", "--port", "0",
        "--metrics-port", str(zoo_server.metrics_port),
    )  # fmt: skip
    assert taken.returncode == 2 and "Traceback" not in taken.stderr
    assert f"cannot serve metrics on 127.0.0.1:{zoo_server.metrics_port}" in taken.stderr


def test_an_empty_repository_is_warned_of(start_zoo_server, tmp_path: Path) -> None:
    server = start_zoo_server(tmp_path)
    assert server.stop() == 0
    assert "holds no model folder" in server.log()
