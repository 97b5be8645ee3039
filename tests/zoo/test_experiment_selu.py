"""The SELU experiment's pieces that can be checked exactly (the moment map, its fixed
point and Jacobian, the constants) and, on real MNIST, the direction of its claims."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from zoo.data import train_val_split
from zoo.experiments import selu as exp
from zoo.experiments.base import Context
from zoo.models import selu as zoo_selu


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return train_val_split()[0].tensors()[0][:500]


def test_the_fixed_point_of_the_moment_map_is_0_1() -> None:
    mean, var, second = exp.moment_map(0.0, 1.0)
    assert abs(mean) < 1e-3 and abs(var - 1) < 1e-3
    # The closed form gives it to rounding: alpha and lambda were solved for it.
    assert abs(mean) < 1e-12 and abs(second - 1) < 1e-12


def test_the_jacobian_at_the_fixed_point_has_the_papers_spectral_norm() -> None:
    jac = exp.jacobian(0.0, 1.0)
    # omega = 0: the next layer's mean and variance do not depend on this layer's mean.
    assert np.allclose(jac[:, 0], 0.0, atol=1e-9)
    norm = float(np.linalg.norm(jac, 2))
    # The paper prints 0.7877 (four decimals): our value must round to it, so the
    # tolerance is half a unit in the last place; central differences with h = 1e-5 err
    # by ~1e-10, far inside that.
    assert abs(norm - exp.PAPER_JACOBIAN_NORM) <= 5e-5, norm
    assert abs(norm - float(np.linalg.norm(exp.jacobian(h=1e-4), 2))) < 1e-8  # h-stable


def test_selu_constants_are_torchs_and_solve_the_fixed_point() -> None:
    x = torch.linspace(-8, 8, 100_001, dtype=torch.float64)
    assert torch.allclose(nn.SELU()(x), exp.selu(x), rtol=0, atol=1e-15)
    # torch's own selu(-inf) = -lambda * alpha: the constants' product, exactly.
    assert float(nn.SELU()(torch.tensor(-1e3, dtype=torch.float64))) == pytest.approx(
        -exp.SELU_LAMBDA * exp.SELU_ALPHA, abs=1e-15
    )
    assert (exp.SELU_ALPHA, exp.SELU_LAMBDA) == (zoo_selu.SELU_ALPHA, zoo_selu.SELU_LAMBDA)
    alpha, lam = exp.solve_selu_constants()
    assert alpha == pytest.approx(exp.SELU_ALPHA, abs=1e-12)
    assert lam == pytest.approx(exp.SELU_LAMBDA, abs=1e-12)
    assert (round(exp.SELU_ALPHA, 4), round(exp.SELU_LAMBDA, 4)) == (1.6733, 1.0507)


@pytest.mark.parametrize(
    ("mu", "nu", "omega", "tau"),
    [(0.0, 1.0, 0.0, 1.0), (0.0, 2.5, 0.0, 1.0), (0.5, 1.5, 1.0, 1.0), (-0.4, 0.6, 1.0, 0.8)],
)
def test_the_moment_map_matches_monte_carlo_and_quadrature(mu, nu, omega, tau) -> None:
    closed = exp.moment_map(mu, nu, omega, tau)
    samples = 2_000_000
    mc = exp.moment_map_monte_carlo(mu, nu, omega, tau, samples)
    # Five standard errors of the estimates: sd/sqrt(n) for the mean, and for the
    # variance sqrt(mu4 - var^2)/sqrt(n), mu4 <= ~3 var^2 (near-Gaussian tails) + skew.
    se_mean = math.sqrt(closed[1] / samples)
    se_var = math.sqrt(4 * closed[1] ** 2 / samples)
    assert abs(mc[0] - closed[0]) < 5 * se_mean
    assert abs(mc[1] - closed[1]) < 5 * se_var
    quad = exp.moment_map_quadrature(mu, nu, omega, tau)
    assert np.allclose(quad[:2], closed[:2], atol=1e-8)


def test_iterating_the_map_converges_to_0_1_from_far_away() -> None:
    for mu0, nu0 in [(-1.0, 0.1), (1.0, 3.0), (0.5, 0.5)]:
        mean, var = exp.iterate_map(mu0, nu0, 60)[-1]
        assert math.hypot(mean, var - 1) < 1e-4


def test_a_deep_selu_net_keeps_mnist_activations_near_0_1(batch) -> None:
    torch.manual_seed(0)
    moments = exp.layer_moments(exp.plain_net("selu", 32, 128), batch, nn.SELU)
    assert len(moments) == 32 and all(exp.in_band(m, v) for m, v in moments)
    torch.manual_seed(0)
    relu = exp.layer_moments(exp.plain_net("relu_default", 32, 128), batch, nn.ReLU)
    assert relu[-1][1] < 0.05  # PyTorch's default init shrinks the variance layer by layer


def test_alpha_dropout_keeps_0_1_where_dropout_does_not(batch) -> None:
    def last(kind: str) -> list:
        torch.manual_seed(0)
        net = exp.plain_net("selu", 16, 128, dropout=kind, rate=0.2).train()
        of = nn.AlphaDropout if kind == "alpha" else nn.Dropout
        return exp.layer_moments(net, batch, of)[-1]

    alpha, plain = last("alpha"), last("dropout")
    assert abs(alpha[1] - 1) < 0.25 and plain[1] > 1.5  # Dropout inflates the variance


@pytest.mark.slow
def test_a_reduced_run_points_the_papers_way(tmp_path: Path) -> None:
    config = exp.Config(
        seeds=2,
        width=128,
        probe_images=500,
        moment_depths=(32,),
        moment_steps=100,
        fig1_depths=(32,),
        fig1_steps=300,
        dropout_depth=16,
        dropout_rates=(0.1,),
    )
    results = exp.run(config, Context(tmp_path, progress=False))
    lines = exp.verdicts(results)
    assert lines[0].startswith("(a)") and lines[0].endswith("Supports the claim.")
    assert lines[1].startswith("(b)") and lines[1].endswith("Supports the claim.")
    assert lines[-1].startswith("(d)") and lines[-1].endswith("Supports the claim.")
    # (c) at 32 layers: the full run's SNN ended at a third of BN-ReLU's training loss
    # (0.098 vs 0.273); here we ask only for SNN below 0.7x BN's, neither diverging.
    snn, bn = (exp.fig1_summary(results, family, 32) for family in ("snn", "bn"))
    assert snn["diverged"] == bn["diverged"] == 0
    assert snn["final_mean"] < 0.7 * bn["final_mean"], (snn, bn)
    assert exp.report(results).count("|") > 50
    figures = exp.plot(results, config, tmp_path)
    assert all(f.stat().st_size > 1000 for f in figures)
