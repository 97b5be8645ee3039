"""The `bn` experiment on real MNIST: its nets, init, probe and percentiles checked
exactly, its cells resumed, and (slow) the direction of the paper's claim."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from zoo.data import train_val_split
from zoo.experiments import bn
from zoo.experiments.base import CELLS_FILENAME, Context
from zoo.experiments.callbacks import Probe
from zoo.models.layers import Normalize


@pytest.fixture(autouse=True)
def one_thread():
    """These nets are small: one torch thread runs them fastest, and several threads
    spin against each other on a shared machine. What the test found is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return train_val_split()[0].tensors()[0][:256]


def _layers(model: nn.Module) -> list[nn.Module]:
    """The net's layers after its fixed input steps (standardise, flatten)."""
    return [m for m in model.net if not isinstance(m, (Normalize, nn.Flatten))]


@pytest.mark.parametrize("net", bn.NETS)
def test_the_nets_have_the_papers_shape(net: str, images: torch.Tensor) -> None:
    # Sec. 4.1: 3 hidden layers of 100 sigmoids; with BN, BN between each linear map and
    # its sigmoid (the linear map then has no bias: BN's beta is the bias).
    model = bn.build(net, depth=3, width=100, init_std=0.01)
    layers = _layers(model)
    norm = [nn.BatchNorm1d] if net == "bn" else []
    block = [nn.Linear, *norm, nn.Sigmoid]
    assert [type(m) for m in layers] == block * 3 + [nn.Linear]
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 100),
        (100, 100),
        (100, 100),
        (100, 10),
    ]
    assert all((m.bias is None) == (net == "bn") for m in linears[:3])
    assert all(m.num_features == 100 for m in layers if isinstance(m, nn.BatchNorm1d))
    # The probed module feeds the last hidden layer's sigmoids.
    last_sigmoid = max(i for i, m in enumerate(layers) if isinstance(m, nn.Sigmoid))
    assert bn.last_sigmoid_input(model) is layers[last_sigmoid - 1]
    assert type(layers[last_sigmoid - 1]) is (nn.BatchNorm1d if net == "bn" else nn.Linear)
    assert model(images).shape == (256, 10)


def test_deep_nets_have_one_sigmoid_per_layer() -> None:
    for depth in (10, 20):
        for net in bn.NETS:
            model = bn.build(net, depth=depth, width=100, init_std=0.01)
            layers = _layers(model)
            assert sum(isinstance(m, nn.Sigmoid) for m in layers) == depth
            assert sum(isinstance(m, nn.BatchNorm1d) for m in layers) == (
                depth if net == "bn" else 0
            )


@pytest.mark.parametrize("std", [0.01, 0.3, 3.0])
def test_the_init_scale_is_applied(std: float) -> None:
    torch.manual_seed(0)
    model = bn.build("plain", depth=3, width=100, init_std=std)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    first = linears[0].weight  # 78,400 draws: the sample std is within 1% of the true one
    assert first.mean().item() == pytest.approx(0.0, abs=0.01 * std)
    assert first.std().item() == pytest.approx(std, rel=0.01)
    for m in linears[1:]:  # 1,000 to 10,000 draws
        assert m.weight.std().item() == pytest.approx(std, rel=0.1)
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)


def test_percentiles_are_exact_on_a_known_tensor() -> None:
    # 0, 1, ..., 100 in a shuffled column: the qth percentile is q exactly.
    column = torch.randperm(101, generator=torch.Generator().manual_seed(0)).double()
    output = torch.stack([torch.zeros(101, dtype=torch.float64), column], dim=1)
    assert bn.percentiles(output, unit=1) == [15.0, 50.0, 85.0]
    assert bn.percentiles(output, unit=0) == [0.0, 0.0, 0.0]
    # Between order statistics it interpolates linearly, as numpy's default.
    values = torch.randn(60, 3, generator=torch.Generator().manual_seed(1))
    expected = np.percentile(values[:, 2].numpy().astype(np.float64), bn.PERCENTILES)
    assert bn.percentiles(values, unit=2) == pytest.approx(expected.tolist(), abs=1e-6)


def test_the_probe_records_a_units_percentiles_and_leaves_the_net_alone() -> None:
    # A linear map that copies its input: the probe's percentiles are those of the batch.
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, affine=False), nn.Sigmoid())
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    batch = torch.stack([torch.arange(101.0).flip(0), torch.zeros(101)], dim=1)
    probe = Probe(model[0], batch, 10, lambda out: bn.percentiles(out, 0))
    probe.record(model, 0)
    assert probe.points == [[0, [15.0, 50.0, 85.0]]]
    # In train mode BN normalises by the batch (what the sigmoid sees in training), but
    # the probe batch must not leak into BN's running averages.
    bn_probe = Probe(model[1], batch, 10, lambda out: bn.percentiles(out, 0))
    bn_probe.record(model, 0)
    assert bn_probe.points[0][1][1] == pytest.approx(0.0, abs=1e-6)  # centred on the median
    assert torch.equal(model[1].running_mean, torch.zeros(2))
    assert torch.equal(model[1].running_var, torch.ones(2))
    assert model[1].num_batches_tracked.item() == 0
    assert model.training


TINY = bn.Config(
    seeds=1,
    steps=20,
    eval_every=10,
    eval_size=500,
    probe_every=5,
    probe_size=100,
    sweep_steps=5,
    lrs=(0.1, 1.0),
    init_stds=(0.01, 1.0),
    depths=(4,),
    depth_steps=5,
)


def test_a_run_is_resumed_from_its_cells_not_recomputed(tmp_path: Path) -> None:
    key = TINY.model_dump_json()
    first = Context(tmp_path, progress=False, config_key=key)
    results = bn.run(TINY, first)
    cells = json.loads((tmp_path / CELLS_FILENAME).read_text())["cells"]
    # (a, b) 2 nets; (c) 2 rates x 2 nets; (d) 2 stds x 2 nets; (e) 1 depth x 2 nets.
    assert first.computed == len(cells) == 2 + 4 + 4 + 2
    again = Context(tmp_path, progress=False, config_key=key)
    assert bn.run(TINY, again) == results and again.computed == 0
    # What the figures and the report are built from.
    for net in bn.NETS:
        (curve,) = results["curves"][net]
        assert [p[0] for p in curve["curve"]] == [0, 10, 20]
        assert [p[0] for p in curve["percentiles"]] == [0, 5, 10, 15, 20]
        assert all(len(p[1]) == 3 and p[1] == sorted(p[1]) for p in curve["percentiles"])
    assert {(r["net"], r["lr"]) for r in results["lr_sweep"]} == {
        (n, lr) for n in bn.NETS for lr in TINY.lrs
    }
    lines = bn.verdicts(results)
    assert [line[:3] for line in lines] == ["(a)", "(b)", "(c)", "(d)", "(e)"]
    assert "| 0.01 |" in bn.report(results)
    figures = bn.plot(results, TINY, tmp_path)
    assert all(f.stat().st_size > 1000 for f in figures)


@pytest.mark.slow
def test_bn_trains_faster_steadier_and_deeper(tmp_path: Path) -> None:
    """A reduced rerun (1 seed, 2,000 steps, 2,000 test images) keeps the direction of
    the claim, by a wide margin: BN ahead on the 3x100 sigmoid net, its sigmoid's input
    moving less, and a 10-layer sigmoid net that trains with BN while the plain one
    stalls."""
    config = bn.Config(
        seeds=1,
        steps=2000,
        eval_every=500,
        eval_size=2000,
        probe_every=100,
        sweep_steps=50,
        lrs=(1.0,),
        init_stds=(0.01,),
        depths=(10,),
        depth_steps=2000,
    )
    results = bn.run(config, Context(tmp_path, progress=False, config_key="slow"))
    plain, bn_ = (results["curves"][net][0] for net in bn.NETS)
    assert bn_["accuracy"] > plain["accuracy"] + 0.2
    assert bn.drift(plain) > 2 * bn.drift(bn_)
    deep = {r["net"]: r["accuracy"] for r in results["depth"]}
    assert deep["plain"] < bn.STALLED and deep["bn"] > deep["plain"] + 0.3
