"""The server's protocol through our own stubs, against a real server process."""

from __future__ import annotations

import re
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from zoo.card import CARD_METADATA_KEY, ModelCard


def test_server_is_live_ready_and_lists_its_extensions(stub: GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "modelzoo"
    assert {"statistics", "model_repository", "model_configuration"} <= set(meta.extensions)


def test_every_model_is_ready_and_described_as_perf_analyzer_needs(
    stub: GRPCInferenceServiceStub, model_names: list[str]
) -> None:
    for name in model_names:
        assert stub.ModelReady(pb.ModelReadyRequest(name=name)).ready
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=name))
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            ("images", "FP32", [-1, 1, 28, 28])
        ]
        assert [t.name for t in meta.outputs] == ["logits", "probabilities"]
        assert all(v.isdigit() for v in meta.versions)
        config = stub.ModelConfig(pb.ModelConfigRequest(name=name)).config
        assert config.max_batch_size > 0
        assert list(config.input[0].dims) == [1, 28, 28]
        card = ModelCard.from_json(config.parameters[CARD_METADATA_KEY].string_value)
        assert card.name == name


def test_predictions_equal_in_process_onnxruntime(
    stub: GRPCInferenceServiceStub,
    model_names: list[str],
    request_for,
    decode,
    reference,
    random_images,
) -> None:
    x = random_images(5)
    for name in model_names:
        response = stub.ModelInfer(request_for(name, x, id=f"req-{name}"))
        assert response.id == f"req-{name}"
        assert response.model_name == name and response.model_version.isdigit()
        got, want = decode(response), reference(name, x)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)


def test_typed_contents_give_the_same_answer_as_raw(
    stub: GRPCInferenceServiceStub, model_names: list[str], request_for, decode, random_images
) -> None:
    x = random_images(2, seed=1)
    typed = pb.ModelInferRequest(model_name=model_names[0])
    tensor = typed.inputs.add(name="images", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    raw = stub.ModelInfer(request_for(model_names[0], x))
    assert decode(stub.ModelInfer(typed))["logits"].tolist() == (decode(raw)["logits"].tolist())


def test_requested_outputs_are_honoured_and_unknown_parameters_ignored(
    stub: GRPCInferenceServiceStub, model_names: list[str], request_for, decode, random_images
) -> None:
    request = request_for(model_names[0], random_images(3))
    request.outputs.add(name="probabilities")
    request.parameters["some_future_option"].string_param = "ignored"
    response = stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["probabilities"]
    np.testing.assert_allclose(decode(response)["probabilities"].sum(axis=1), 1, rtol=1e-5)


def _bad_requests(
    model: str, request_for, random_images
) -> dict[str, tuple[pb.ModelInferRequest, grpc.StatusCode, str]]:
    x = random_images(2)
    unknown_version = request_for(model, x, model_version="999")
    wrong_name = request_for(model, x)
    wrong_name.inputs[0].name = "pixels"
    wrong_type = request_for(model, x)
    wrong_type.inputs[0].datatype = "FP64"
    wrong_shape = request_for(model, x)
    wrong_shape.inputs[0].shape[:] = [2, 784]
    short = request_for(model, x)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    both = request_for(model, x)
    both.inputs[0].contents.fp32_contents.extend([0.0])
    too_big = request_for(model, random_images(1000))
    unknown_output = request_for(model, x)
    unknown_output.outputs.add(name="embedding")
    nothing = pb.ModelInferRequest(model_name=model)
    sequence = request_for(model, x)
    sequence.parameters["sequence_id"].int64_param = 7
    priority = request_for(model, x)
    priority.parameters["priority"].int64_param = 2
    shared = request_for(model, x)
    shared.outputs.add(name="probabilities").parameters["shared_memory_region"].string_param = "r"
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    return {
        "unknown model": (
            request_for("nope", x),
            grpc.StatusCode.NOT_FOUND,
            "Request for unknown model",
        ),
        "unknown version": (unknown_version, grpc.StatusCode.NOT_FOUND, "no version '999'"),
        "input name": (wrong_name, invalid, "unknown input 'pixels'"),
        "datatype": (wrong_type, invalid, "expected datatype FP32, got 'FP64'"),
        "shape": (wrong_shape, invalid, r"expected shape \[-1, 1, 28, 28\], got \[2, 784\]"),
        "byte size": (short, invalid, "expected 6272 bytes of raw contents, got 6268"),
        "raw and typed": (
            both,
            invalid,
            "contents field must not be specified when using raw_input_contents for 'images': "
            "inputs carry both",
        ),
        "sequence id": (sequence, invalid, "'sequence_id': model .* has no sequence batching"),
        "priority": (priority, invalid, "'priority': model .* has no priority levels .*got 2"),
        "shared memory": (shared, invalid, "Unable to find shared memory region: 'r'"),
        "batch too big": (too_big, invalid, "batch size 1000 outside 1.."),
        "output name": (unknown_output, invalid, "unknown output 'embedding'"),
        "no inputs": (nothing, invalid, r"missing inputs \['images'\]"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unknown model",
        "unknown version",
        "input name",
        "datatype",
        "shape",
        "byte size",
        "raw and typed",
        "batch too big",
        "output name",
        "no inputs",
        "sequence id",
        "priority",
        "shared memory",
    ],
)
def test_bad_input_gets_a_precise_status_and_the_server_keeps_serving(
    stub: GRPCInferenceServiceStub, model_names: list[str], case: str, request_for, random_images
) -> None:
    request, code, message = _bad_requests(model_names[0], request_for, random_images)[case]
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request)
    assert error.value.code() == code
    assert re.search(message, error.value.details()), error.value.details()
    assert len(stub.ModelInfer(request_for(model_names[0], random_images(1))).outputs) == 2


def test_metadata_of_an_unknown_model_is_not_found(stub: GRPCInferenceServiceStub) -> None:
    for call, request in [
        (stub.ModelMetadata, pb.ModelMetadataRequest(name="nope")),
        (stub.ModelConfig, pb.ModelConfigRequest(name="nope")),
        (stub.ModelStatistics, pb.ModelStatisticsRequest(name="nope")),
    ]:
        with pytest.raises(grpc.RpcError) as error:
            call(request)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert not stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready


def test_statistics_count_every_request(
    stub: GRPCInferenceServiceStub, model_names: list[str], request_for, random_images
) -> None:
    name = model_names[-1]

    def stats() -> pb.ModelStatistics:
        (model,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name=name)).model_stats
        return model

    before = stats()
    for _ in range(3):
        stub.ModelInfer(request_for(name, random_images(2)))
    after = stats()
    assert after.version.isdigit()
    assert after.inference_stats.success.count == before.inference_stats.success.count + 3
    assert after.inference_count == before.inference_count + 6
    assert after.execution_count >= before.execution_count + 1
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert {b.batch_size for b in after.batch_stats} >= {2}
    everything = stub.ModelStatistics(pb.ModelStatisticsRequest()).model_stats
    assert {m.name for m in everything} == set(model_names)


def test_repository_index_lists_every_model_ready(
    stub: GRPCInferenceServiceStub, model_names: list[str]
) -> None:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models
    assert sorted({m.name for m in index}) == model_names
    assert {m.state for m in index} == {"READY"}


def test_model_control_is_off_by_default(
    stub: GRPCInferenceServiceStub, model_names: list[str]
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=model_names[0]))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--allow-model-control" in error.value.details()
    assert stub.ModelReady(pb.ModelReadyRequest(name=model_names[0])).ready


def test_stream_answers_each_request_in_order_errors_included(
    stub: GRPCInferenceServiceStub, model_names: list[str], request_for, random_images
) -> None:
    requests = [
        request_for(model_names[0], random_images(1), id="a"),
        request_for("nope", random_images(1), id="b"),
        request_for(model_names[0], random_images(4), id="c"),
    ]
    replies = list(stub.ModelStreamInfer(iter(requests)))
    assert [r.infer_response.id for r in replies] == ["a", "b", "c"]
    assert [bool(r.error_message) for r in replies] == [False, True, False]
    assert "Request for unknown model: 'nope' is not found" in replies[1].error_message
    assert list(replies[2].infer_response.outputs[0].shape) == [4, 10]


def test_health_reports_the_server_and_each_model(
    channel: grpc.Channel, model_names: list[str]
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ["", "inference.GRPCInferenceService", *model_names]:
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == serving
    with pytest.raises(grpc.RpcError) as error:
        health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = stub.ServerReflectionInfo(iter([request]))
    names = {s.name for s in reply.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_prometheus_metrics(
    zoo_server, stub: GRPCInferenceServiceStub, model_names, request_for, decode, random_images
) -> None:
    stub.ModelInfer(request_for(model_names[0], random_images(1)))
    url = f"http://127.0.0.1:{zoo_server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert _counted_ok(text, model_names[0])
    for family in ("zoo_inference_latency_seconds_bucket", "zoo_queue_seconds_bucket"):
        assert family in text
    assert "zoo_batch_size_bucket" in text and "zoo_inference_in_flight" in text


def test_triton_counters_on_the_metrics_port_are_the_model_statistics(
    zoo_server, stub: GRPCInferenceServiceStub, model_names, request_for, random_images
) -> None:
    model = model_names[0]
    stub.ModelInfer(request_for(model, random_images(3)))
    wrong = request_for(model, random_images(3))
    wrong.inputs[0].shape[:] = [3, 1, 28, 27]
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(wrong)
    url = f"http://127.0.0.1:{zoo_server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats
    samples = {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines())
        if name.endswith(f'{{model="{model}",version="{stats.version}"}}')
    }

    def sample(name: str) -> float:
        return samples[f'{name}{{model="{model}",version="{stats.version}"}}']

    counts = stats.inference_stats
    assert sample("nv_inference_request_success") == counts.success.count >= 1
    assert sample("nv_inference_request_failure") == counts.fail.count >= 1
    assert sample("nv_inference_count") == stats.inference_count
    assert sample("nv_inference_exec_count") == stats.execution_count
    assert sample("nv_inference_request_duration_us") == pytest.approx(counts.success.ns / 1e3)
    assert sample("nv_inference_compute_infer_duration_us") == pytest.approx(
        counts.compute_infer.ns / 1e3
    )
    # Triton's names as they are: no _total, which prometheus_client gives counters.
    assert "# TYPE nv_inference_request_success untyped" in text


def _counted_ok(text: str, model: str) -> bool:
    return any(
        line.startswith("zoo_inference_requests_total")
        and f'model="{model}"' in line
        and 'status="OK"' in line
        for line in text.splitlines()
    )


def test_client_mistakes_leave_no_traceback_in_the_log(zoo_server) -> None:
    assert "Traceback" not in zoo_server.log()


def test_classification_returns_the_top_classes_as_triton_does(
    stub, model_names, request_for, reference, random_images
) -> None:
    """Triton's classification extension: the requested output as BYTES
    "value:index:label", the largest first, per batch item."""
    model, images = model_names[0], random_images(3)
    request = request_for(model, images)
    asked = request.outputs.add(name="probabilities")
    asked.parameters["classification"].int64_param = 3
    reply = stub.ModelInfer(request, timeout=30)
    (output,) = reply.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("probabilities", "BYTES", [3, 3])
    raw, items = reply.raw_output_contents[0], []
    while raw:  # 4-byte little-endian lengths, then the bytes
        size = int.from_bytes(raw[:4], "little")
        items.append(raw[4 : 4 + size].decode())
        raw = raw[4 + size :]
    expected = reference(model, images)["probabilities"]
    for row, texts in zip(expected, [items[i : i + 3] for i in (0, 3, 6)], strict=True):
        top = np.argsort(-row, kind="stable")[:3]
        assert [int(t.split(":")[1]) for t in texts] == top.tolist()
        assert [t.split(":")[2] for t in texts] == [str(i) for i in top]  # the card's labels
        assert [float(t.split(":")[0]) for t in texts] == pytest.approx(row[top], abs=1e-5)
