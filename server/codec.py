"""Tensors between KServe v2 messages and numpy: raw bytes or typed contents.

Raw contents are decoded with `np.frombuffer` (no copy); every check says what the
model expects and what arrived, as an InvalidArgumentError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from proto.grpc_service_pb2 import InferParameter, ModelInferRequest, ModelInferResponse
from zoo.datatypes import DATATYPES
from zoo.errors import InvalidArgumentError


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the protocol sees it: shape with -1 for any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @cached_property
    def dtype(self) -> np.dtype:
        return DATATYPES[self.datatype][0]

    @cached_property
    def fixed_tail(self) -> tuple[int, ...] | None:
        """The dims after a variable first one when all are fixed: the fast shape check."""
        rest = self.shape[1:]
        return rest if self.shape[:1] == (-1,) and -1 not in rest else None


# Triton's parameters with a fixed type: a value of another type is a client's mistake.
# (Parameters not listed here are ignored, as Triton ignores ones it does not know.)
_INTEGER = frozenset({"int64_param", "uint64_param"})
_BOOL = frozenset({"bool_param"})
REQUEST_PARAMETERS = {
    "priority": _INTEGER,
    "timeout": _INTEGER,
    "sequence_id": _INTEGER | {"string_param"},
    "sequence_start": _BOOL,
    "sequence_end": _BOOL,
    "binary_data_output": _BOOL,
}
INPUT_PARAMETERS = {
    "binary_data_size": _INTEGER,
    "shared_memory_region": frozenset({"string_param"}),
    "shared_memory_byte_size": _INTEGER,
    "shared_memory_offset": _INTEGER,
}
OUTPUT_PARAMETERS = {"classification": _INTEGER, "binary_data": _BOOL, **INPUT_PARAMETERS}


def check_parameters(parameters: Mapping[str, InferParameter], known: dict, where: str) -> None:
    for key, value in parameters.items():
        allowed = known.get(key)
        if allowed is None:
            continue
        kind = value.WhichOneof("parameter_choice")
        if kind not in allowed:
            raise InvalidArgumentError(
                f"{where} parameter {key!r}: expected {' or '.join(sorted(allowed))}, "
                f"got {kind or 'no value'}"
            )


def _check_shape(spec: TensorSpec, shape: tuple[int, ...], max_batch_size: int) -> None:
    tail = spec.fixed_tail
    fast = tail is not None and len(shape) == len(spec.shape) and shape[1:] == tail
    if not fast and (
        len(shape) != len(spec.shape)
        or any(want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True))
    ):
        raise InvalidArgumentError(
            f"input {spec.name!r}: expected shape {list(spec.shape)}, got {list(shape)}"
        )
    if not fast and any(d < 0 for d in shape):
        raise InvalidArgumentError(f"input {spec.name!r}: negative dimension in {list(shape)}")
    if max_batch_size and not 1 <= shape[0] <= max_batch_size:
        raise InvalidArgumentError(
            f"input {spec.name!r}: batch size {shape[0]} outside 1..{max_batch_size} "
            "(the model's max_batch_size)"
        )


def _typed(spec: TensorSpec, tensor: ModelInferRequest.InferInputTensor, count: int) -> np.ndarray:
    dtype, field = DATATYPES[spec.datatype]
    if field is None:
        raise InvalidArgumentError(f"input {spec.name!r}: send {spec.datatype} as raw bytes")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidArgumentError(
            f"input {spec.name!r}: expected {count} values in contents.{field}, got {len(values)}"
        )
    return np.array(values, dtype=dtype)


def _raw(spec: TensorSpec, raw: bytes, count: int) -> np.ndarray:
    expected = count * spec.dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgumentError(
            f"input {spec.name!r}: expected {expected} bytes of raw contents, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=spec.dtype)


def _raw_contents(request: ModelInferRequest) -> Sequence[bytes] | None:
    raw = request.raw_input_contents
    if not raw:
        return None
    if len(raw) != len(request.inputs):
        raise InvalidArgumentError(
            f"expected one raw_input_contents per input ({len(request.inputs)}), got {len(raw)}"
        )
    if any(t.HasField("contents") for t in request.inputs):
        raise InvalidArgumentError("inputs carry both raw_input_contents and typed contents")
    return raw


def decode_inputs(
    request: ModelInferRequest, specs: dict[str, TensorSpec], max_batch_size: int
) -> tuple[dict[str, np.ndarray], int]:
    """The request's inputs as arrays, checked against the model; and the batch size."""
    if request.parameters:
        check_parameters(request.parameters, REQUEST_PARAMETERS, "request")
    raw = _raw_contents(request)
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        spec = specs.get(tensor.name)
        if spec is None:
            raise InvalidArgumentError(
                f"unknown input {tensor.name!r}: the model's inputs are {sorted(specs)}"
            )
        if tensor.parameters:
            check_parameters(tensor.parameters, INPUT_PARAMETERS, f"input {spec.name!r}")
        if spec.name in arrays:
            raise InvalidArgumentError(f"input {spec.name!r} given twice; send each input once")
        if tensor.datatype != spec.datatype:
            raise InvalidArgumentError(
                f"input {spec.name!r}: expected datatype {spec.datatype}, got {tensor.datatype!r}"
            )
        shape = tuple(tensor.shape)
        _check_shape(spec, shape, max_batch_size)
        count = math.prod(shape)
        flat = _raw(spec, raw[i], count) if raw is not None else _typed(spec, tensor, count)
        arrays[spec.name] = flat.reshape(shape)
    if len(arrays) != len(specs):
        missing = sorted(set(specs) - set(arrays))
        raise InvalidArgumentError(f"missing inputs {missing}: the model needs {sorted(specs)}")
    if not max_batch_size:
        return arrays, 1
    batch = len(next(iter(arrays.values())))
    if len(arrays) > 1 and any(len(a) != batch for a in arrays.values()):
        raise InvalidArgumentError("inputs disagree on the batch size (their first dimension)")
    return arrays, batch


def requested_outputs(request: ModelInferRequest, outputs: dict[str, int]) -> list[int]:
    """Indices (into the model's outputs) of the outputs to return, in the requested order."""
    if not request.outputs:
        return list(outputs.values())
    for o in request.outputs:
        if o.parameters:
            check_parameters(o.parameters, OUTPUT_PARAMETERS, f"output {o.name!r}")
    try:
        return [outputs[o.name] for o in request.outputs]
    except KeyError as error:
        raise InvalidArgumentError(
            f"unknown output {error.args[0]!r}: the model's outputs are {sorted(outputs)}"
        ) from None


def encode_outputs(
    response: ModelInferResponse, specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray]
) -> None:
    """Append outputs as raw_output_contents: tritonclient's as_numpy reads only those."""
    for spec, array in zip(specs, arrays, strict=True):
        out = response.outputs.add()
        out.name = spec.name
        out.datatype = spec.datatype
        out.shape.extend(array.shape)
        response.raw_output_contents.append(np.ascontiguousarray(array, spec.dtype).tobytes())
