"""Highway networks (Srivastava, Greff & Schmidhuber 2015).

Each layer computes y = T(x)·H(x) + (1 − T(x))·x with a sigmoid transform gate T whose
bias starts negative, so that a deep net begins close to the identity (carry) and
gradients reach every layer.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from zoo.models.layers import Normalize
from zoo.models.registry import ModelConfig, TrainRecipe, register_model

# The paper initialises the transform-gate bias to -1 to -3 (deeper nets: more negative).
HIGHWAY_GATE_BIAS = -2.0


class HighwayLinear(nn.Module):
    def __init__(self, width: int, gate_bias: float) -> None:
        super().__init__()
        self.transform = nn.Linear(width, width)  # H
        self.gate = nn.Linear(width, width)  # T
        nn.init.constant_(self.gate.bias, gate_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.gate(x))
        return t * torch.relu(self.transform(x)) + (1 - t) * x


class HighwayConv(nn.Module):
    """Convolutional highway layer; H is conv-BN-ReLU (BN folds into the conv at export)."""

    def __init__(self, channels: int, gate_bias: float) -> None:
        super().__init__()
        self.transform = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )
        self.gate = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.constant_(self.gate.bias, gate_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.gate(x))
        return t * self.transform(x) + (1 - t) * x


class HighwayMLPConfig(ModelConfig):
    depth: int = Field(50, ge=1, description="highway layers")
    width: int = 100
    gate_bias: float = Field(HIGHWAY_GATE_BIAS, le=0)


class HighwayMLP(nn.Module):
    def __init__(self, config: HighwayMLPConfig) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            Normalize(), nn.Flatten(), nn.Linear(28 * 28, config.width), nn.ReLU()
        )
        self.layers = nn.Sequential(
            *(HighwayLinear(config.width, config.gate_bias) for _ in range(config.depth))
        )
        self.head = nn.Linear(config.width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 28, 28] -> [N, 10]
        return self.head(self.layers(self.stem(x)))


class HighwayCNNConfig(ModelConfig):
    channels: tuple[int, int] = (32, 48)  # at 14x14, then at 7x7
    layers_per_stage: int = Field(3, ge=1)
    gate_bias: float = Field(HIGHWAY_GATE_BIAS, le=0)


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]


class HighwayCNN(nn.Module):
    """Conv stem, then highway conv layers at 14x14 and at 7x7, global average pool."""

    def __init__(self, config: HighwayCNNConfig) -> None:
        super().__init__()
        c1, c2 = config.channels
        n = config.layers_per_stage
        self.net = nn.Sequential(
            Normalize(),
            *_conv_bn_relu(1, c1),
            nn.MaxPool2d(2),  # 28 -> 14
            *(HighwayConv(c1, config.gate_bias) for _ in range(n)),
            *_conv_bn_relu(c1, c2),
            nn.MaxPool2d(2),  # 14 -> 7
            *(HighwayConv(c2, config.gate_bias) for _ in range(n)),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(c2, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 28, 28] -> [N, 10]
        return self.net(x)


@register_model(
    "highway_mlp",
    family="highway",
    target_accuracy=0.980,
    config=HighwayMLPConfig(),
    recipe=TrainRecipe(epochs=12, lr=1e-3, augment_shift=1),
)
def highway_mlp(config: HighwayMLPConfig) -> HighwayMLP:
    """50 fully connected highway layers of width 100 (gate bias -2)."""
    return HighwayMLP(config)


@register_model(
    "highway_cnn",
    family="highway",
    target_accuracy=0.995,
    config=HighwayCNNConfig(),
    recipe=TrainRecipe(epochs=8, lr=3e-3, optimizer="adamw", weight_decay=5e-4, augment_shift=2),
)
def highway_cnn(config: HighwayCNNConfig) -> HighwayCNN:
    """Convolutional highway net: 2 conv + 6 highway conv layers (32 ch at 14x14, 48 at 7x7)."""
    return HighwayCNN(config)
