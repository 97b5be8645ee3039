"""A strict model registry: adding a model takes one decorated builder in its family's file.

Duplicate names raise at import; an unknown name raises `NotFoundError` suggesting the
closest registered names (as torchvision's `get_model` does).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from zoo.errors import InvalidArgumentError, NotFoundError

Family = Literal["plain", "batchnorm", "selu", "highway", "resnet", "grid_lstm"]


class ModelConfig(BaseModel):
    """Base of every family's frozen, typed architecture config."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TrainRecipe(BaseModel):
    """A model's default training hyperparameters (what `zoo train NAME` uses)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(5, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD's (Nesterov when above 0)")
    schedule: Literal["constant", "onecycle", "cosine"] = "onecycle"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment_shift: int = Field(0, ge=0, description="random translation in pixels (0: none)")
    grad_clip: float | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: Family
    builder: Callable[..., nn.Module]
    config: ModelConfig
    recipe: TrainRecipe
    description: str
    # MNIST test accuracy its default recipe must reach, None for baselines.
    target_accuracy: float | None = None

    def build(self, **overrides: Any) -> nn.Module:
        return self.builder(self.configure(**overrides))

    def configure(self, **overrides: Any) -> ModelConfig:
        try:
            return self.config.model_validate({**self.config.model_dump(), **overrides})
        except pydantic.ValidationError as error:
            first = error.errors()[0]
            raise InvalidArgumentError(
                f"model {self.name!r}: config {'.'.join(map(str, first['loc']))}: {first['msg']}"
            ) from None


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    family: Family,
    config: ModelConfig,
    recipe: TrainRecipe | None = None,
    target_accuracy: float | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register `builder(config) -> nn.Module` under `name`; its docstring is the description."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice")
        description = (builder.__doc__ or "").strip().splitlines()[0] if builder.__doc__ else ""
        _REGISTRY[name] = ModelSpec(
            name, family, builder, config, recipe or TrainRecipe(), description, target_accuracy
        )
        return builder

    return decorate


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else f"; known: {', '.join(sorted(_REGISTRY))}"
        )
        raise NotFoundError(f"unknown model {name!r}{hint}") from None


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model (random weights) with optional config overrides."""
    return get_spec(name).build(**overrides)


def list_models() -> list[ModelSpec]:
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]
