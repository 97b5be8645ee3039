"""The highway experiment's pieces on real MNIST: lesioning is skipping, the gate bias
and parameter budgets of the paper's setup, gate statistics on a known input, and (slow)
a reduced depth sweep in the claim's direction."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from zoo.data import train_val_split
from zoo.experiments import highway
from zoo.experiments.base import Context
from zoo.models.highway import HighwayMLP
from zoo.models.layers import count_params

CONFIG = highway.Config()


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = train_val_split()[0].tensors()
    return x[:500], y[:500]


def _highway(depth: int = 10, seed: int = 0, gate_bias: float = -2.0) -> HighwayMLP:
    torch.manual_seed(seed)
    model = highway.build("highway", depth, CONFIG, gate_bias)
    assert isinstance(model, HighwayMLP)
    return model.eval()


@pytest.mark.parametrize("index", [0, 4, 8])
def test_a_lesioned_layer_gives_exactly_the_output_of_skipping_it(mnist, index: int) -> None:
    model = _highway(10)
    with torch.no_grad():
        # Train-like weights: larger gate weights so that no gate is near 0 by chance.
        for layer in model.layers:
            layer.gate.weight.mul_(3)
        with highway.lesioned(model, index):
            lesioned = model(mnist[0])
        intact = model(mnist[0])
        kept = [layer for i, layer in enumerate(model.layers) if i != index]
        skipped = model.head(nn.Sequential(*kept)(model.stem(mnist[0])))
    assert torch.equal(lesioned, skipped)
    assert not torch.equal(intact, skipped)  # the layer did something before its lesion
    assert torch.equal(model(mnist[0]), intact)  # the lesion is undone on leaving


@pytest.mark.parametrize("depth", CONFIG.depths)
@pytest.mark.parametrize("gate_bias", CONFIG.gate_biases)
def test_the_transform_gate_bias_starts_at_the_grids_value(depth: int, gate_bias: float) -> None:
    model = _highway(depth, gate_bias=gate_bias)
    assert len(model.layers) == depth - 1
    for layer in model.layers:
        assert torch.equal(layer.gate.bias, torch.full((CONFIG.highway_width,), gate_bias))
        assert layer.transform.bias.abs().max() == 0


@pytest.mark.parametrize("depth", CONFIG.depths)
def test_plain_and_highway_nets_have_the_papers_parameter_budget(depth: int) -> None:
    """Per hidden layer the budgets match within 0.5% (5,112 vs 5,100, Sec. 3.1); the
    whole nets within 20%, the gap being the wider plain first and last layers (784x71
    vs 784x50), which matters less the deeper the net."""
    torch.manual_seed(0)
    plain, high = highway.build("plain", depth, CONFIG), highway.build("highway", depth, CONFIG)
    per_layer = {f: highway.hidden_layer_params(f, CONFIG) for f in highway.FAMILIES}
    assert per_layer == {"plain": 71 * 72, "highway": 2 * 50 * 51}
    assert abs(per_layer["plain"] / per_layer["highway"] - 1) < 0.005
    assert count_params(plain) == 785 * 71 + (depth - 1) * per_layer["plain"] + 72 * 10
    assert count_params(high) == 785 * 50 + (depth - 1) * per_layer["highway"] + 51 * 10
    assert abs(count_params(plain) / count_params(high) - 1) < 0.20


def test_gate_statistics_on_a_known_input(mnist) -> None:
    """Zero gate weights and bias b_l per layer: every gate outputs sigmoid(b_l) for every
    example, so the per-layer means are known, the spread and class deviations are 0."""
    model = _highway(6)
    biases = [-3.0, -1.0, 0.0, 1.0, 2.0]
    with torch.no_grad():
        for layer, b in zip(model.layers, biases, strict=True):
            layer.gate.weight.zero_()
            layer.gate.bias.fill_(b)
    x, y = mnist
    gates = highway.gate_outputs(model, x, batch=128)  # several batches
    assert gates.shape == (len(x), 5, CONFIG.highway_width)
    summary = highway.gate_summary(gates, y, (0, 7), examples_per_digit=2)
    assert summary["mean"] == pytest.approx([1 / (1 + math.exp(-b)) for b in biases], abs=1e-5)
    assert summary["spread"] == pytest.approx([0.0] * 5, abs=1e-5)
    for digit in ("0", "7"):
        assert summary["class_deviation_abs"][digit] == pytest.approx([0.0] * 5, abs=1e-5)
    assert summary["example_labels"] == [d for d in range(10) for _ in range(2)]
    assert len(summary["examples"]) == 5 and len(summary["examples"][0]) == 20


def test_gate_statistics_separate_classes_when_a_gate_reads_the_input(mnist) -> None:
    """The first layer's gates read the mean input pixel: their per-example spread is
    positive, the later layers' (zero weights) is 0, and the digits with more ink (0) and
    less ink (1) deviate from the overall mean in opposite directions."""
    model = _highway(3)
    with torch.no_grad():
        for layer in model.layers:
            layer.gate.weight.zero_()
            layer.gate.bias.zero_()
        stem = model.stem[2]
        stem.weight.zero_()
        stem.bias.zero_()
        stem.weight[0].fill_(1 / 784)  # unit 0: 1 + the mean normalised pixel (> 0)
        stem.bias[0] = 1.0
        model.layers[0].gate.weight[:, 0] = 4.0  # every gate of layer 1: 4 * (1 + mean)
        model.layers[0].gate.bias.fill_(-4.0)
    x, y = mnist
    summary = highway.gate_summary(highway.gate_outputs(model, x), y, (0, 1), 1)
    assert summary["spread"][0] > 0.05 and summary["spread"][1] == pytest.approx(0, abs=1e-5)
    dev = summary["class_deviation"]
    assert min(dev["0"][0]) > 0 > max(dev["1"][0])
    assert summary["class_deviation_abs"]["0"][0] > 0.01


def test_lesion_errors_on_a_net_that_only_carries(mnist) -> None:
    """A net whose gates are all shut already: lesioning changes nothing."""
    model = _highway(5)
    with torch.no_grad():
        for layer in model.layers:
            layer.gate.weight.zero_()
            layer.gate.bias.fill_(-math.inf)
    lesion = highway.lesion_errors(model, *mnist)
    assert lesion["errors"] == [lesion["intact_error"]] * 4


def test_the_analysis_falls_back_to_the_zoo_recipe_when_no_grid_run_learns(tmp_path) -> None:
    """A learning rate that diverges at once: no highway run of the grid learns, so the
    analysed net is trained with the zoo's registered highway recipe (Adam), and the
    verdicts say so."""
    config = highway.Config(
        seeds=1,
        depths=(3,),
        lrs=(30.0,),
        gate_biases=(-2.0,),
        steps=40,
        eval_every=20,
        loss_every=10,
        subset=500,
        analysis_depth=3,
        early_layers=1,
    )
    context = Context(tmp_path, progress=False, config_key=config.model_dump_json())
    results = highway.run(config, context)
    assert results["runs"]["highway"]["3"]["lr 30, bias -2"][0]["diverged_at"] is not None
    source = results["analysis_source"]
    assert source["recipe"] == "fallback" and source["optimizer"] == "adam"
    assert source["lr"] == highway.fallback_recipe().lr == 1e-3
    assert results["analysis"] is not None and len(results["analysis"]["lesion"]["errors"]) == 2
    assert any("NOT from the SGD grid" in line for line in highway.verdicts(results))
    assert "highway-d3-fallback-s0" in context._cells


def test_the_deepest_nets_run_fewer_seeds() -> None:
    assert [CONFIG.seeds_at(d) for d in CONFIG.depths] == [2, 2, 2, 1]
    assert CONFIG.lrs == (0.001, 0.003, 0.01)
    assert CONFIG.gate_biases == (-2.0, -4.0, -6.0)


def test_the_grid_is_learning_rates_for_plain_nets_and_rates_times_biases_for_highway() -> None:
    assert highway.settings("plain", CONFIG) == [(lr, None) for lr in CONFIG.lrs]
    grid = highway.settings("highway", CONFIG)
    assert len(grid) == 9 and len(set(grid)) == 9
    assert {b for _, b in grid} == set(CONFIG.gate_biases)
    assert highway.setting_key(0.003, None) == "lr 0.003"
    assert highway.setting_key(0.01, -4.0) == "lr 0.01, bias -4"


@pytest.mark.slow
def test_reduced_sweep_plain_nets_degrade_with_depth(tmp_path: Path) -> None:
    """A reduced sweep (10 and 50 layers, 600 steps, the full run's grid): the 50-layer
    plain net's best training loss (best lr) is at least 2x the 10-layer one's (6.1x at
    50 and 15.4x at 100 layers in the full run at 3,000 steps). Both highway depths learn
    (best loss well below chance, 2.30), so the analysed 50-layer net comes from the
    grid, and its analysis (gates, lesions) is complete."""
    config = highway.Config(
        seeds=1,
        depths=(10, 50),
        steps=600,
        eval_every=200,
        loss_every=50,
        subset=3000,
    )
    context = Context(tmp_path, progress=False, config_key=config.model_dump_json())
    results = highway.run(config, context)
    shallow = highway.best_loss(results, "plain", "10")
    deep = highway.best_loss(results, "plain", "50")
    assert shallow is not None and (deep is None or deep > 2 * shallow)
    assert set(results["runs"]["plain"]["50"]) == {"lr 0.001", "lr 0.003", "lr 0.01"}
    assert len(results["runs"]["highway"]["50"]) == 9
    for depth in ("10", "50"):
        high = highway.best_loss(results, "highway", depth)
        assert high is not None and high < 1.0
    analysis = results["analysis"]
    assert analysis is not None and len(analysis["lesion"]["errors"]) == 49
    assert results["analysis_source"]["recipe"] == "grid"
    assert len(highway.verdicts(results)) == 6
    assert len(highway.plot(results, config, tmp_path)) == 3
