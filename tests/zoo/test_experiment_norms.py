"""The `norms` experiment on real MNIST: its fairness rules, the Batch Renorm schedule it
scales, the batch-statistics score, a quick run written in full and resumed, and (slow)
the direction of the claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zoo.data import load_mnist
from zoo.experiments import norms
from zoo.experiments.base import CELLS_FILENAME, RESULTS_FILENAME, Context
from zoo.experiments.cli import main
from zoo.fit import evaluate
from zoo.models.batch_renorm import BatchRenorm1d, BatchRenorm2d


@pytest.fixture(autouse=True)
def one_thread():
    """These nets are small: one torch thread runs them fastest, and several threads
    spin against each other on a shared machine. What the test found is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def test_images() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_mnist("test").tensors()
    return x[:256], y[:256]


def test_every_batch_size_sees_the_same_examples_at_a_linearly_scaled_rate() -> None:
    config = norms.Config()
    for batch in config.batch_sizes:
        steps = norms.steps_for(batch, config)
        assert config.examples - batch < steps * batch <= config.examples
        assert norms.learning_rate(batch, config) == pytest.approx(0.1 * batch / 128)
    assert norms.learning_rate(128, config) == config.base_lr


@pytest.mark.parametrize("steps", [234, 15_000])
def test_the_renorm_schedule_is_the_papers_scaled_to_the_run(steps: int) -> None:
    schedule = norms.renorm_schedule(steps, relaxed_at=0.5)
    assert schedule.rmax_steps == round(steps / 2)  # rmax reaches 3 half-way
    # The paper's proportions, 5k : 25k : 40k, to the rounding of a step.
    assert schedule.warmup_steps == pytest.approx(steps / 2 * 5 / 40, abs=0.5)
    assert schedule.dmax_steps == pytest.approx(steps / 2 * 25 / 40, abs=0.5)
    assert schedule.limits(0) == (1.0, 0.0)
    assert schedule.limits(steps) == (3.0, 5.0)


@pytest.mark.parametrize("norm", norms.Config().norms)
def test_the_net_carries_its_norm(norm: str) -> None:
    model = norms.build(norm, norms.Config())
    kinds = {type(m) for m in model.modules()}
    expected = {
        "batch": {torch.nn.BatchNorm2d, torch.nn.BatchNorm1d},
        "batch_renorm": {BatchRenorm2d, BatchRenorm1d},
        "group": {torch.nn.GroupNorm},
        "layer": {torch.nn.GroupNorm, torch.nn.LayerNorm},
    }[norm]
    assert expected <= kinds
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 4


def test_batch_statistics_accuracy_leaves_the_moving_averages_alone(test_images) -> None:
    torch.manual_seed(0)
    model = norms.build("batch", norms.Config()).eval()
    before = {name: b.clone() for name, b in model.named_buffers()}
    accuracy = norms.batch_statistics_accuracy(model, *test_images, batch=16)
    assert 0 <= accuracy <= 1
    assert all(torch.equal(b, before[name]) for name, b in model.named_buffers())
    assert not model.training
    # A net without batch statistics computes the same in train mode: the score is its
    # accuracy, on the 256 - 256 % 100 = 200 images that fill whole batches.
    layer = norms.build("layer", norms.Config())
    expected, _ = evaluate(layer, test_images[0][:200], test_images[1][:200])
    assert norms.batch_statistics_accuracy(layer, *test_images, batch=100) == expected


def test_quick_run_writes_complete_results_and_figures_and_resumes(tmp_path: Path) -> None:
    argv = ["norms", "--quick", "--out", str(tmp_path), "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    record = json.loads((tmp_path / RESULTS_FILENAME).read_text())
    config = norms.make_config(quick=True, seeds=None)
    assert record["experiment"] == "norms" and record["quick"] is True
    assert record["claim"] == norms.CLAIM and record["source"] == norms.SOURCE
    results = record["results"]
    runs = {(r["norm"], r["batch_size"], r["seed"]): r for r in results["runs"]}
    assert set(runs) == {
        (n, b, s) for n in config.norms for b in config.batch_sizes for s in range(config.seeds)
    }
    for (norm, batch, _), run_ in runs.items():
        assert 0 <= run_["accuracy"] <= 1
        assert run_["steps"] == norms.steps_for(batch, config)
        assert ("batch_statistics_accuracy" in run_) == (norm == "batch")
        assert ("renorm_schedule" in run_) == (norm == "batch_renorm")
    for name in record["figures"]:
        assert (tmp_path / name).stat().st_size > 1000
    lines = norms.verdicts(results)
    assert [line[:3] for line in lines[:4]] == ["(a)", "(b)", "(c)", "(d)"]
    report = norms.report(results)
    assert "| Batch Renorm |" in report and "own statistics" in report
    # Every cell is saved: a second run computes nothing and gives the same results.
    cells = json.loads((tmp_path / CELLS_FILENAME).read_text())["cells"]
    assert len(cells) == len(runs)
    again = Context(tmp_path, progress=False, config_key=config.model_dump_json())
    assert norms.run(config, again) == results and again.computed == 0


@pytest.mark.slow
def test_batchnorm_degrades_at_batch_2_and_the_batch_free_norms_do_not(tmp_path: Path) -> None:
    """A reduced rerun (1 seed, 10,000 examples, batch 2 and 128, 2,000 test images)
    keeps the direction of the claim by a wide margin."""
    config = norms.Config(seeds=1, batch_sizes=(2, 128), examples=10_000, eval_size=2000)
    results = norms.run(config, Context(tmp_path, progress=False, config_key="slow"))
    acc = norms.table(results)
    assert acc["batch"][2] < acc["batch"][128] - 0.1
    for norm in ("group", "layer"):
        assert acc[norm][2] > acc["batch"][2] + 0.2
        assert acc[norm][2] > acc[norm][128] - 0.02
    assert acc["batch_renorm"][2] > acc["batch"][2]
