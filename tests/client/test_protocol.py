"""Request building and reply parsing, without I/O (client.protocol)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from client import protocol
from client.errors import InferenceServerException
from proto import grpc_service_pb2 as pb
from proto import model_config_pb2 as mc
from zoo.card import CARD_METADATA_KEY, ModelCard
from zoo.errors import InvalidArgumentError

CARD = ModelCard(
    name="tiny",
    family="plain",
    architecture="MLP",
    config={},
    params=10,
    normalisation_mean=0.1307,
    normalisation_std=0.3081,
)


def reply_with(outputs: dict[str, np.ndarray], datatype: str = "FP32") -> pb.ModelInferResponse:
    reply = pb.ModelInferResponse(model_name="tiny", model_version="1")
    for name, array in outputs.items():
        reply.outputs.add(name=name, datatype=datatype, shape=array.shape)
        reply.raw_output_contents.append(array.astype("<f4").tobytes())
    return reply


def test_raw_inputs_are_little_endian_row_major() -> None:
    big_endian = np.arange(6, dtype=">f4").reshape(2, 3)
    request = protocol.build_infer_request("m", {"x": big_endian}, version=2, outputs=["y"])
    assert request.model_version == "2" and request.outputs[0].name == "y"
    assert (request.inputs[0].datatype, list(request.inputs[0].shape)) == ("FP32", [2, 3])
    assert request.raw_input_contents[0] == np.arange(6, dtype="<f4").tobytes()


def test_unsupported_dtype_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="got dtype complex64"):
        protocol.build_infer_request("m", {"x": np.zeros(2, np.complex64)})


def test_outputs_decode_from_raw_and_typed_contents() -> None:
    probs = np.random.default_rng(0).random((2, 10)).astype(np.float32)
    np.testing.assert_array_equal(protocol.decode_outputs(reply_with({"p": probs}))["p"], probs)
    typed = pb.ModelInferResponse()
    out = typed.outputs.add(name="n", datatype="INT64", shape=[3])
    out.contents.int64_contents.extend([1, 2, 3])
    np.testing.assert_array_equal(protocol.decode_outputs(typed)["n"], [1, 2, 3])


def test_short_raw_output_is_a_malformed_reply() -> None:
    reply = reply_with({"p": np.zeros((2, 10), np.float32)})
    reply.outputs[0].shape[0] = 3
    with pytest.raises(
        InferenceServerException, match=r"malformed reply.*80 bytes, expected 120"
    ) as error:
        protocol.decode_outputs(reply)
    assert error.value.code == "INTERNAL" and error.value.exit_code == 3


def test_infer_call_reads_labels_and_probabilities_from_the_card() -> None:
    call = protocol.infer(CARD, np.zeros((2, 1, 28, 28), np.float32), top_k=3)
    assert (call.rpc, call.request.inputs[0].name, call.request.outputs[0].name) == (
        "ModelInfer",
        "images",
        "probabilities",
    )
    probs = np.eye(10, dtype=np.float32)[[4, 9]]
    prediction = call.parse(reply_with({"logits": probs, "probabilities": probs}))
    assert prediction.labels == ["4", "9"] and prediction[0].top_k[0] == ("4", 1.0)


def test_infer_refuses_top_k_before_sending() -> None:
    with pytest.raises(InvalidArgumentError, match=r"top_k must be in \[1, 10\], got 12"):
        protocol.infer(CARD, np.zeros((1, 1, 28, 28), np.float32), top_k=12)


def test_card_comes_from_the_config_parameters() -> None:
    config = mc.ModelConfig(name="tiny")
    config.parameters[CARD_METADATA_KEY].string_value = CARD.to_json()
    assert protocol.parse_card("tiny", config) == CARD
    with pytest.raises(InferenceServerException, match="publishes no card") as error:
        protocol.parse_card("tiny", mc.ModelConfig(name="tiny"))
    assert error.value.status_code == grpc.StatusCode.NOT_FOUND


def test_index_and_metadata_become_typed_values() -> None:
    index = pb.RepositoryIndexResponse()
    index.models.add(name="a", version="1", state="READY")
    index.models.add(name="b", version="2", state="UNAVAILABLE", reason="bad onnx")
    statuses = protocol.parse_index(index)
    assert [(s.name, s.ready) for s in statuses] == [("a", True), ("b", False)]
    meta = pb.ModelMetadataResponse(name="a", versions=["1"], platform="onnxruntime_onnx")
    meta.inputs.add(name="images", datatype="FP32", shape=[-1, 1, 28, 28])
    assert protocol.parse_metadata(meta).inputs[0].shape == (-1, 1, 28, 28)
