"""Layers shared by several families."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from zoo.data import MNIST_MEAN, MNIST_STD

Activation = Literal["relu", "sigmoid", "tanh"]
Norm = Literal["none", "batch", "layer"]
# WeightNorm (Salimans & Kingma 2016) / SpectralNorm (Miyato et al. 2018) reparametrise
# a layer's weight; the exporter turns them back into plain weights.
Reparam = Literal["none", "weight", "spectral"]


class Normalize(nn.Module):
    """Fixed first step of every model: [0, 1] pixels -> standardised with MNIST's statistics.

    Owning it makes the exported graph self-contained: clients send raw pixels.
    """

    def __init__(self, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def activation(name: Activation) -> nn.Module:
    return {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[name]()


def reparametrise(layer: nn.Module, reparam: Reparam) -> nn.Module:
    if reparam == "weight":
        return nn.utils.parametrizations.weight_norm(layer)
    if reparam == "spectral":
        return nn.utils.parametrizations.spectral_norm(layer)
    return layer


def norm_1d(norm: Norm, features: int) -> list[nn.Module]:
    """The normalisation after a Linear layer.

    BatchNorm goes before the activation, as in Ioffe & Szegedy 2015.
    """
    if norm == "batch":
        return [nn.BatchNorm1d(features)]
    if norm == "layer":
        return [nn.LayerNorm(features)]
    return []


def norm_2d(norm: Norm, channels: int) -> list[nn.Module]:
    if norm == "batch":
        return [nn.BatchNorm2d(channels)]
    if norm == "layer":
        # LayerNorm over (C, H, W) of a conv map is GroupNorm with one group.
        return [nn.GroupNorm(1, channels)]
    return []


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
