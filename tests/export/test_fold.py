"""BatchNorm folding is exact: random running statistics, missing biases, BN first, errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrizations, parametrize

from zoo.errors import ExportError
from zoo.export.fold import bn_scale_shift, fold_into_next, fold_into_previous, fold_model

Randomise = Callable[[nn.Module], nn.Module]
# Float32 through a few layers of random weights: folding reorders products, nothing more.
TOLERANCE = 1e-5


def assert_folded_exactly(model: nn.Module, x: torch.Tensor) -> nn.Module:
    folded = fold_model(model, x[:2])
    assert not any(isinstance(m, _BatchNorm) for m in folded.modules())
    with torch.no_grad():
        diff = (folded(x) - model(x)).abs().max().item()
    assert diff <= TOLERANCE, diff
    return folded


@pytest.mark.parametrize("bias", [True, False])
def test_fold_into_previous_linear(bias: bool, randomise: Randomise) -> None:
    linear, bn = nn.Linear(12, 8, bias=bias), nn.BatchNorm1d(8)
    model = randomise(nn.Sequential(linear, bn))
    weight, new_bias = fold_into_previous(
        linear.weight,
        linear.bias,
        *bn_scale_shift(bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias),
    )
    x = torch.randn(5, 12)
    torch.testing.assert_close(
        nn.functional.linear(x, weight, new_bias), model(x), atol=TOLERANCE, rtol=0
    )


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_fold_into_next_conv(groups: int, bias: bool, randomise: Randomise) -> None:
    bn, conv = nn.BatchNorm2d(4), nn.Conv2d(4, 6, 3, groups=groups, bias=bias)
    model = randomise(nn.Sequential(bn, conv))
    weight, new_bias = fold_into_next(
        conv.weight,
        conv.bias,
        *bn_scale_shift(bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias),
        groups=groups,
    )
    x = torch.randn(3, 4, 9, 9)
    torch.testing.assert_close(
        nn.functional.conv2d(x, weight, new_bias, groups=groups), model(x), atol=TOLERANCE, rtol=0
    )


class ConvNet(nn.Module):
    """Conv without bias + BN2d, Linear + BN1d(affine=False), a BN after an activation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn_conv = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 14 * 14, 16)
        self.bn_fc = nn.BatchNorm1d(16, affine=False)
        self.bn_after_act = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn_conv(self.conv(x))), 2)
        x = torch.relu(self.bn_fc(self.fc(x.flatten(1))))
        return self.head(self.bn_after_act(x))  # no foldable layer before: folds into the head


def test_fold_model_conv_linear_and_after_activation(randomise: Randomise) -> None:
    assert_folded_exactly(randomise(ConvNet()), torch.rand(7, 1, 28, 28))


def test_fold_model_batchnorm_first(randomise: Randomise) -> None:
    # BN as the very first step, then a conv without padding: exact only into the next layer.
    model = randomise(
        nn.Sequential(
            nn.BatchNorm2d(1), nn.Conv2d(1, 3, 5), nn.Flatten(), nn.Linear(3 * 24 * 24, 10)
        )
    )
    assert_folded_exactly(model, torch.rand(4, 1, 28, 28))


def test_fold_model_replicate_padding_is_exact(randomise: Randomise) -> None:
    model = randomise(
        nn.Sequential(
            nn.ReLU(), nn.BatchNorm2d(2), nn.Conv2d(2, 3, 3, padding=1, padding_mode="replicate")
        )
    )
    assert_folded_exactly(model, torch.randn(3, 2, 8, 8))


def test_fold_model_leaves_original_untouched(randomise: Randomise) -> None:
    model = randomise(ConvNet())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold_model(model, torch.rand(2, 1, 28, 28))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_model_without_batchnorm_is_not_traced() -> None:
    class Dynamic(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    folded = fold_model(Dynamic(), torch.ones(2, 4))
    assert isinstance(folded, Dynamic)


class Residual(nn.Module):
    def __init__(self, padding: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The BN normalises a sum: no layer before it; a zero-padded conv after it is not exact.
        return self.conv(self.bn(x + x.flip(3)))


def test_unfoldable_batchnorm_is_refused_by_name(randomise: Randomise) -> None:
    with pytest.raises(ExportError, match="'bn'"):
        fold_model(randomise(Residual(padding=1)), torch.randn(2, 8, 6, 6))
    assert_folded_exactly(randomise(Residual(padding=0)), torch.randn(2, 8, 6, 6))


def test_batchnorm1d_over_sequence_is_not_folded_into_linear(randomise: Randomise) -> None:
    # BN1d over [N, C, L] normalises dim 1, the Linear before it produces features on dim 2.
    model = randomise(nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(3)))
    with pytest.raises(ExportError, match="'1'"):
        fold_model(model, torch.randn(2, 3, 5))


def test_batchnorm_without_running_stats_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False)).eval()
    with pytest.raises(ExportError, match="no running statistics"):
        fold_model(model, torch.randn(2, 4))


def test_shared_layer_is_not_folded(randomise: Randomise) -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.bn(self.fc(x))))

    # fc is called twice: neither side may absorb the BN.
    with pytest.raises(ExportError, match="'bn'"):
        fold_model(randomise(Shared()), torch.randn(2, 4))


def test_parametrisations_become_plain_weights() -> None:
    model = nn.Sequential(
        parametrizations.weight_norm(nn.Linear(6, 6)),
        nn.ReLU(),
        parametrizations.spectral_norm(nn.Linear(6, 3)),
    )
    model.train()
    model(torch.randn(16, 6))  # one power iteration, so spectral norm's vectors are not at init
    model.eval()
    folded = assert_folded_exactly(model, torch.randn(5, 6))
    assert not any(parametrize.is_parametrized(m) for m in folded.modules())
    assert all(parametrize.is_parametrized(model[i]) for i in (0, 2))


@pytest.mark.parametrize(
    ("padding", "exact"), [("valid", True), ("same", False), (0, True), (1, False)]
)
def test_batchnorm_before_conv_folds_only_without_zero_padding(
    padding: str | int, exact: bool, randomise: Randomise
) -> None:
    model = randomise(
        nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=padding))
    )
    x = torch.randn(2, 3, 8, 8)
    if exact:
        assert_folded_exactly(model, x)
    else:
        with pytest.raises(ExportError, match="BatchNorm '1'"):
            fold_model(model, x)
