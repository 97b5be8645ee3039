"""The model card: one record describing an artifact from end to end.

Training writes it into the checkpoint, export into the ONNX graph's
`metadata_props` (key `modelzoo.card`) and beside the model in the repository
(`<repo>/<model>/card.json`); the server and the client read it back instead of
guessing names, shapes, labels or normalisation.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# The ONNX metadata_props key and the repository file name that hold the card.
CARD_METADATA_KEY = "modelzoo.card"
CARD_FILENAME = "card.json"

# Fixed graph interface of every zoo model (see zoo.models: each model owns its
# normalisation, so clients send raw [0, 1] pixels).
INPUT_NAME = "images"
OUTPUT_LOGITS = "logits"
OUTPUT_PROBABILITIES = "probabilities"
MNIST_LABELS = tuple(str(d) for d in range(10))


class TensorSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    datatype: str = Field(description="KServe v2 datatype, e.g. FP32")
    shape: tuple[int, ...] = Field(description="-1 marks the dynamic batch dimension")


class Metric(BaseModel):
    model_config = ConfigDict(frozen=True)

    value: float
    command: str = Field(description="the command that measured it")


class Variant(BaseModel):
    """What a reduced-precision variant (`<model>_int8`, `<model>_fp16`) was made from, and how."""

    model_config = ConfigDict(frozen=True)

    of: str = Field(description="the float model it was made from")
    precision: str = Field(description="int8 or fp16")
    source_sha256: str = Field(description="sha256 of the float model.onnx it was made from")
    method: str
    calibration: dict[str, Any] = Field(
        default_factory=dict, description="int8: the images that set the activation ranges"
    )


class ModelCard(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(description="registered model name")
    family: str
    architecture: str = Field(description="the module class")
    config: dict[str, Any] = Field(description="the family's typed config, as JSON")
    params: int
    description: str = ""
    inputs: tuple[TensorSpec, ...] = (
        TensorSpec(name=INPUT_NAME, datatype="FP32", shape=(-1, 1, 28, 28)),
    )
    outputs: tuple[TensorSpec, ...] = (
        TensorSpec(name=OUTPUT_LOGITS, datatype="FP32", shape=(-1, 10)),
        TensorSpec(name=OUTPUT_PROBABILITIES, datatype="FP32", shape=(-1, 10)),
    )
    input_range: tuple[float, float] = (0.0, 1.0)
    normalisation_mean: float = Field(description="applied inside the model")
    normalisation_std: float = Field(description="applied inside the model")
    labels: tuple[str, ...] = MNIST_LABELS
    training: dict[str, Any] = Field(default_factory=dict, description="hyperparameters and data")
    metrics: dict[str, Metric] = Field(default_factory=dict)
    opset: int | None = None
    onnx_sha256: str | None = None
    variant: Variant | None = Field(None, description="set on a reduced-precision variant")

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        return cls.model_validate(json.loads(text))
