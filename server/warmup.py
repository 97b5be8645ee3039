"""Triton's model warm-up: requests a version runs before it is ready.

Each `model_warmup` sample of the config becomes one request: each input is one batch
item (the sample's dims, without the batch dimension) of zeros, random values or a
file's contents, repeated `batch_size` times along the batch dimension. The sample
runs `count` times (at least once), through what a batch of requests goes through
(reshape, session, reshape back) but outside the batcher, so it is not counted in the
statistics. The loader returns, and the version becomes READY, only once every sample
has run; any failure is a load failure with its reason. As in Triton, a sample of
batch_size 0 is skipped, a model without a batch dimension takes batch_size 1 only,
random BYTES are empty strings, and `input_data_file` is read from the model's
`warmup` folder (raw little-endian row-major values; BYTES length-prefixed).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from proto.model_config_pb2 import ModelConfig, ModelWarmup
from server.codec import TensorSpec, decode_bytes
from zoo.errors import FailedPreconditionError, InvalidArgumentError
from zoo.repository import kserve_datatype

log = logging.getLogger(__name__)

WARMUP_FOLDER = "warmup"  # Triton's folder for input_data_file, inside the model's
# Random inputs are reproducible: a warm-up that fails, fails every time.
RANDOM_SEED = 0


@dataclass(frozen=True)
class WarmupSample:
    name: str
    inputs: dict[str, np.ndarray]
    batch_size: int
    count: int


def zeros(spec: TensorSpec, dims: tuple[int, ...]) -> np.ndarray:
    """A tensor of zeros (empty strings for BYTES) for `spec`."""
    if spec.dtype.kind == "O":  # BYTES: onnxruntime's string tensors take str objects
        return np.full(dims, "", dtype=object)
    return np.zeros(dims, spec.dtype)


def _random(spec: TensorSpec, dims: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dtype = spec.dtype
    if dtype.kind == "O":  # as Triton: random strings are empty ones
        return zeros(spec, dims)
    if dtype.kind == "f":
        # Uniform in [0, 1): random bit patterns (Triton's) would include NaN and inf.
        return rng.random(dims).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, dims).astype(dtype)
    # Integers: random bit patterns over the whole range, as Triton's.
    return np.frombuffer(rng.bytes(math.prod(dims) * dtype.itemsize), dtype).reshape(dims)


def _from_file(
    where: str, spec: TensorSpec, dims: tuple[int, ...], model_dir: Path, name: str
) -> np.ndarray:
    folder = model_dir / WARMUP_FOLDER
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise InvalidArgumentError(f"{where}: input_data_file {name!r} leads outside {folder}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InvalidArgumentError(
            f"{where}: input_data_file {name!r}: {error.strerror} ({path})"
        ) from None
    count = math.prod(dims)
    if spec.dtype.kind == "O":
        items = decode_bytes(data)
        if len(items) != count:
            raise InvalidArgumentError(
                f"{where}: input_data_file {name!r} holds {len(items)} strings, dims "
                f"{list(dims)} need {count}"
            )
        try:
            texts = [item.decode() for item in items]
        except UnicodeDecodeError as error:
            raise InvalidArgumentError(
                f"{where}: input_data_file {name!r} holds a string that is not UTF-8 text"
                f" ({error.reason})"
            ) from None
        array = np.empty(count, dtype=object)
        array[:] = texts
        return array.reshape(dims)
    size = count * spec.dtype.itemsize
    if len(data) < size:  # as Triton, a longer file's first bytes are used
        raise InvalidArgumentError(
            f"{where}: dims {list(dims)} of {spec.datatype} need {size} bytes, input_data_file "
            f"{name!r} has {len(data)}"
        )
    return np.frombuffer(data[:size], spec.dtype).reshape(dims)


def _item(
    where: str,
    given: ModelWarmup.Input,
    spec: TensorSpec,
    batched: bool,
    model_dir: Path,
    rng: np.random.Generator,
) -> np.ndarray:
    """One batch item of one input, checked against the model's input as a request is."""
    datatype = kserve_datatype(given.data_type)
    if datatype != spec.datatype:
        raise InvalidArgumentError(f"{where}: data_type {datatype}, the input is {spec.datatype}")
    dims = tuple(given.dims)
    want = spec.shape[1:] if batched else spec.shape
    if (
        len(dims) != len(want)
        or any(d < 0 for d in dims)
        or any(w not in (-1, d) for w, d in zip(want, dims, strict=True))
    ):
        raise InvalidArgumentError(
            f"{where}: dims {list(dims)} do not fit the input's {list(want)} "
            "(give every dimension, without the batch dimension)"
        )
    kind = given.WhichOneof("input_data_type")
    if kind == "zero_data":
        return zeros(spec, dims)
    if kind == "random_data":
        return _random(spec, dims, rng)
    if kind == "input_data_file":
        return _from_file(where, spec, dims, model_dir, given.input_data_file)
    raise InvalidArgumentError(f"{where}: set one of zero_data, random_data or input_data_file")


def warmup_samples(
    config: ModelConfig, model_dir: Path, specs: Mapping[str, TensorSpec]
) -> list[WarmupSample]:
    """The config's warm-up samples as request tensors, each checked against the inputs."""
    batched = config.max_batch_size > 0
    rng = np.random.default_rng(RANDOM_SEED)
    samples = []
    for warmup in config.model_warmup:
        where = f"model_warmup {warmup.name!r}"
        size = warmup.batch_size
        if size == 0:
            log.info("%s of %s: batch_size 0, skipped (as Triton)", where, config.name)
            continue
        if size > max(config.max_batch_size, 1):
            raise InvalidArgumentError(
                f"{where}: batch_size {size} exceeds what the model takes "
                f"(max_batch_size {config.max_batch_size}"
                f"{', so 1' if not batched else ''})"
            )
        unknown = sorted(set(warmup.inputs) - set(specs))
        if unknown:
            raise InvalidArgumentError(
                f"{where}: {unknown} are not inputs of the model (it has {sorted(specs)})"
            )
        missing = sorted(set(specs) - set(warmup.inputs))
        if missing:
            raise InvalidArgumentError(f"{where}: no data for the model's inputs {missing}")
        inputs = {}
        for name, given in sorted(warmup.inputs.items()):
            item = _item(f"{where} input {name!r}", given, specs[name], batched, model_dir, rng)
            inputs[name] = np.repeat(item[np.newaxis], size, axis=0) if batched else item
        samples.append(WarmupSample(warmup.name, inputs, size, max(warmup.count, 1)))
    return samples


def warm_up(
    samples: list[WarmupSample],
    execute: Callable[[dict[str, np.ndarray]], object],
    label: str,
) -> None:
    """Run each sample `count` times; the first failure raises with its reason."""
    for sample in samples:
        for run in range(1, sample.count + 1):
            try:
                execute(sample.inputs)
            except Exception as error:  # onnxruntime's errors are untyped
                raise FailedPreconditionError(
                    f"model_warmup {sample.name!r} failed (run {run} of {sample.count}, "
                    f"batch size {sample.batch_size}): {error}"
                ) from None
        log.info(
            "%s: warm-up sample %r ran %d time(s) at batch size %d",
            label,
            sample.name,
            sample.count,
            sample.batch_size,
        )
