"""The shared training loop on real MNIST: callbacks, step budgets, divergence as an
outcome, and the experiment runner's resumable cells and CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from zoo.data import train_val_split
from zoo.experiments import EXPERIMENTS
from zoo.experiments.base import Context
from zoo.experiments.callbacks import EvalEvery, LossEvery, Probe
from zoo.fit import fit
from zoo.models import TrainRecipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = train_val_split()[0].tensors()
    return x[:2048], y[:2048]


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.Sigmoid(), nn.Linear(32, 10))


def test_fit_runs_a_step_budget_and_calls_back(mnist) -> None:
    recipe = TrainRecipe(optimizer="sgd", momentum=0.0, lr=0.5, schedule="constant", batch_size=64)
    model = _mlp()
    evals, losses = EvalEvery(10, (mnist[0][:500], mnist[1][:500])), LossEvery(10)
    probe = Probe(model[2], mnist[0][:100], 20, lambda out: round(float(out.mean()), 4))
    history = fit(model, mnist, recipe, max_steps=50, callbacks=[evals, losses, probe])
    assert history.steps == 50 and not history.diverged
    assert [p[0] for p in evals.points] == [10, 20, 30, 40, 50]
    assert evals.points[-1][1] > evals.points[0][1]  # it learns
    assert [p[0] for p in losses.points] == [10, 20, 30, 40, 50]
    assert [p[0] for p in probe.points] == [20, 40]


def test_a_nan_loss_is_a_recorded_outcome_not_an_exception(mnist) -> None:
    # A step this large sends a linear model's logits past float32's range at once.
    recipe = TrainRecipe(optimizer="sgd", momentum=0.0, lr=1e38, schedule="constant")
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    history = fit(linear, mnist, recipe, max_steps=200, progress=False)
    assert history.diverged and history.outcome() == f"diverged at step {history.diverged_at}"
    assert history.steps == history.diverged_at - 1


def test_cells_resume_after_an_interruption(tmp_path: Path) -> None:
    computed: list[str] = []

    def compute(key: str) -> int:
        computed.append(key)
        if key == "c" and len(computed) == 3:
            raise KeyboardInterrupt  # the run is cut off in its third cell
        return len(key)

    context = Context(tmp_path, config_key="v1")
    with pytest.raises(KeyboardInterrupt):
        for key in ("a", "bb", "c"):
            context.cell(key, lambda k=key: compute(k))
    resumed = Context(tmp_path, config_key="v1")
    assert [resumed.cell(k, lambda k=k: compute(k)) for k in ("a", "bb", "c")] == [1, 2, 1]
    assert computed == ["a", "bb", "c", "c"]  # a and bb were not computed again
    other = Context(tmp_path, config_key="v2")  # another config starts afresh
    other.cell("a", lambda: compute("a"))
    assert computed[-1] == "a"


def _zoo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zoo.cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("experiment", "seul"), "unknown experiment 'seul'; did you mean selu?"),
        (("experiment", "bn", "--seeds", "0"), "--seeds: Input should be greater than"),
    ],
)
def test_experiment_mistakes_are_one_line(args: tuple[str, ...], message: str) -> None:
    done = _zoo(*args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# The norms experiment's own tests run its quick mode (and a resume): not twice in CI.
@pytest.mark.parametrize("name", [name for name in EXPERIMENTS if name != "norms"])
def test_results_json_is_complete(name: str, tmp_path: Path) -> None:
    """Every experiment's quick run records its command, config, environment and figures."""
    done = _zoo("experiment", name, "--quick", "--out", str(tmp_path / name), "--no-progress")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / name / "results.json").read_text())
    assert record["quick"] and record["command"].startswith(f"zoo experiment {name}")
    assert {"torch", "threads", "device"} <= set(record["environment"])
    assert record["figures"] and record["results"]
    for figure in record["figures"]:
        assert (tmp_path / name / figure).stat().st_size > 1000


def test_results_are_plain_json_and_readable_by_others(tmp_path: Path) -> None:
    from zoo.experiments.base import write_json

    path = tmp_path / "results.json"
    write_json(path, {"loss": [1.0, float("nan"), float("inf")], "ok": True})
    assert json.loads(path.read_text()) == {"loss": [1.0, None, None], "ok": True}
    assert path.stat().st_mode & 0o044 == 0o044


def test_the_experiments_page_is_generated_from_the_committed_results() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "experiments_report.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
