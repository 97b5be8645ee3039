"""Residual networks (He et al. 2016), sized for 28x28 inputs.

The CIFAR-style layout of the paper (three stages, depth 6n+2) with 16/32/64 channels
at 28/14/7 pixels; n=2 gives 14 layers.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from zoo.models.layers import Normalize
from zoo.models.registry import ModelConfig, TrainRecipe, register_model


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and in_ch == out_ch
            else nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.residual(x) + self.shortcut(x))


class ResNetConfig(ModelConfig):
    channels: tuple[int, int, int] = (16, 32, 64)
    blocks_per_stage: int = Field(2, ge=1)


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        c0 = config.channels[0]
        layers: list[nn.Module] = [
            Normalize(),
            nn.Conv2d(1, c0, 3, padding=1, bias=False),
            nn.BatchNorm2d(c0),
            nn.ReLU(),
        ]
        in_ch = c0
        for stage, out_ch in enumerate(config.channels):
            for block in range(config.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_ch, out_ch, stride))
                in_ch = out_ch
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, 10)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 28, 28] -> [N, 10]
        return self.net(x)


@register_model(
    "resnet",
    family="resnet",
    target_accuracy=0.995,
    config=ResNetConfig(),
    recipe=TrainRecipe(epochs=8, lr=4e-3, optimizer="adamw", weight_decay=5e-4, augment_shift=2),
)
def resnet(config: ResNetConfig) -> ResNet:
    """ResNet-14 for 28x28: three stages of two basic blocks (16/32/64 channels)."""
    return ResNet(config)
