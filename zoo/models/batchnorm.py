"""Batch Normalization (Ioffe & Szegedy 2015): MLP and CNN with BN after each linear/conv layer.

The same two nets, with `norm="none"`, are the plain baselines (zoo.models.plain);
`norm="layer"` and `reparam="weight"|"spectral"` give the lecture's "to learn more"
normalisations as options.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo.models.layers import (
    Activation,
    Norm,
    Normalize,
    Reparam,
    activation,
    norm_1d,
    norm_2d,
    reparametrise,
)
from zoo.models.registry import ModelConfig, TrainRecipe, register_model


class MLPConfig(ModelConfig):
    hidden: tuple[int, ...] = (256, 256, 256)
    activation: Activation = "relu"
    norm: Norm = "batch"
    reparam: Reparam = "none"


class MLP(nn.Module):
    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [Normalize(), nn.Flatten()]
        width = 28 * 28
        for out in config.hidden:
            linear = nn.Linear(width, out, bias=config.norm != "batch")  # BN's beta is the bias
            layers += [
                reparametrise(linear, config.reparam),
                *norm_1d(config.norm, out),
                activation(config.activation),
            ]
            width = out
        layers.append(nn.Linear(width, 10))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 28, 28] -> [N, 10]
        return self.net(x)


class CNNConfig(ModelConfig):
    channels: tuple[int, ...] = (32, 64)  # one stage per entry: two 3x3 convs, then 2x2 max-pool
    fc: int = 128
    activation: Activation = "relu"
    norm: Norm = "batch"
    reparam: Reparam = "none"


class CNN(nn.Module):
    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        act = config.activation
        layers: list[nn.Module] = [Normalize()]
        in_ch, size = 1, 28
        for out_ch in config.channels:
            for _ in range(2):
                conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=config.norm != "batch")
                layers += [
                    reparametrise(conv, config.reparam),
                    *norm_2d(config.norm, out_ch),
                    activation(act),
                ]
                in_ch = out_ch
            layers.append(nn.MaxPool2d(2))
            size //= 2
        fc = nn.Linear(in_ch * size * size, config.fc, bias=config.norm != "batch")
        layers += [
            nn.Flatten(),
            reparametrise(fc, config.reparam),
            *norm_1d(config.norm, config.fc),
            activation(act),
        ]
        layers.append(nn.Linear(config.fc, 10))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 28, 28] -> [N, 10]
        return self.net(x)


@register_model(
    "bn_mlp", family="batchnorm", config=MLPConfig(), recipe=TrainRecipe(epochs=5, lr=2e-3)
)
def bn_mlp(config: MLPConfig) -> MLP:
    """3x256 ReLU MLP with BatchNorm before each activation."""
    return MLP(config)


@register_model(
    "bn_mlp_sigmoid",
    family="batchnorm",
    config=MLPConfig(activation="sigmoid"),
    recipe=TrainRecipe(epochs=5, lr=2e-3),
)
def bn_mlp_sigmoid(config: MLPConfig) -> MLP:
    """3x256 sigmoid MLP with BatchNorm: BN keeps sigmoid units out of saturation."""
    return MLP(config)


@register_model(
    "bn_cnn",
    family="batchnorm",
    target_accuracy=0.994,
    config=CNNConfig(),
    recipe=TrainRecipe(epochs=5, lr=3e-3, optimizer="adamw", weight_decay=5e-4, augment_shift=2),
)
def bn_cnn(config: CNNConfig) -> CNN:
    """Conv 32-32-pool-64-64-pool, FC 128, BatchNorm after every conv and linear layer."""
    return CNN(config)
