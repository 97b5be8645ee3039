"""Self-normalizing neural networks (Klambauer et al. 2017).

SELU with the paper's exact constants, LeCun-normal initialisation (variance 1/fan_in)
and AlphaDropout keep activations near zero mean and unit variance through depth.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from zoo.models.layers import Normalize
from zoo.models.registry import ModelConfig, TrainRecipe, register_model

# Klambauer et al. 2017, eq. 14: the fixed point (mean 0, variance 1) of the SELU map.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_LAMBDA = 1.0507009873554804934193349852946


class SELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SELU_LAMBDA * F.elu(x, alpha=SELU_ALPHA)


def lecun_normal_(linear: nn.Linear) -> None:
    nn.init.normal_(linear.weight, mean=0.0, std=math.sqrt(1.0 / linear.in_features))
    nn.init.zeros_(linear.bias)


class SELUConfig(ModelConfig):
    depth: int = Field(16, ge=1, description="hidden layers")
    width: int = 256
    alpha_dropout: float = Field(0.05, ge=0, lt=1)


class SELUMLP(nn.Module):
    def __init__(self, config: SELUConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [Normalize(), nn.Flatten()]
        width = 28 * 28
        for _ in range(config.depth):
            linear = nn.Linear(width, config.width)
            lecun_normal_(linear)
            layers += [linear, SELU()]
            if config.alpha_dropout:
                layers.append(nn.AlphaDropout(config.alpha_dropout))
            width = config.width
        head = nn.Linear(width, 10)
        lecun_normal_(head)
        layers.append(head)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 28, 28] -> [N, 10]
        return self.net(x)


@register_model(
    "selu_mlp",
    family="selu",
    target_accuracy=0.983,
    config=SELUConfig(),
    recipe=TrainRecipe(epochs=20, lr=1e-3, augment_shift=1),
)
def selu_mlp(config: SELUConfig) -> SELUMLP:
    """16x256 self-normalizing MLP (SELU, LeCun-normal init, AlphaDropout 0.05)."""
    return SELUMLP(config)
