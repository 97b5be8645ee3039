"""Triton's `reshape` of a config input or output.

A tensor's `dims` is the shape clients send and receive; `reshape.shape` is the shape
the model itself takes or gives (both without the batch dimension, which comes first
when max_batch_size > 0). Triton's densenet_onnx example: input dims [3, 224, 224]
with reshape [1, 3, 224, 224], output dims [1000] with reshape [1, 1000, 1, 1].

The two hold the same elements. With variable dimensions (-1) they must have as many,
and the fixed dimensions between consecutive variable ones must hold the same count
("[2, 4, -1, 6] -> [8, -1, 1, 6]": 2*4 = 8, 6 = 1*6): then the i-th variable
dimension of one is the i-th of the other, so every concrete shape maps to exactly
one on the other side. An empty reshape (a batch of scalars) needs dims of one
element and a batch dimension. These are Triton's rules.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from proto.model_config_pb2 import ModelConfig, ModelInput, ModelOutput
from zoo.errors import InvalidArgumentError, ModelExecutionError

VARIABLE = -1


def _segments(shape: Sequence[int]) -> list[int]:
    """Element counts of the fixed stretches around each variable dimension."""
    counts, count = [], 1
    for dim in shape:
        if dim == VARIABLE:
            counts.append(count)
            count = 1
        else:
            count *= dim
    return [*counts, count]


def check_reshape(tensor: ModelInput | ModelOutput, kind: str, max_batch_size: int) -> None:
    """Triton's checks of one reshape against its dims (InvalidArgumentError)."""
    where = (
        f"{kind} {tensor.name!r}: reshape {list(tensor.reshape.shape)} of dims {list(tensor.dims)}"
    )
    shape = tensor.reshape.shape
    if any(d < 1 and d != VARIABLE for d in [*tensor.dims, *shape]):
        raise InvalidArgumentError(f"{where}: dimensions must be >= 1, or -1 for any size")
    if not shape:
        if max_batch_size == 0:
            raise InvalidArgumentError(
                f"{where}: an empty reshape (a scalar) needs a batch dimension (max_batch_size > 0)"
            )
        if VARIABLE in tensor.dims or math.prod(tensor.dims) != 1:
            raise InvalidArgumentError(f"{where}: an empty reshape needs dims of one element")
        return
    dims_segments, shape_segments = _segments(tensor.dims), _segments(shape)
    if len(dims_segments) != len(shape_segments):
        raise InvalidArgumentError(f"{where}: they differ in their number of -1 dimensions")
    if dims_segments != shape_segments:
        raise InvalidArgumentError(f"{where}: they hold different numbers of elements")


def _concrete(pattern: Sequence[int], variables: Iterable[int]) -> tuple[int, ...]:
    """`pattern` with its variable dimensions filled, in order, from `variables`."""
    values = iter(variables)
    return tuple(next(values) if d == VARIABLE else d for d in pattern)


@dataclass(frozen=True)
class Reshape:
    """One tensor's two shapes (without the batch dimension): `outer` is the config's
    dims, `inner` the model's reshape.shape."""

    name: str
    outer: tuple[int, ...]
    inner: tuple[int, ...]
    batched: bool

    def _apply(self, array: np.ndarray, source: tuple, target: tuple) -> np.ndarray:
        batch = array.shape[:1] if self.batched else ()
        item = array.shape[len(batch) :]
        if len(item) != len(source) or any(
            want not in (VARIABLE, got) for want, got in zip(source, item, strict=True)
        ):
            raise ModelExecutionError(
                f"{self.name!r}: shape {list(array.shape)} does not fit its config's "
                f"{list(source)} (reshape to {list(target)})"
            )
        variables = (got for want, got in zip(source, item, strict=True) if want == VARIABLE)
        return array.reshape(batch + _concrete(target, variables))

    def to_model(self, array: np.ndarray) -> np.ndarray:
        """A request's tensor (dims) as the model takes it (reshape)."""
        return self._apply(array, self.outer, self.inner)

    def from_model(self, array: np.ndarray) -> np.ndarray:
        """The model's tensor (reshape) as the response gives it (dims)."""
        return self._apply(array, self.inner, self.outer)


def _reshape(tensor: ModelInput | ModelOutput, max_batch_size: int) -> Reshape | None:
    if not tensor.HasField("reshape"):
        return None
    return Reshape(tensor.name, tuple(tensor.dims), tuple(tensor.reshape.shape), max_batch_size > 0)


@dataclass(frozen=True)
class Reshapes:
    """A model's reshapes: inputs by name, outputs by position (None: as they are)."""

    inputs: dict[str, Reshape]
    outputs: tuple[Reshape | None, ...]

    @classmethod
    def of(cls, config: ModelConfig) -> Reshapes:
        """Checked (Triton's rules) and indexed; the outputs in the config's order."""
        for kind, tensors in (("input", config.input), ("output", config.output)):
            for tensor in tensors:
                if tensor.HasField("reshape"):
                    check_reshape(tensor, kind, config.max_batch_size)
        inputs = {t.name: r for t in config.input if (r := _reshape(t, config.max_batch_size))}
        outputs = tuple(_reshape(t, config.max_batch_size) for t in config.output)
        return cls(inputs, outputs if any(outputs) else ())

    def feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.inputs:
            return feeds
        return {
            name: (r.to_model(a) if (r := self.inputs.get(name)) else a)
            for name, a in feeds.items()
        }

    def results(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        if not self.outputs:
            return outputs
        return [r.from_model(o) if r else o for r, o in zip(self.outputs, outputs, strict=True)]


def model_dims(tensor: ModelInput | ModelOutput) -> list[int]:
    """The shape the model itself has for `tensor` (without the batch dimension)."""
    return list(tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims)
