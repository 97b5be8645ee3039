"""Fixtures of the export tests: models with random BatchNorm statistics, checkpoints, MNIST."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from zoo.card import ModelCard
from zoo.checkpoint import save_checkpoint
from zoo.data import MNIST_MEAN, MNIST_STD, load_mnist
from zoo.models import get_spec
from zoo.models.layers import count_params


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters (an untrained BN is an identity), eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator))
                module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.1)
                if module.affine:
                    module.weight.copy_(torch.randn(n, generator=generator))
                    module.bias.copy_(torch.randn(n, generator=generator))
    return model.eval()


@pytest.fixture
def randomise() -> Callable[..., nn.Module]:
    return randomise_batchnorms


def random_model(name: str, **config: Any) -> tuple[nn.Module, ModelCard]:
    """A registered model with random weights and BN statistics, and a card like training's."""
    spec = get_spec(name)
    torch.manual_seed(0)
    model = randomise_batchnorms(spec.build(**config))
    card = ModelCard(
        name=name,
        family=spec.family,
        architecture=type(model).__name__,
        config=spec.configure(**config).model_dump(mode="json"),
        params=count_params(model),
        normalisation_mean=MNIST_MEAN,
        normalisation_std=MNIST_STD,
    )
    return model, card


@pytest.fixture(name="random_model", scope="session")
def random_model_fixture() -> Callable[..., tuple[nn.Module, ModelCard]]:
    return random_model


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """Write a checkpoint of a (small) registered model: make_checkpoint("bn_mlp", hidden=[32])."""

    def make(name: str, **config: Any) -> Path:
        model, card = random_model(name, **config)
        return save_checkpoint(tmp_path / "runs" / name / "model.pt", model, card)

    return make


@pytest.fixture(scope="session")
def mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 64 MNIST test images ([N, 1, 28, 28] in [0, 1]) and labels."""
    images, labels = load_mnist("test").tensors()
    return images[:64], labels[:64]
