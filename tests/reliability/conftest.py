"""The fault suite's shared parts: a seeded generator of malformed ModelInfer requests and
the runners that send it, background load that records every reply, the repository
faults, and waiting on conditions.

The tests reach these through fixtures (importlib test mode cannot import helper
modules); bench/reliability.py loads this file by path for the same generator, load and
faults, so that its figures and the tests measure the same things.

    case = next(malformed_requests(seed=0, count=1, target=FuzzTarget("tiny_mlp", 64)))
    case.kind, case.detail, case.allowed   # e.g. "odd_version", "'²'", {"NOT_FOUND"}
"""

from __future__ import annotations

import itertools
import os
import queue
import shutil
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf.message import DecodeError

from client import ZooClient
from client.errors import InferenceServerException
from client.protocol import build_infer_request
from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from zoo.datatypes import DATATYPES
from zoo.repository import config_for_card, read_card, write_model_config

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
# Every zoo model (and every tiny test model) takes FP32 images [N, 1, 28, 28] and returns
# logits and probabilities [N, 10].
INPUT, IMAGE, CLASSES = "images", (1, 28, 28), 10
IMAGE_BYTES = 4 * 28 * 28
OK, INVALID, NOT_FOUND = "OK", "INVALID_ARGUMENT", "NOT_FOUND"
UNAVAILABLE = "UNAVAILABLE"
# Never the answer to a client's mistake; DEADLINE_EXCEEDED on our generous deadlines is a hang.
SERVER_FAULTS = frozenset({"INTERNAL", "UNKNOWN"})
HANG = "DEADLINE_EXCEEDED"
# A stream reply has no status code: the server says this where a unary call gets INTERNAL.
STREAM_INTERNAL = "internal server error"
# Recorded in place of OK when a reply's outputs do not hold every image of the request.
TRUNCATED = "TRUNCATED"
# What a test waits for a condition (a poll seen, a request answered) on a busy machine.
WAIT_S = 60.0
# The deadline of every fuzz call: far beyond any honest answer, so that reaching it is a hang.
CALL_TIMEOUT_S = 30.0

# Every KServe v2 datatype: a tensor declared as any of them must be judged, not crash.
KSERVE_DATATYPES = (*DATATYPES, *({"BYTES"} - set(DATATYPES)))
TYPED_FIELDS = {name: field for name, (_, field) in DATATYPES.items()} | {"BYTES": "bytes_contents"}
JUNK_DATATYPES = ("fp32", "FLOAT32", "TYPE_FP32", "", "FP32 ", "BF16", "STRING", "FP8", "ü")


# -- the fuzz generator -----------------------------------------------------------------


@dataclass(frozen=True)
class FuzzTarget:
    """The served model the malformed requests aim at (zoo inputs and outputs)."""

    model: str
    max_batch_size: int
    version: str = "1"  # the version it serves: control cases name it


@dataclass(frozen=True)
class FuzzCase:
    kind: str
    detail: str
    message: bytes  # a serialized ModelInferRequest, or bytes that are not one
    allowed: frozenset[str]  # the status codes the contract allows for it


@dataclass(frozen=True)
class Outcome:
    kind: str
    detail: str
    allowed: frozenset[str]
    code: str  # a status code's name; on a stream also ERROR (a reply with error_message)
    message: str

    @property
    def forbidden(self) -> bool:
        """INTERNAL, UNKNOWN or a hang: never acceptable, whatever was sent."""
        return self.code in SERVER_FAULTS or self.code == HANG

    def __str__(self) -> str:
        return f"{self.kind} ({self.detail[:80]}): {self.code} {self.message[:200]!r}"


Built = tuple[pb.ModelInferRequest | bytes, str]
Builder = Callable[[np.random.Generator, FuzzTarget, int], Built]


def _images(rng: np.random.Generator, batch: int) -> np.ndarray:
    return rng.random((batch, *IMAGE), dtype=np.float32)


def _valid(rng: np.random.Generator, target: FuzzTarget, version: str = "") -> pb.ModelInferRequest:
    batch = int(rng.integers(1, min(target.max_batch_size, 4) + 1))
    return build_infer_request(target.model, {INPUT: _images(rng, batch)}, version or None)


def _pick(options: tuple | list, n: int) -> Any:
    """The n-th option, cycling: every option is covered once a kind has had len(options) cases."""
    return options[n % len(options)]


def _raw_values(rng: np.random.Generator, datatype: str, count: int) -> bytes:
    """`count` elements of `datatype` as raw bytes (BYTES: 4-byte length, then the bytes)."""
    if datatype == "BYTES":
        return b"".join(
            len(s).to_bytes(4, "little") + s
            for s in (rng.bytes(int(n)) for n in rng.integers(0, 8, count))
        )
    itemsize = DATATYPES[datatype][0].itemsize if datatype in DATATYPES else 1
    return rng.bytes(count * itemsize)


def _typed_values(contents: pb.InferTensorContents, field: str, rng: np.random.Generator, n: int):
    values = getattr(contents, field)
    if field == "bool_contents":
        values.extend(bool(b) for b in rng.integers(0, 2, n))
    elif field == "bytes_contents":
        values.extend(rng.bytes(int(k)) for k in rng.integers(0, 8, n))
    elif field in ("fp32_contents", "fp64_contents"):
        values.extend(rng.random(n).tolist())
    elif field.startswith("uint"):
        values.extend(rng.integers(0, 256, n).tolist())
    else:
        values.extend(rng.integers(-128, 128, n).tolist())


def _tensor(
    request: pb.ModelInferRequest,
    rng: np.random.Generator,
    name: str,
    datatype: str,
    shape: list[int],
    typed: bool,
) -> None:
    """Add an input whose contents fit its (declared) datatype and shape."""
    count = int(np.prod(shape)) if shape else 1
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    if typed:
        _typed_values(tensor.contents, TYPED_FIELDS.get(datatype) or "fp32_contents", rng, count)
    else:
        request.raw_input_contents.append(_raw_values(rng, datatype, count))


def _odd_text(rng: np.random.Generator, n: int, base: str) -> str:
    """Names a client might get wrong: case, spaces, NUL, paths, non-ASCII, 10 kB, random."""
    options = (
        "",
        base.upper(),
        base + " ",
        " " + base,
        base + "\x00",
        f"../{base}",
        f"{base}/1",
        "🙂" * 8,
        "模型",
        "%s%n{}",
        "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 10_000)),
        "".join(rng.choice(list("ab_c-1."), int(rng.integers(1, 24)))),
    )
    return _pick(options, n)


def _datatype_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    wrong = [d for d in KSERVE_DATATYPES if d != "FP32"] + list(JUNK_DATATYPES)
    datatype, typed = _pick(wrong, n // 2), n % 2 == 1
    request = pb.ModelInferRequest(model_name=target.model)
    _tensor(request, rng, INPUT, datatype, [int(rng.integers(1, 4)), *IMAGE], typed)
    return request, f"{datatype!r} {'typed' if typed else 'raw'}"


# Shapes chosen to slip past naive checks: negatives that multiply to the right count, an
# element count that wraps to 0 in int64, the right count in the wrong shape, rank 0.
TRICKY_SHAPES = (
    [],
    [0],
    [784],
    [1, 784],
    [1, 28, 28],
    [1, 1, 28, 28, 1],
    [-1, 1, 28, 28],
    [-1, -1, 28, 28],
    [2**32, 2**32, 1, 1],
    [2**62, 1, 28, 28],
    [2**63 - 1, 1, 28, 28],
    [-(2**63), 1, 28, 28],
    [1, 1, 28, -28],
    [1, 28, 28, 1],
    [1, 1, 14, 56],
    [1] * 64,
)
DIM_POOL = (0, 1, 2, 28, -1, -2, -(2**31), 2**31, 2**40, 2**62, 2**63 - 1, -(2**63))


def _is_valid_shape(shape: list[int], max_batch_size: int) -> bool:
    return len(shape) == 4 and shape[1:] == list(IMAGE) and 1 <= shape[0] <= max_batch_size


def _shape_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    if n % 2 == 0:
        shape = list(_pick(TRICKY_SHAPES, n // 2))
    else:
        shape = [int(rng.choice(DIM_POOL)) for _ in range(int(rng.integers(0, 7)))]
        if _is_valid_shape(shape, target.max_batch_size):
            shape.append(1)
    elements = int(np.prod(shape, dtype=object)) if shape else 1
    if elements == 2**64:
        raw = b""  # what a count computed in wrapping int64 arithmetic would expect
    elif 0 <= elements <= 262_144:
        raw = rng.bytes(4 * elements)  # the right byte count: only the shape check can refuse
    else:
        raw = rng.bytes(int(rng.integers(0, 4096)))
    request = pb.ModelInferRequest(model_name=target.model)
    request.inputs.add(name=INPUT, datatype="FP32", shape=shape)
    request.raw_input_contents.append(raw)
    return request, str(shape)


def _batch_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    batch = _pick((0, target.max_batch_size + 1, 2 * target.max_batch_size, 10**6, 2**63 - 1), n)
    request = pb.ModelInferRequest(model_name=target.model)
    request.inputs.add(name=INPUT, datatype="FP32", shape=[batch, *IMAGE])
    fits = batch * IMAGE_BYTES <= 2**21
    request.raw_input_contents.append(rng.bytes(batch * IMAGE_BYTES if fits else 4096))
    return request, f"batch {batch}"


def _byte_size_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    request = _valid(rng, target)
    right = len(request.raw_input_contents[0])
    delta = _pick((-1, 1, -4, 4, -right, right, -IMAGE_BYTES, IMAGE_BYTES, 3), n)
    request.raw_input_contents[0] = rng.bytes(right + delta)
    return request, f"{right + delta} bytes for {right}"


def _typed_count_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    batch = int(rng.integers(1, 4))
    count = batch * 784
    field, delta = _pick(
        (
            ("fp32_contents", -1),
            ("fp32_contents", 1),
            ("fp32_contents", -count),
            ("fp32_contents", 784),
            ("int_contents", 0),
            ("fp64_contents", 0),
            ("bool_contents", 0),
            ("bytes_contents", 0),
        ),
        n,
    )
    request = pb.ModelInferRequest(model_name=target.model)
    tensor = request.inputs.add(name=INPUT, datatype="FP32", shape=[batch, *IMAGE])
    _typed_values(tensor.contents, field, rng, count + delta)
    return request, f"{count + delta} values in {field} for {count}"


def _raw_and_typed_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    request = _valid(rng, target)
    images = np.frombuffer(request.raw_input_contents[0], "<f4")
    request.inputs[0].contents.fp32_contents.extend(images.tolist())
    return request, "raw and fp32_contents"


def _raw_count_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    request = _valid(rng, target)
    how = _pick(("two raw for one input", "raw without inputs", "an empty extra raw"), n)
    if how == "two raw for one input":
        request.raw_input_contents.append(request.raw_input_contents[0])
    elif how == "raw without inputs":
        del request.inputs[:]
    else:
        request.raw_input_contents.append(b"")
    return request, how


def _duplicate_input_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    typed = n % 2 == 1
    request = pb.ModelInferRequest(model_name=target.model)
    shape = [int(rng.integers(1, 4)), *IMAGE]
    for _ in range(2):
        _tensor(request, rng, INPUT, "FP32", shape, typed)
    return request, "typed" if typed else "raw"


def _unknown_input_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    name = _odd_text(rng, n // 2, INPUT)
    if n % 2 == 0:
        request = _valid(rng, target)
        request.inputs[0].name = name
        return request, f"input renamed {name[:40]!r}"
    request = _valid(rng, target)
    datatype = _pick(KSERVE_DATATYPES, n // 2)
    _tensor(request, rng, name or "extra", datatype, [1], typed=False)
    return request, f"extra {datatype} input {(name or 'extra')[:40]!r}"


def _missing_input_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    request = pb.ModelInferRequest(model_name=target.model)
    if n % 2:
        request.outputs.add(name="logits")
    return request, "no inputs"


def _unknown_output_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    request = _valid(rng, target)
    name = _odd_text(rng, n // 2, "logits")
    if n % 2:
        request.outputs.add(name="logits")
    request.outputs.add(name=name)
    return request, f"output {name[:40]!r}"


# Triton's own request parameters with a value of the wrong type (or none): Triton refuses
# these with INVALID_ARGUMENT ("invalid value type for 'priority' parameter ...").
BAD_PARAMETERS = (
    ("request", "priority", "string_param", "high"),
    ("request", "priority", "bool_param", True),
    ("request", "priority", "double_param", 0.5),
    ("request", "priority", None, None),
    ("request", "timeout", "string_param", "1s"),
    ("request", "timeout", "bool_param", True),
    ("request", "timeout", "double_param", 1.5),
    ("request", "timeout", None, None),
    ("request", "sequence_id", "bool_param", True),
    ("request", "sequence_id", "double_param", 2.5),
    ("request", "sequence_start", "string_param", "yes"),
    ("request", "sequence_start", "int64_param", 1),
    ("request", "sequence_end", "double_param", 1.0),
    ("output", "classification", "string_param", "3"),
    ("output", "classification", "bool_param", True),
    ("output", "classification", "double_param", 3.0),
)
# Unknown keys, or known ones with a value of the right type a server may not support:
# refused or ignored, never a crash.
ODD_PARAMETERS = (
    ("request", "", "string_param", "x"),
    ("request", "k" * 10_000, "int64_param", 1),
    ("request", "ü\x00", "bool_param", True),
    ("input", "binary_data_size", "int64_param", -1),
    ("input", "shared_memory_region", "string_param", "nowhere"),
    ("input", "", "double_param", float("nan")),
    ("output", "binary_data", "string_param", "v" * 10_000),
    ("output", "classification", "int64_param", 3),
    ("request", "sequence_id", "int64_param", 7),
    ("request", "priority", "int64_param", -1),
    ("request", "priority", "uint64_param", 2**64 - 1),
    ("request", "timeout", "int64_param", -5),
    ("request", "binary_data_output", "string_param", "yes"),
)


def _set_parameter(request: pb.ModelInferRequest, scope: str, key: str, field, value) -> None:
    if scope == "request":
        parameters = request.parameters
    elif scope == "input":
        parameters = request.inputs[0].parameters
    else:
        parameters = (request.outputs[0] if request.outputs else request.outputs.add()).parameters
        if not request.outputs[0].name:
            request.outputs[0].name = "logits"
    parameter = parameters[key]  # present even when no value is set: "no value" is a case
    if field is not None:
        setattr(parameter, field, value)


def _parameter_case(table: tuple) -> Builder:
    def build(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
        request = _valid(rng, target)
        scope, key, field, value = _pick(table, n)
        _set_parameter(request, scope, key, field, value)
        return request, f"{scope} {key[:20]!r} = {field}:{str(value)[:20]}"

    return build


def _unknown_model_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    if n % 7 == 3:
        # 100 kB: an error message that quotes it in full overflows grpc's trailing metadata.
        name = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 100_000))
    else:
        name = _odd_text(rng, n, target.model)
    request = _valid(rng, target)
    request.model_name = name
    return request, f"model {name[:40]!r} ({len(name)} chars)"


def _odd_versions(target: FuzzTarget) -> tuple[str, ...]:
    unserved = str(int(target.version) + 1)
    return (
        "²",
        "-1",
        "1e3",
        "0",
        unserved,
        "00",
        "1.0",
        " 1",
        "1 ",
        "+1",
        "0x1",
        "v1",
        "١",
        "１",
        "9" * 5000,  # beyond int()'s 4,300-digit limit: ValueError if parsed naively
        "1" * 100_000,
        "\x00",
        "1\x00",
        "-0",
        "latest",
    )


def _odd_version_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    version = _pick(_odd_versions(target), n)
    return _valid(rng, target, version), f"version {version[:20]!r} ({len(version)} chars)"


def _unparseable(rng: np.random.Generator, target: FuzzTarget, n: int) -> bytes:
    """Bytes that are certainly not a ModelInferRequest (checked by the generator)."""
    valid = _valid(rng, target).SerializeToString()
    options = (
        b"\xff\xff\xff",
        b"\xff" * int(rng.integers(4, 64)),
        b"\x0a\x10abc",  # field 1, length 16, 3 bytes follow
        b"\x0a\x02\xc3\x28",  # model_name that is not UTF-8
        b"\x0f",  # wire type 7 does not exist
        b"\x0b",  # a group that never ends
        b"\x10" + b"\xff" * 11,  # a varint of 11 bytes
        b"\x00\x01",  # field number 0
        valid[: len(valid) - int(rng.integers(1, 64))],  # cut inside the raw contents
    )
    return _pick(options, n)


def _unparseable_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    data = _unparseable(rng, target, n)
    return data, f"{len(data)} bytes {data[:12]!r}"


def _random_bytes_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    data = rng.bytes(int(rng.integers(1, 2048)))
    return data, f"{len(data)} random bytes"


def _mutated_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    data = bytearray(_valid(rng, target).SerializeToString())
    for position in rng.integers(0, len(data), int(rng.integers(1, 9))):
        data[position] ^= int(rng.integers(1, 256))
    return bytes(data), "valid request, bytes flipped"


def _control_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    request = _valid(rng, target, version=target.version if n % 2 else "")
    # Odd ids are the client's business: they come back, they are not refused.
    request.id = _pick(("", "a", "🙂" * 100, "i" * 10_000), n)
    return request, f"batch {request.inputs[0].shape[0]}, version {request.model_version!r}"


def _typed_control_case(rng: np.random.Generator, target: FuzzTarget, n: int) -> Built:
    request = pb.ModelInferRequest(model_name=target.model)
    _tensor(request, rng, INPUT, "FP32", [int(rng.integers(1, 4)), *IMAGE], typed=True)
    return request, "fp32_contents"


KINDS: dict[str, tuple[Builder, frozenset[str]]] = {
    "valid": (_control_case, frozenset({OK})),
    "valid_typed": (_typed_control_case, frozenset({OK})),
    "datatype": (_datatype_case, frozenset({INVALID})),
    "shape": (_shape_case, frozenset({INVALID})),
    "batch_size": (_batch_case, frozenset({INVALID})),
    "byte_size": (_byte_size_case, frozenset({INVALID})),
    "typed_count": (_typed_count_case, frozenset({INVALID})),
    "raw_and_typed": (_raw_and_typed_case, frozenset({INVALID})),
    "raw_count": (_raw_count_case, frozenset({INVALID})),
    "duplicate_input": (_duplicate_input_case, frozenset({INVALID})),
    "unknown_input": (_unknown_input_case, frozenset({INVALID})),
    "missing_input": (_missing_input_case, frozenset({INVALID})),
    "unknown_output": (_unknown_output_case, frozenset({INVALID})),
    "bad_parameter": (_parameter_case(BAD_PARAMETERS), frozenset({INVALID})),
    "odd_parameter": (_parameter_case(ODD_PARAMETERS), frozenset({OK, INVALID})),
    "unknown_model": (_unknown_model_case, frozenset({NOT_FOUND})),
    "odd_version": (_odd_version_case, frozenset({NOT_FOUND})),
    "unparseable": (_unparseable_case, frozenset({INVALID})),
    "random_bytes": (_random_bytes_case, frozenset({INVALID, NOT_FOUND})),
    "mutated_bytes": (_mutated_case, frozenset({OK, INVALID, NOT_FOUND})),
}


def _parses(data: bytes) -> bool:
    try:
        pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return False
    return True


def malformed_requests(
    seed: int, count: int, target: FuzzTarget, start: int = 0
) -> Iterator[FuzzCase]:
    """`count` ModelInfer messages, mostly malformed, each with the codes it may get: cases
    `start` to `start + count - 1` of the seed's sequence.

    Kinds take turns (KINDS), and each kind cycles through its own list of mistakes, so a
    run of a thousand covers every kind, every KServe datatype and every odd version;
    case i depends only on (seed, i).
    """
    kinds = list(KINDS.items())
    for i in range(start, start + count):
        kind, (build, allowed) = kinds[i % len(kinds)]
        rng = np.random.default_rng((seed, i))
        message, detail = build(rng, target, i // len(kinds))
        if isinstance(message, pb.ModelInferRequest):
            message = message.SerializeToString()
        elif kind == "unparseable":
            assert not _parses(message), f"meant to be unparseable, but parses: {message[:40]!r}"
        elif not _parses(message):
            allowed = frozenset({INVALID})  # garbage that is not even a message
        if kind == "unknown_model" and detail.startswith("model ''"):
            allowed = frozenset({NOT_FOUND, INVALID})  # no name at all: either is fair
        yield FuzzCase(kind, detail, message, allowed)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def fuzz_unary(
    channel: grpc.Channel,
    cases: Iterable[FuzzCase],
    *,
    threads: int = 4,
    timeout_s: float = CALL_TIMEOUT_S,
) -> list[Outcome]:
    """Send each case as one ModelInfer call (the bytes as they are), a few at a time."""
    call = channel.unary_unary(MODEL_INFER)  # no (de)serializers: bytes out, bytes back

    def send(case: FuzzCase) -> Outcome:
        try:
            call(case.message, timeout=timeout_s)
        except grpc.RpcError as error:
            return Outcome(case.kind, case.detail, case.allowed, error.code().name, error.details())
        return Outcome(case.kind, case.detail, case.allowed, OK, "")

    outcomes: list[Outcome] = []
    with ThreadPoolExecutor(threads) as pool:
        # A chunk at a time: the cases (some of them 100 kB) need not all be in memory.
        for chunk in _chunks(cases, 64 * threads):
            outcomes += pool.map(send, chunk)
    return outcomes


_END = object()


class _Stream:
    """One ModelStreamInfer call driven in lockstep: send a message, await its reply."""

    def __init__(self, channel: grpc.Channel, deadline_s: float) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._replies: queue.Queue = queue.Queue()
        call = channel.stream_stream(
            MODEL_STREAM_INFER, response_deserializer=pb.ModelStreamInferResponse.FromString
        )
        self.call = call(iter(self._requests.get, _END), timeout=deadline_s)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for reply in self.call:
                self._replies.put(reply)
            self._replies.put(_END)
        except grpc.RpcError as error:
            self._replies.put(error)

    def exchange(self, message: bytes, timeout_s: float) -> Any:
        """The reply, an RpcError if the stream broke, _END if it ended, None on a hang."""
        self._requests.put(message)
        try:
            return self._replies.get(timeout=timeout_s)
        except queue.Empty:
            self.call.cancel()
            return None

    def abandon(self) -> None:
        self._requests.put(_END)
        self.call.cancel()

    def close(self, timeout_s: float) -> str:
        """Half-close and wait for the end: OK, or what the stream ended with."""
        self._requests.put(_END)
        try:
            last = self._replies.get(timeout=timeout_s)
        except queue.Empty:
            self.call.cancel()
            return HANG
        if last is _END:
            return OK
        return last.code().name if isinstance(last, grpc.RpcError) else "UNEXPECTED_REPLY"


def fuzz_stream(
    channel: grpc.Channel,
    cases: Iterable[FuzzCase],
    *,
    per_stream: int = 50,
    timeout_s: float = CALL_TIMEOUT_S,
) -> tuple[list[Outcome], list[str]]:
    """Send the cases on ModelStreamInfer, `per_stream` to a stream, one reply awaited at a
    time. Returns one outcome per case (OK, ERROR for a reply with error_message, INTERNAL
    where that message says so, BROKEN_<code> or HANG where the stream failed, after which
    a new stream takes the next case) and the problems of the streams themselves."""
    outcomes: list[Outcome] = []
    problems: list[str] = []
    for chunk in _chunks(cases, per_stream):
        stream = _Stream(channel, deadline_s=timeout_s * len(chunk))
        for case in chunk:
            reply = stream.exchange(case.message, timeout_s)
            code, message = _stream_code(reply)
            outcomes.append(Outcome(case.kind, case.detail, case.allowed, code, message))
            if reply is None or not isinstance(reply, pb.ModelStreamInferResponse):
                problems.append(f"stream {code} after {case.kind} ({case.detail[:60]})")
                stream.abandon()
                stream = _Stream(channel, deadline_s=timeout_s * len(chunk))
        ended = stream.close(timeout_s)
        if ended != OK:
            problems.append(f"stream ended with {ended} instead of OK")
    return outcomes, problems


def _stream_code(reply: Any) -> tuple[str, str]:
    if reply is None:
        return HANG, "no reply within the deadline"
    if reply is _END:
        return "BROKEN_ENDED", "the stream ended without a reply"
    if isinstance(reply, grpc.RpcError):
        return f"BROKEN_{reply.code().name}", reply.details() or ""
    if not reply.error_message:
        return OK, ""
    if STREAM_INTERNAL in reply.error_message:
        return "INTERNAL", reply.error_message
    return "ERROR", reply.error_message


def stream_problems(outcomes: Iterable[Outcome]) -> list[Outcome]:
    """Stream replies that break the contract: INTERNAL, a hang, a broken stream, an error
    for a valid request, or no error for a malformed one."""
    return [
        o
        for o in outcomes
        if o.forbidden
        or o.code.startswith("BROKEN")
        or (o.code == OK and OK not in o.allowed)
        or (o.code == "ERROR" and o.allowed == {OK})
    ]


# -- load that records every reply -------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    start: float  # time.monotonic() when sent
    end: float
    code: str  # OK, a status code's name, or TRUNCATED
    version: str  # the version that answered ("" unless OK)


def valid_request(model: str, batch: int = 2, seed: int = 0, version: str = "") -> bytes:
    """A serialized ModelInfer request of `batch` random images for a zoo-like model."""
    images = _images(np.random.default_rng(seed), batch)
    return build_infer_request(model, {INPUT: images}, version or None).SerializeToString()


def judge_reply(data: bytes, batch: int) -> tuple[str, str]:
    """(OK or TRUNCATED, the version that answered) for a serialized ModelInferResponse."""
    reply = pb.ModelInferResponse.FromString(data)
    whole = len(reply.outputs) == len(reply.raw_output_contents) > 0 and all(
        list(out.shape) == [batch, CLASSES] and len(raw) == batch * CLASSES * 4
        for out, raw in zip(reply.outputs, reply.raw_output_contents, strict=True)
    )
    return (OK if whole else TRUNCATED), reply.model_version


class Load:
    """Background requests: per target, threads that send its request over and over until
    stopped, recording every reply. `targets` maps a label to (serialized request, batch)."""

    def __init__(
        self,
        address: str,
        targets: dict[str, tuple[bytes, int]],
        *,
        threads: int = 1,
        timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        self._channel = grpc.insecure_channel(address)
        self._call = self._channel.unary_unary(MODEL_INFER)
        self._targets = targets
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self.replies: dict[str, list[Reply]] = {label: [] for label in targets}
        self._threads = [
            threading.Thread(target=self._send, args=(label,), daemon=True)
            for label in targets
            for _ in range(threads)
        ]

    def _send(self, label: str) -> None:
        message, batch = self._targets[label]
        replies = self.replies[label]
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                code, version = judge_reply(self._call(message, timeout=self._timeout_s), batch)
            except grpc.RpcError as error:
                code, version = error.code().name, ""
            replies.append(Reply(start, time.monotonic(), code, version))
            if code != OK:
                # A refusal comes back at once: without a pause a thread would spin on a
                # server that is down or stopping, taking the CPU from everything else.
                self._stop.wait(0.01)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self._timeout_s + 5)
        self._channel.close()

    def counts(self) -> dict[str, int]:
        return {label: len(replies) for label, replies in self.replies.items()}

    def wait_for_more(self, n: int, timeout_s: float = WAIT_S) -> None:
        """Until every target has had `n` more replies than now."""
        before = self.counts()
        wait_until(
            lambda: all(len(self.replies[k]) >= before[k] + n for k in before),
            timeout_s,
            f"{n} more replies for each of {sorted(before)}",
        )

    def codes(self, label: str, since: float = 0.0) -> Counter:
        return Counter(r.code for r in self.replies[label] if r.start >= since)

    def versions(self, label: str, since: float = 0.0) -> Counter:
        return Counter(r.version for r in self.replies[label] if r.start >= since and r.code == OK)


# -- waiting, memory, metrics, reference answers -----------------------------------------


def wait_until(condition: Callable[[], bool], timeout_s: float = WAIT_S, what: str = "") -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout_s:.0f} s: {what or condition}")
        time.sleep(0.05)


def rss_kb(pid: int) -> int:
    """Resident memory of a process (VmRSS), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def in_flight(metrics_port: int, model: str) -> float:
    """Requests the server is serving now for `model`, from its metrics endpoint."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    wanted = ("zoo_inference_in_flight{", f'model="{model}"')
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(wanted[0]) and wanted[1] in line
    )


def index_states(address: str) -> dict[tuple[str, str], tuple[str, str]]:
    """RepositoryIndex as {(model, version): (state, reason)}."""
    with grpc.insecure_channel(address) as channel:
        reply = GRPCInferenceServiceStub(channel).RepositoryIndex(
            pb.RepositoryIndexRequest(), timeout=CALL_TIMEOUT_S
        )
    return {(m.name, m.version): (m.state, m.reason) for m in reply.models}


def reference_outputs(model_dir: Path, version: int, images: np.ndarray) -> dict[str, np.ndarray]:
    """What in-process onnxruntime answers for `images` on that version's model file."""
    session = ort.InferenceSession(str(model_dir / str(version) / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {INPUT: images}), strict=True))


def exact_problems(
    address: str, model_dir: Path, *, version: int = 1, batch: int = 2, seed: int = 0
) -> list[str]:
    """A valid request through our client, against in-process onnxruntime on that version's
    file: [] when the reply is whole and equal, else what is wrong (the error, if refused)."""
    images = _images(np.random.default_rng(seed), batch)
    try:
        with ZooClient(address) as client:
            got = client.infer_raw(model_dir.name, {INPUT: images}, timeout=CALL_TIMEOUT_S)
    except InferenceServerException as error:
        return [str(error)]
    return [
        f"{name}: shape {list(got[name].shape)}, expected {list(value.shape)}"
        if got[name].shape != value.shape
        else f"{name}: max |diff| {np.abs(got[name] - value).max():.3g}"
        for name, value in reference_outputs(model_dir, version, images).items()
        if got[name].shape != value.shape or not np.allclose(got[name], value, atol=1e-5)
    ]


# -- repository faults -------------------------------------------------------------------
# Each takes a model folder, damages it as an operator (or a failing disk) might, and
# returns the function that undoes it. Replacements are staged beside and renamed into
# place where an operator would do so; "truncated" and "garbage over" write in place.

Restore = Callable[[], None]


def _newest_version(model_dir: Path) -> int:
    return max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())


def corrupt_new_version(model_dir: Path, rng: np.random.Generator) -> Restore:
    version = _newest_version(model_dir) + 1
    staged = model_dir / f".{version}.staged"
    staged.mkdir()
    (staged / "model.onnx").write_bytes(rng.bytes(50_000))
    staged.rename(model_dir / str(version))
    return lambda: shutil.rmtree(model_dir / str(version))


def garbage_over_served_version(model_dir: Path, rng: np.random.Generator) -> Restore:
    path = model_dir / str(_newest_version(model_dir)) / "model.onnx"
    original = path.read_bytes()
    path.write_bytes(rng.bytes(len(original)))
    return lambda: path.write_bytes(original)


def config_truncated_to_0_bytes(model_dir: Path, rng: np.random.Generator) -> Restore:
    path = model_dir / "config.pbtxt"
    original = path.read_bytes()
    os.truncate(path, 0)
    return lambda: path.write_bytes(original)


def config_emptied(model_dir: Path, rng: np.random.Generator) -> Restore:
    path = model_dir / "config.pbtxt"
    original = path.read_bytes()
    staged = model_dir / ".config.staged"
    staged.write_text("# emptied\n\n")
    staged.rename(path)
    return lambda: path.write_bytes(original)


def config_half_written(model_dir: Path, rng: np.random.Generator) -> Restore:
    path = model_dir / "config.pbtxt"
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])
    return lambda: path.write_bytes(original)


def model_folder_deleted(model_dir: Path, rng: np.random.Generator) -> Restore:
    backup = model_dir.parent / f".{model_dir.name}.backup"
    shutil.copytree(model_dir, backup)
    shutil.rmtree(model_dir)
    return lambda: backup.rename(model_dir)


FAULTS: dict[str, Callable[[Path, np.random.Generator], Restore]] = {
    "corrupt new version": corrupt_new_version,
    "garbage over the served version": garbage_over_served_version,
    "config.pbtxt truncated to 0 bytes": config_truncated_to_0_bytes,
    "config.pbtxt emptied": config_emptied,
    "config.pbtxt half written": config_half_written,
    "model folder deleted": model_folder_deleted,
}


def fault_seen(address: str, model: str, fault: str, served: str, config: bytes) -> bool:
    """Whether the server shows that it saw `fault` on `model`, which served version
    `served` with config reply `config` (serialized) before it."""
    with grpc.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        if fault == "model folder deleted":
            return not stub.ModelReady(
                pb.ModelReadyRequest(name=model), timeout=CALL_TIMEOUT_S
            ).ready
        states = index_states(address)
        if fault == "corrupt new version":
            new = states.get((model, str(int(served) + 1)), ("", ""))
            return new[0] == UNAVAILABLE and bool(new[1])
        if fault == "garbage over the served version":
            return bool(states.get((model, served), ("", ""))[1])
        # A changed config shows as a reason (refused) or as the config now served.
        if any(reason for (name, _), (_, reason) in states.items() if name == model):
            return True
        try:
            now = stub.ModelConfig(pb.ModelConfigRequest(name=model), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError:
            return True  # no longer served: seen
        return now.SerializeToString() != config


# -- fixtures ----------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A test that takes `fault` runs once per repository fault, named as in FAULTS.
    if "fault" in metafunc.fixturenames:
        metafunc.parametrize("fault", list(FAULTS))


@pytest.fixture(scope="session")
def reliability_repository(tmp_path_factory: pytest.TempPathFactory, export_model) -> Path:
    """tiny_mlp, tiny_cnn and tiny_slow (one session call at a time, no queue limit of its
    own, so that the server's --max-queue-size decides). Read-only: copy to change."""
    repository = tmp_path_factory.mktemp("reliability")
    for name in ("tiny_mlp", "tiny_cnn"):
        export_model(repository, name)
    slow = export_model(repository, "tiny_slow")
    config = config_for_card(read_card(slow), max_batch_size=64)
    config.instance_group.add(count=1)
    write_model_config(slow, config)
    return repository


@pytest.fixture
def repository_copy(reliability_repository: Path, tmp_path: Path) -> Path:
    """A private copy of reliability_repository, free to damage."""
    return Path(shutil.copytree(reliability_repository, tmp_path / "repository"))


@pytest.fixture(scope="session")
def fuzz_target() -> FuzzTarget:
    return FuzzTarget("tiny_mlp", max_batch_size=64)


@pytest.fixture(scope="session")
def fuzz_cases() -> Callable[..., Iterator[FuzzCase]]:
    return malformed_requests


@pytest.fixture(scope="session")
def send_unary() -> Callable[..., list[Outcome]]:
    return fuzz_unary


@pytest.fixture(scope="session")
def send_stream() -> Callable[..., tuple[list[Outcome], list[str]]]:
    return fuzz_stream


@pytest.fixture(scope="session")
def stream_failures() -> Callable[[Iterable[Outcome]], list[Outcome]]:
    return stream_problems


@pytest.fixture
def background_load() -> Iterator[Callable[..., Load]]:
    """A factory of started Load objects, all stopped at teardown (even after a failure)."""
    started: list[Load] = []

    def start(address: str, targets: dict[str, tuple[bytes, int]], **options: Any) -> Load:
        started.append(Load(address, targets, **options).__enter__())
        return started[-1]

    yield start
    for load in started:
        load.stop()


@pytest.fixture(scope="session")
def request_bytes() -> Callable[..., bytes]:
    return valid_request


@pytest.fixture(scope="session")
def judge() -> Callable[[bytes, int], tuple[str, str]]:
    return judge_reply


@pytest.fixture(scope="session")
def until() -> Callable[..., None]:
    return wait_until


@pytest.fixture(scope="session")
def rss() -> Callable[[int], int]:
    return rss_kb


@pytest.fixture(scope="session")
def serving_now() -> Callable[[int, str], float]:
    return in_flight


@pytest.fixture(scope="session")
def repository_index() -> Callable[[str], dict[tuple[str, str], tuple[str, str]]]:
    return index_states


@pytest.fixture(scope="session")
def reference() -> Callable[[Path, int, np.ndarray], dict[str, np.ndarray]]:
    return reference_outputs


@pytest.fixture(scope="session")
def exactly() -> Callable[..., list[str]]:
    return exact_problems


@pytest.fixture(scope="session")
def faults() -> dict[str, Callable[[Path, np.random.Generator], Restore]]:
    return FAULTS


@pytest.fixture(scope="session")
def seen() -> Callable[[str, str, str, str, bytes], bool]:
    return fault_seen
