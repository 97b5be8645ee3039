"""The client's requests and replies, free of I/O: each API call is a `Call` value.

A `Call` names the RPC, carries the request message and knows how to read the reply.
`ZooClient` and `AsyncZooClient` only send it (with deadline, retries and round-robin),
so the sync and asyncio clients share every line that builds or parses a message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import numpy as np
import pydantic

from client.errors import InferenceServerException
from client.prediction import Prediction
from proto import grpc_service_pb2 as pb
from zoo.card import CARD_METADATA_KEY, OUTPUT_PROBABILITIES, ModelCard, TensorSpec
from zoo.datatypes import BYTES, DATATYPES, decode_bytes, encode_bytes
from zoo.errors import InvalidArgumentError

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One RPC: its name on the stub, the request, and the parser of its reply."""

    rpc: str
    request: Any
    parse: Callable[[Any], T]


@dataclass(frozen=True)
class ModelStatus:
    """One model version as the repository index reports it."""

    name: str
    version: str
    state: str
    reason: str

    @property
    def ready(self) -> bool:
        return self.state == "READY"


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class ServedModel:
    """What `infer` needs of a model: its card, and how many images one request may carry."""

    card: ModelCard
    max_batch_size: int  # 0: no limit known (the model has no batching in its config)

    def split(self, images: np.ndarray) -> list[np.ndarray]:
        """The batch in pieces the server accepts (one request each)."""
        step = self.max_batch_size if self.max_batch_size > 0 else len(images)
        return [images[i : i + step] for i in range(0, len(images), step)]


def _same(reply: T) -> T:
    return reply


def server_live() -> Call[bool]:
    return Call("ServerLive", pb.ServerLiveRequest(), lambda r: r.live)


def server_ready() -> Call[bool]:
    return Call("ServerReady", pb.ServerReadyRequest(), lambda r: r.ready)


def model_ready(name: str, version: str | int | None = None) -> Call[bool]:
    return Call(
        "ModelReady",
        pb.ModelReadyRequest(name=name, version=version_text(version)),
        lambda r: r.ready,
    )


def server_metadata() -> Call[pb.ServerMetadataResponse]:
    return Call("ServerMetadata", pb.ServerMetadataRequest(), _same)


def model_metadata(name: str, version: str | int | None = None) -> Call[pb.ModelMetadataResponse]:
    return Call(
        "ModelMetadata", pb.ModelMetadataRequest(name=name, version=version_text(version)), _same
    )


def model_config(name: str, version: str | int | None = None) -> Call[Any]:
    request = pb.ModelConfigRequest(name=name, version=version_text(version))
    return Call("ModelConfig", request, lambda r: r.config)


def model_statistics(
    name: str = "", version: str | int | None = None
) -> Call[pb.ModelStatisticsResponse]:
    request = pb.ModelStatisticsRequest(name=name, version=version_text(version))
    return Call("ModelStatistics", request, _same)


def repository_index() -> Call[pb.RepositoryIndexResponse]:
    return Call("RepositoryIndex", pb.RepositoryIndexRequest(), _same)


def _nothing(reply: Any) -> None:
    return None


def load_model(name: str) -> Call[None]:
    # Not retried: the server may have acted before the connection failed, and a second
    # load reloads the model.
    request = pb.RepositoryModelLoadRequest(model_name=name)
    return Call("RepositoryModelLoad", request, _nothing)


def unload_model(name: str) -> Call[None]:
    request = pb.RepositoryModelUnloadRequest(model_name=name)
    return Call("RepositoryModelUnload", request, _nothing)


def list_models() -> Call[list[ModelStatus]]:
    return Call("RepositoryIndex", pb.RepositoryIndexRequest(), parse_index)


def metadata(name: str, version: str | int | None = None) -> Call[ModelMetadata]:
    request = pb.ModelMetadataRequest(name=name, version=version_text(version))
    return Call("ModelMetadata", request, parse_metadata)


def served_model(name: str, version: str | int | None = None) -> Call[ServedModel]:
    request = pb.ModelConfigRequest(name=name, version=version_text(version))
    return Call(
        "ModelConfig",
        request,
        lambda r: ServedModel(parse_card(name, r.config), r.config.max_batch_size),
    )


def infer_raw(
    name: str,
    inputs: Mapping[str, np.ndarray],
    version: str | int | None = None,
    outputs: Sequence[str] = (),
) -> Call[dict[str, np.ndarray]]:
    return Call("ModelInfer", build_infer_request(name, inputs, version, outputs), decode_outputs)


def infer(
    card: ModelCard, batch: np.ndarray, version: str | int | None = None, top_k: int = 1
) -> Call[Prediction]:
    """Classify a [N, 1, 28, 28] batch with the input and labels the model's card names."""
    if not 1 <= top_k <= len(card.labels):
        raise InvalidArgumentError(f"top_k must be in [1, {len(card.labels)}], got {top_k}")
    spec = card.inputs[0]
    request = build_infer_request(
        card.name,
        {spec.name: batch.astype(dtype_of(spec.datatype))},
        version,
        outputs=(OUTPUT_PROBABILITIES,),
    )

    def parse(reply: pb.ModelInferResponse) -> Prediction:
        probabilities = decode_outputs(reply)[OUTPUT_PROBABILITIES]
        return Prediction(reply.model_name, reply.model_version, card.labels, probabilities, top_k)

    return Call("ModelInfer", request, parse)


def version_text(version: str | int | None) -> str:
    return "" if version is None else str(version)


def parse_index(reply: pb.RepositoryIndexResponse) -> list[ModelStatus]:
    return [ModelStatus(m.name, m.version, m.state, m.reason) for m in reply.models]


def parse_metadata(reply: pb.ModelMetadataResponse) -> ModelMetadata:
    def specs(tensors: Any) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(name=t.name, datatype=t.datatype, shape=tuple(t.shape)) for t in tensors
        )

    return ModelMetadata(
        reply.name, tuple(reply.versions), reply.platform, specs(reply.inputs), specs(reply.outputs)
    )


def parse_card(name: str, config: Any) -> ModelCard:
    """The card the server publishes in the model config's parameters (key `modelzoo.card`)."""
    if CARD_METADATA_KEY not in config.parameters:
        raise InferenceServerException(
            grpc.StatusCode.NOT_FOUND,
            f"model {name!r} publishes no card: its config has no parameter {CARD_METADATA_KEY!r}",
        )
    try:
        return ModelCard.from_json(config.parameters[CARD_METADATA_KEY].string_value)
    except (ValueError, pydantic.ValidationError) as error:
        reason = str(error).splitlines()[0]
        raise InferenceServerException(
            grpc.StatusCode.INTERNAL, f"model {name!r} publishes an unreadable card ({reason})"
        ) from None


def dtype_of(datatype: str) -> np.dtype:
    if datatype not in DATATYPES:
        raise InvalidArgumentError(
            f"expected one of the datatypes {sorted(DATATYPES)}, got {datatype!r}"
        )
    return DATATYPES[datatype][0]


def datatype_of(array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":  # str or bytes objects, numpy's fixed-size strings
        return BYTES
    for name, (dtype, _) in DATATYPES.items():
        if dtype == array.dtype.newbyteorder("<"):
            return name
    raise InvalidArgumentError(
        f"expected an array of one of the types {sorted(DATATYPES)}, got dtype {array.dtype}"
    )


def build_infer_request(
    name: str,
    inputs: Mapping[str, np.ndarray],
    version: str | int | None = None,
    outputs: Sequence[str] = (),
) -> pb.ModelInferRequest:
    """A ModelInfer request with every input as raw little-endian bytes."""
    request = pb.ModelInferRequest(model_name=name, model_version=version_text(version))
    for input_name, array in inputs.items():
        datatype = datatype_of(array)
        request.inputs.add(name=input_name, datatype=datatype, shape=array.shape)
        if datatype == BYTES:
            request.raw_input_contents.append(encode_bytes(array))
            continue
        request.raw_input_contents.append(np.ascontiguousarray(array, dtype_of(datatype)).tobytes())
    for output_name in outputs:
        request.outputs.add(name=output_name)
    return request


def decode_outputs(reply: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output of a reply as a numpy array, from raw contents or typed contents."""
    if reply.raw_output_contents and len(reply.raw_output_contents) != len(reply.outputs):
        raise _malformed(
            f"{len(reply.outputs)} outputs but {len(reply.raw_output_contents)} raw contents"
        )
    return {
        output.name: _decode_one(
            output, reply.raw_output_contents[i] if reply.raw_output_contents else None
        )
        for i, output in enumerate(reply.outputs)
    }


def _decode_one(output: Any, raw: bytes | None) -> np.ndarray:
    if output.datatype not in DATATYPES:
        raise _malformed(
            f"output {output.name!r} has datatype {output.datatype!r}, unreadable here"
        )
    dtype, field = DATATYPES[output.datatype]
    shape = tuple(output.shape)
    if output.datatype == BYTES:  # an object array of bytes, as tritonclient's as_numpy
        try:
            items = decode_bytes(raw) if raw is not None else list(output.contents.bytes_contents)
        except InvalidArgumentError as error:
            raise _malformed(f"output {output.name!r}: {error}") from None
        if len(items) != int(np.prod(shape)):
            raise _malformed(f"output {output.name!r}: {len(items)} strings for {shape}")
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array.reshape(shape)
    if raw is not None:
        expected = int(np.prod(shape)) * dtype.itemsize
        if len(raw) != expected:
            raise _malformed(
                f"output {output.name!r}: {len(raw)} bytes, expected {expected} for {shape}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    if field is None:
        raise _malformed(f"output {output.name!r} ({output.datatype}) came without raw contents")
    return np.asarray(getattr(output.contents, field), dtype=dtype).reshape(shape)


def _malformed(detail: str) -> InferenceServerException:
    return InferenceServerException(
        grpc.StatusCode.INTERNAL, f"malformed reply from the server: {detail}"
    )
