"""Layers shared by several families."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from zoo.data import MNIST_MEAN, MNIST_STD
from zoo.models.batch_renorm import BatchRenorm1d, BatchRenorm2d

Activation = Literal["relu", "sigmoid", "tanh"]
Norm = Literal["none", "batch", "batch_renorm", "layer", "group", "instance"]
# Wu & He 2018 (Group Normalization), Sec. 3.1: G = 32 groups by default.
GROUP_NORM_GROUPS = 32
# A group's statistics come from its channels times the map's positions in a conv net, but
# from its features alone after a Linear layer, so a group of features must be larger.
# Two channels a group at least: one is instance norm, the worst setting of the paper's
# Table 3. Sixteen features a group: our choice, so that no group's mean and std rest on a
# handful of values (two features would always normalise to -1 and +1).
GROUP_NORM_MIN_CHANNELS = 2
GROUP_NORM_MIN_FEATURES = 16
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


def group_count(channels: int, min_per_group: int) -> int:
    """GROUP_NORM_GROUPS groups, fewer where that would leave a group smaller than
    `min_per_group`; always a divisor of `channels` (GroupNorm needs equal groups)."""
    return math.gcd(channels, min(GROUP_NORM_GROUPS, max(1, channels // min_per_group)))


def norm_1d(norm: Norm, features: int) -> list[nn.Module]:
    """The normalisation after a Linear layer.

    BatchNorm goes before the activation, as in Ioffe & Szegedy 2015. Instance norm
    normalises each channel of each example over its positions; a feature vector has one
    position per channel, whose variance is 0, so "instance" here is the nearest thing that
    is defined and, like instance norm, independent of the batch: LayerNorm over the features.
    """
    if norm == "batch":
        return [nn.BatchNorm1d(features)]
    if norm == "batch_renorm":
        return [BatchRenorm1d(features)]
    if norm in ("layer", "instance"):
        return [nn.LayerNorm(features)]
    if norm == "group":
        return [nn.GroupNorm(group_count(features, GROUP_NORM_MIN_FEATURES), features)]
    return []


def norm_2d(norm: Norm, channels: int) -> list[nn.Module]:
    if norm == "batch":
        return [nn.BatchNorm2d(channels)]
    if norm == "batch_renorm":
        return [BatchRenorm2d(channels)]
    if norm == "layer":
        # LayerNorm over (C, H, W) of a conv map is GroupNorm with one group.
        return [nn.GroupNorm(1, channels)]
    if norm == "group":
        return [nn.GroupNorm(group_count(channels, GROUP_NORM_MIN_CHANNELS), channels)]
    if norm == "instance":
        # affine, like every other option here (torch's InstanceNorm2d defaults to none)
        return [nn.InstanceNorm2d(channels, affine=True)]
    return []


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
