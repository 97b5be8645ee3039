"""Tensors between KServe v2 messages and numpy: raw bytes or typed contents.

Raw contents are decoded with `np.frombuffer` (no copy); every check says what the
model expects and what arrived, as an InvalidArgumentError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from proto.grpc_service_pb2 import InferParameter, ModelInferRequest, ModelInferResponse
from server.shared_memory import SharedMemoryRegistry, Slot
from zoo.datatypes import BYTES, DATATYPES, decode_bytes, encode_bytes
from zoo.errors import InvalidArgumentError

__all__ = ["decode_bytes", "encode_bytes"]  # BYTES' raw form, for the REST layer too


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


SHARED_MEMORY = "shared_memory_region"
SHARED_MEMORY_OFFSET = "shared_memory_offset"
SHARED_MEMORY_BYTE_SIZE = "shared_memory_byte_size"


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
    if spec.datatype == BYTES:
        return _texts(spec, values)
    return np.array(values, dtype=dtype)


def _texts(spec: TensorSpec, items: Sequence[bytes]) -> np.ndarray:
    """BYTES elements as the str objects onnxruntime's string tensors take (it would
    turn a bytes object into the text "b'...'"): UTF-8, or the client's mistake."""
    texts = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        try:
            texts[i] = item.decode()
        except UnicodeDecodeError as error:
            raise InvalidArgumentError(
                f"input {spec.name!r}: element {i} is not UTF-8 text ({error.reason} at byte "
                f"{error.start}); the model's string tensors hold text"
            ) from None
    return texts


def _raw(spec: TensorSpec, raw: bytes, count: int, source: str = "raw contents") -> np.ndarray:
    if spec.datatype == BYTES:
        try:
            items = decode_bytes(raw)
        except InvalidArgumentError as error:
            raise InvalidArgumentError(f"input {spec.name!r}: {error} of {source}") from None
        if len(items) != count:
            raise InvalidArgumentError(
                f"input {spec.name!r}: expected {count} BYTES elements in its {source}, "
                f"got {len(items)}"
            )
        return _texts(spec, items)
    expected = count * spec.dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgumentError(
            f"input {spec.name!r}: expected {expected} bytes of {source}, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=spec.dtype)


def _slot(
    parameters: Mapping[str, InferParameter], memory: SharedMemoryRegistry | None, what: str
) -> Slot | None:
    """Where a tensor lies in shared memory, when its parameters name a region."""
    if SHARED_MEMORY not in parameters:
        return None
    if memory is None:
        raise InvalidArgumentError(f"{what}: shared memory is not served here")
    # A string and integers: check_parameters said so.
    name = parameters[SHARED_MEMORY].string_param
    offset = _integer(parameters, SHARED_MEMORY_OFFSET)
    size = _integer(parameters, SHARED_MEMORY_BYTE_SIZE)
    return memory.slot(name, offset or 0, size, what)


def _integer(parameters: Mapping[str, InferParameter], key: str) -> int | None:
    if key not in parameters:
        return None
    parameter = parameters[key]
    kind = parameter.WhichOneof("parameter_choice")
    return int(getattr(parameter, kind)) if kind else 0


def _raw_contents(request: ModelInferRequest) -> Sequence[bytes] | None:
    raw = request.raw_input_contents
    if not raw:
        return None
    # Inputs in shared memory have no raw contents (as in Triton).
    expected = sum(SHARED_MEMORY not in t.parameters for t in request.inputs)
    if len(raw) != expected:
        shared = len(request.inputs) - expected
        raise InvalidArgumentError(
            f"expected one raw_input_contents per input ({expected}"
            + (f": {shared} more are in shared memory" if shared else "")
            + f"), got {len(raw)}"
        )
    typed = [t.name for t in request.inputs if t.HasField("contents")]
    if typed:
        # Triton's wording first, then what arrived.
        raise InvalidArgumentError(
            f"contents field must not be specified when using raw_input_contents for "
            f"{typed[0]!r}: inputs carry both raw_input_contents and typed contents"
        )
    return raw


def decode_inputs(
    request: ModelInferRequest,
    specs: dict[str, TensorSpec],
    max_batch_size: int,
    memory: SharedMemoryRegistry | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """The request's inputs as arrays, checked against the model; and the batch size.
    An input may lie in a region of `memory` (its shared_memory_* parameters)."""
    if request.parameters:
        check_parameters(request.parameters, REQUEST_PARAMETERS, "request")
    raw = _raw_contents(request)
    next_raw = 0
    arrays: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
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
        slot = (
            _slot(tensor.parameters, memory, f"input {spec.name!r}") if tensor.parameters else None
        )
        if slot is not None:
            flat = _shared(spec, tensor, slot, count)
        elif raw is not None:
            flat = _raw(spec, raw[next_raw], count)
            next_raw += 1
        else:
            flat = _typed(spec, tensor, count)
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


def _shared(
    spec: TensorSpec, tensor: ModelInferRequest.InferInputTensor, slot: Slot, count: int
) -> np.ndarray:
    if tensor.HasField("contents"):
        raise InvalidArgumentError(
            f"unexpected 'content' provided when using shared memory for input tensor "
            f"{spec.name!r}: send it in one place"
        )
    if spec.datatype != BYTES and slot.byte_size != count * spec.dtype.itemsize:
        raise InvalidArgumentError(
            f"input {spec.name!r}: expected shared_memory_byte_size {count * spec.dtype.itemsize} "
            f"for {spec.datatype} {list(tensor.shape)}, got {slot.byte_size}"
        )
    # A copy: the client may write the region again while the model runs.
    return _raw(spec, slot.read(), count, "shared memory")


def request_timeout_s(request: ModelInferRequest, model: str) -> float | None:
    """The request's own queue timeout ("timeout", microseconds; 0 is none). Options we
    cannot honour are refused rather than ignored: sequence ids (no model here has
    sequence batching) and a priority other than the default (no priority levels)."""
    parameters = request.parameters
    if not parameters:
        return None
    for key in ("sequence_id", "sequence_start", "sequence_end"):
        if key in parameters and _set(parameters[key]):
            raise InvalidArgumentError(
                f"parameter {key!r}: model {model!r} has no sequence batching, so a sequence "
                "cannot be honoured; send the request without it"
            )
    if "priority" in parameters and _set(parameters["priority"]):
        raise InvalidArgumentError(
            f"parameter 'priority': model {model!r} has no priority levels "
            f"(dynamic_batching.priority_levels), got {_value(parameters['priority'])}"
        )
    if "timeout" not in parameters:
        return None
    timeout_us = _value(parameters["timeout"])
    if timeout_us < 0:
        raise InvalidArgumentError(
            f"parameter 'timeout': expected microseconds >= 0, got {timeout_us}"
        )
    return timeout_us / 1e6 if timeout_us else None


def _value(parameter: InferParameter) -> object:
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind else None


def _set(parameter: InferParameter) -> bool:
    """A parameter given with a value other than its default (0, "", false)."""
    return bool(_value(parameter))


class Requested(NamedTuple):
    """One output to return: the model's output `index`, whole, or (class_count > 0)
    as the top class_count classes (Triton's classification extension); written into
    shared memory instead of the reply when `target` is set. (A tuple: one is made per
    requested output of every request.)"""

    index: int
    class_count: int = 0
    target: Slot | None = None


def requested_outputs(
    request: ModelInferRequest,
    outputs: dict[str, int],
    memory: SharedMemoryRegistry | None = None,
    specs: Sequence[TensorSpec] = (),
) -> list[Requested] | None:
    """The outputs to return, in the requested order; None when none is named: then
    every output, whole, in the model's order (the common case, kept free of objects).
    `specs`, the model's outputs by index, lets a classification of a BYTES output be
    refused before the model runs."""
    if not request.outputs:
        return None
    wanted = []
    for o in request.outputs:
        if o.parameters:
            check_parameters(o.parameters, OUTPUT_PARAMETERS, f"output {o.name!r}")
        if o.name not in outputs:
            raise InvalidArgumentError(
                f"unknown output {o.name!r}: the model's outputs are {sorted(outputs)}"
            )
        count = _class_count(o)
        if count < 0:
            raise InvalidArgumentError(
                f"output {o.name!r}: classification count must be >= 0, got {count}"
            )
        index = outputs[o.name]
        if count and index < len(specs) and specs[index].datatype == BYTES:
            raise InvalidArgumentError(
                f"output {o.name!r}: classification needs a numeric output, got BYTES"
            )
        target = _slot(o.parameters, memory, f"output {o.name!r}") if o.parameters else None
        if target is not None and count:
            raise InvalidArgumentError(
                f"output {o.name!r}: output can't set both 'shared_memory_region' and "
                "'classification'"
            )
        wanted.append(Requested(index, count, target))
    return wanted


def _class_count(output: ModelInferRequest.InferRequestedOutputTensor) -> int:
    if "classification" not in output.parameters:
        return 0
    # An integer: check_parameters said so.
    return int(_value(output.parameters["classification"]) or 0)  # type: ignore[call-overload]


def classify(array: np.ndarray, count: int, labels: Sequence[str], batched: bool) -> np.ndarray:
    """Triton's classification: per batch item (or for the whole output of a model
    without a batch axis), the `count` largest values as "value:index" or, with labels,
    "value:index:label" byte strings, largest first: [N, count] (or [count])."""
    rows = array.reshape(len(array), -1) if batched else array.reshape(1, -1)
    count = min(count, rows.shape[1])
    order = np.argsort(-rows, axis=1, kind="stable")[:, :count]
    texts = [
        [f"{row[i]:f}:{i}" + (f":{labels[i]}" if i < len(labels) else "") for i in indices]
        for row, indices in zip(rows, order, strict=True)
    ]
    result = np.array([[t.encode() for t in line] for line in texts], dtype=object)
    return result if batched else result[0]


def encode_outputs(
    response: ModelInferResponse,
    specs: Sequence[TensorSpec],
    arrays: Sequence[np.ndarray],
    targets: Sequence[Slot | None] = (),
) -> None:
    """Append outputs as raw_output_contents: tritonclient's as_numpy reads only those.
    An object array (strings: a BYTES output, classification's) goes as BYTES. An output
    with a target is written there; its entry in raw_output_contents stays empty, so that
    the entries still pair with the outputs by position (as Triton answers)."""
    for i, (spec, array) in enumerate(zip(specs, arrays, strict=True)):
        out = response.outputs.add()
        out.name = spec.name
        out.shape.extend(array.shape)
        target = targets[i] if targets else None
        if array.dtype == object:
            out.datatype = BYTES
            data: bytes | np.ndarray = encode_bytes(array)
        else:
            out.datatype = spec.datatype
            data = np.ascontiguousarray(array, spec.dtype)
        if target is not None:
            target.write(data)
            response.raw_output_contents.append(b"")
        else:
            raw = data if isinstance(data, bytes) else data.tobytes()
            response.raw_output_contents.append(raw)
