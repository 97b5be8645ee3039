"""Self-normalizing nets against six other kinds of fully connected net, ranked over tasks.

Klambauer et al. 2017 (Sec. 4.1, Table 1) compare seven kinds of fully connected net on
121 UCI classification data sets: SNN (SELU, LeCun-normal init, AlphaDropout), MSRAinit
(ReLU, He init, no normalisation), LayerNorm, Highway, ResNet, WeightNorm and BatchNorm.
Every method's hyperparameters, the number of layers (2 to 32) and the learning rate
among them, are chosen per data set on a validation split; the methods are then ranked
per data set by their test accuracy. The table gives each method's average rank as a
difference to 4 (the average rank of seven methods that guess at random) and the
p-value of a Wilcoxon signed-rank test, paired over the data sets, against the best
method. There SNNs come first and beat every other method significantly, BatchNorm
comes last, and the selected SNNs are deeper than the selected BatchNorm nets (10.8
layers on average against 6.0).

Ours, on data at hand offline, six tasks: MNIST (the zoo's 55,000 training and 5,000
validation images, the 10,000 test images), a fixed 1,000-image subset of its training
images (small data; the same validation and test images), and scikit-learn's bundled
copies of four UCI classification sets (8x8 digits, breast cancer, wine, iris), each
split once, stratified, into 60% training, 20% validation and 20% test, features
standardised with the training split's statistics. For every method and
task, the depth (2 to 32 layers) and the learning rate are chosen from a grid fixed
before any run, on the validation split with seed 0 (lowest validation error, ties
broken by the validation loss); the chosen setting is then trained with every seed and
its test error measured. Methods are ranked per task by the mean test error over seeds
(ties share their average rank).

The Wilcoxon test of a method against the best one (lowest average rank) is computed
over two pairings: the tasks (each pair: the two methods' mean test errors on one task,
as the paper pairs data sets), and the task-seed pairs (the two methods' test errors on
one task with one seed; a seed fixes the order of the training batches for every
method, the split is the same for all).

Scaled down against the paper: six tasks instead of 121, so the smallest two-sided
p-value over the tasks is 1/32; width 128 for every net and depth (paper: 256, 512 or
1,024 units); a 3-point learning-rate grid with nothing else searched (paper: also the
width, dropout, layer shape, and per method its own options); SGD with Nesterov
momentum 0.9 and a cosine decay, batches of 128, for a fixed step budget: 600 steps on
MNIST (1.4 epochs) and 300 on every other task (a short budget may favour shallow nets,
which need fewer steps); AlphaDropout fixed at the zoo's 0.05; five seeds. All this to
fit the full run in an hour on two CPU cores.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy import stats
from sklearn import datasets
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

from zoo.experiments.base import Context, rounded
from zoo.fit import evaluate, fit
from zoo.models import TrainRecipe
from zoo.models.batchnorm import MLP, MLPConfig
from zoo.models.highway import HIGHWAY_GATE_BIAS, HighwayMLP, HighwayMLPConfig
from zoo.models.layers import Normalize, norm_1d, reparametrise
from zoo.models.selu import SELUMLP, SELUConfig, lecun_normal_

log = logging.getLogger(__name__)

CLAIM = (
    "Self-normalizing nets outperform fully connected nets with other normalisation or "
    "architecture tricks across many data sets, and the best of them are deeper"
)
SOURCE = (
    "G. Klambauer, T. Unterthiner, A. Mayr and S. Hochreiter, 2017, Self-Normalizing "
    "Neural Networks, Sec. 4.1 (121 UCI data sets, Table 1) and its appendix (the "
    "selected architectures)"
)

Method = Literal["SNN", "MSRAinit", "LayerNorm", "Highway", "ResNet", "WeightNorm", "BatchNorm"]
# The paper's Table 1, in its order: best average rank first.
METHODS: tuple[Method, ...] = (
    "SNN",
    "MSRAinit",
    "LayerNorm",
    "Highway",
    "ResNet",
    "WeightNorm",
    "BatchNorm",
)
TaskName = Literal["mnist", "mnist_1k", "digits", "breast_cancer", "wine", "iris"]
TASKS: tuple[TaskName, ...] = ("mnist", "mnist_1k", "digits", "breast_cancer", "wine", "iris")
# scikit-learn's bundled data sets: no download.
SKLEARN_LOADERS = {
    "digits": datasets.load_digits,
    "breast_cancer": datasets.load_breast_cancer,
    "wine": datasets.load_wine,
    "iris": datasets.load_iris,
}
MNIST_PIXELS = 28 * 28
MNIST_CLASSES = 10
SPLIT_SEED = 0  # the one split of each task, and the MNIST subset, for every method and seed
# The average depth of the selected nets, SNN against BatchNorm (the paper's appendix).
PAPER_DEPTH = {"SNN": 10.8, "BatchNorm": 6.0}
SIGNIFICANT = 0.05  # the level at which the paper calls a difference significant
COLOURS = dict(zip(METHODS, plt.get_cmap("tab10").colors, strict=False))


class Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seeds: int = Field(5, ge=1, description="test runs of each method's chosen setting")
    tasks: tuple[TaskName, ...] = TASKS
    methods: tuple[Method, ...] = METHODS
    # The paper's depths, without its 3 (a ResNet here is depth/2 two-layer blocks).
    depths: tuple[int, ...] = (2, 4, 8, 16, 32)
    # SGD with momentum 0.9 takes steps ~10x the nominal rate: this decade grid is the
    # paper's plain-SGD grid {0.01, 0.1, 1} in effective step size. Fixed before any run.
    lrs: tuple[float, ...] = (0.001, 0.01, 0.1)
    momentum: float = Field(0.9, ge=0, lt=1)
    width: int = Field(128, ge=1, description="units of every hidden layer, every method")
    batch_size: int = Field(128, ge=1, description="a whole epoch on iris and wine")
    mnist_steps: int = Field(600, ge=1, description="SGD steps on the full MNIST task")
    steps: int = Field(300, ge=1, description="SGD steps on every other task")
    small_mnist: int = Field(1000, ge=1, description="training images of mnist_1k")
    alpha_dropout: float = Field(0.05, ge=0, lt=1, description="SNN's (the zoo's default)")
    gate_bias: float = Field(HIGHWAY_GATE_BIAS, le=0, description="Highway's transform gate")

    @field_validator("depths")
    @classmethod
    def _even(cls, depths: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < 2 or d % 2 for d in depths):
            raise ValueError(f"depths must be even and >= 2 (two-layer ResNet blocks): {depths}")
        return depths

    def recipe(self, lr: float) -> TrainRecipe:
        return TrainRecipe(
            optimizer="sgd",
            lr=lr,
            momentum=self.momentum,
            batch_size=self.batch_size,
            schedule="cosine",
        )

    def steps_for(self, task: str) -> int:
        return self.mnist_steps if task == "mnist" else self.steps


def make_config(quick: bool, seeds: int | None) -> Config:
    config = Config()
    if quick:  # about a minute on CPU: three small tasks, two depths, one rate
        config = Config(
            seeds=2,
            tasks=("mnist_1k", "digits", "iris"),
            depths=(2, 8),
            lrs=(0.01,),
            steps=100,
        )
    return config.model_copy(update={"seeds": seeds}) if seeds else config


# The tasks ---------------------------------------------------------------------------

Data = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Task:
    """One task's fixed splits: MNIST as [N, 1, 28, 28] pixels in [0, 1] (the zoo nets
    standardise them), the others as [N, features] standardised features."""

    name: str
    train: Data
    validation: Data
    test: Data
    features: int
    classes: int

    @property
    def image(self) -> bool:
        return self.train[0].dim() == 4


def load_task(name: str, context: Context, config: Config) -> Task:
    if name == "mnist":
        return Task(name, context.train, context.validation, context.test, MNIST_PIXELS, 10)
    if name == "mnist_1k":
        x, y = context.train
        index = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
        small = index[: config.small_mnist]
        return Task(name, (x[small], y[small]), context.validation, context.test, MNIST_PIXELS, 10)
    features, labels = SKLEARN_LOADERS[name](return_X_y=True)
    return tabular_task(name, features, labels)


def tabular_task(name: str, features: np.ndarray, labels: np.ndarray) -> Task:
    """60/20/20 stratified split, features standardised with the training split's mean
    and standard deviation (a constant feature, e.g. a blank pixel of digits, stays 0)."""
    x_train, x_rest, y_train, y_rest = train_test_split(
        features, labels, train_size=0.6, stratify=labels, random_state=SPLIT_SEED
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=SPLIT_SEED
    )
    scaler = StandardScaler().fit(x_train)

    def tensors(x: np.ndarray, y: np.ndarray) -> Data:
        return (
            torch.from_numpy(scaler.transform(x).astype(np.float32)),
            torch.from_numpy(y.astype(np.int64)),
        )

    return Task(
        name,
        tensors(x_train, y_train),
        tensors(x_val, y_val),
        tensors(x_test, y_test),
        features.shape[1],
        int(labels.max()) + 1,
    )


def commonest_class_error(train_labels: torch.Tensor, labels: torch.Tensor) -> float:
    """The error of always answering the training split's commonest class: what a net
    that learned nothing does at best, and what a diverged run is counted as."""
    commonest = torch.bincount(train_labels).argmax()
    return float((labels != commonest).float().mean())


# The nets ------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """He et al. 2016's basic block with Linear layers in place of 3x3 convolutions (as
    zoo.models.resnet.BasicBlock): Linear-BN-ReLU-Linear-BN plus the shortcut (identity,
    or Linear-BN where the width changes), then ReLU."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.Linear(in_features, out_features, bias=False),
            *norm_1d("batch", out_features),
            nn.ReLU(),
            nn.Linear(out_features, out_features, bias=False),
            *norm_1d("batch", out_features),
        )
        self.shortcut = (
            nn.Identity()
            if in_features == out_features
            else nn.Sequential(
                nn.Linear(in_features, out_features, bias=False), *norm_1d("batch", out_features)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.residual(x) + self.shortcut(x))


class ResidualMLP(nn.Module):
    """`blocks` residual blocks of `width` units (2 Linear layers each) on MNIST pixels,
    laid out as the zoo's MNIST nets: standardise, flatten, blocks, Linear head."""

    def __init__(self, width: int, blocks: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            Normalize(),
            nn.Flatten(),
            ResidualBlock(MNIST_PIXELS, width),
            *(ResidualBlock(width, width) for _ in range(blocks - 1)),
            nn.Linear(width, MNIST_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 28, 28] -> [N, 10]
        return self.net(x)


def he_normal_(linear: nn.Linear) -> None:
    """He et al. 2015 ("MSRA") init for ReLU nets: weights N(0, 2/fan_in), biases 0."""
    nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def initialise(model: nn.Module, method: Method, config: Config) -> None:
    """SNN: LeCun-normal, as SELU requires (Klambauer et al. 2017, Sec. 3). Every other
    net is a ReLU net and starts from He init, so that the methods differ in what they
    are named for (MSRAinit: He init and nothing else). PyTorch's default Linear init
    (weight variance 1/(3 fan_in)) divides the signal's second moment by 6 per ReLU
    layer, so that without a normalisation to undo it a deep net starts with no signal
    at its head: in a trial run before the grids were final, WeightNorm nets of 8 layers
    so initialised stayed at chance. Highway's transform-gate biases are then set back
    to `config.gate_bias`."""
    init = lecun_normal_ if method == "SNN" else he_normal_
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if nn.utils.parametrize.is_parametrized(module, "weight"):
                _initialise_reparametrised(module, init)
            else:
                init(module)
    if isinstance(model, HighwayMLP):
        for layer in model.layers:
            nn.init.constant_(layer.gate.bias, config.gate_bias)


def _initialise_reparametrised(linear: nn.Linear, init: Callable[[nn.Linear], None]) -> None:
    """A weight-normalised layer's weight is computed from a magnitude g and a direction
    v, so initialising `linear.weight` in place would change a temporary copy: a plain
    Linear is initialised instead, and assigning its weight sets v to it and g to its
    row norms (the reparametrisation's right inverse), so the layer starts with exactly
    that weight."""
    plain = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    init(plain)
    with torch.no_grad():
        linear.weight = plain.weight.detach()
        if linear.bias is not None:
            linear.bias.copy_(plain.bias)


def build_mnist_net(method: Method, depth: int, config: Config) -> nn.Module:
    """The method's net of `depth` hidden layers on MNIST pixels, from the zoo's models:
    Highway is one ReLU layer then depth-1 highway layers; ResNet depth/2 blocks."""
    width = config.width
    if method == "SNN":
        return SELUMLP(SELUConfig(depth=depth, width=width, alpha_dropout=config.alpha_dropout))
    if method == "Highway":
        return HighwayMLP(
            HighwayMLPConfig(depth=depth - 1, width=width, gate_bias=config.gate_bias)
        )
    if method == "ResNet":
        return ResidualMLP(width, depth // 2)
    norm = {"LayerNorm": "layer", "BatchNorm": "batch"}.get(method, "none")
    return MLP(
        MLPConfig(
            hidden=(width,) * depth,
            activation="relu",
            norm=norm,
            reparam="weight" if method == "WeightNorm" else "none",
        )
    )


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)


def _like(old: nn.Linear, in_features: int, out_features: int) -> nn.Module:
    """A Linear layer of a new shape, with `old`'s bias (or none) and reparametrisation."""
    new = nn.Linear(in_features, out_features, bias=old.bias is not None)
    weight_norm = nn.utils.parametrize.is_parametrized(old, "weight")
    return reparametrise(new, "weight") if weight_norm else new


def fit_to_task(model: nn.Module, features: int, classes: int) -> nn.Module:
    """A zoo MNIST net for a task of `features` standardised features and `classes`
    classes: its pixel standardisation becomes the identity, every Linear that reads the
    784 pixels is rebuilt for `features` inputs, the head for `classes` outputs."""
    for module in list(model.modules()):
        if isinstance(module, Normalize):
            _replace(model, module, nn.Identity())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    head = linears[-1]
    for linear in linears[:-1]:
        if linear.in_features == MNIST_PIXELS:
            _replace(model, linear, _like(linear, features, linear.out_features))
    _replace(model, head, _like(head, head.in_features, classes))
    return model


def build(method: Method, depth: int, task: Task, config: Config) -> nn.Module:
    """The method's net for `task`, initialised as the method prescribes. The caller seeds."""
    model = build_mnist_net(method, depth, config)
    if not task.image:
        model = fit_to_task(model, task.features, task.classes)
    initialise(model, method, config)
    return model


# The run -------------------------------------------------------------------------------


def train_cell(
    method: Method, depth: int, lr: float, seed: int, task: Task, config: Config, context: Context
) -> dict[str, Any]:
    """One training run: validation and test error (and loss) at its end."""
    torch.manual_seed(seed)
    model = build(method, depth, task, config)
    history = fit(
        model,
        task.train,
        config.recipe(lr),
        max_steps=config.steps_for(task.name),
        seed=seed,
        device=context.device,
        progress=context.progress,
        name=f"{task.name} {method} d{depth} lr{lr:g} s{seed}",
    )
    cell: dict[str, Any] = {
        "diverged_at": history.diverged_at,
        "wall_s": round(history.wall_time_s, 1),
    }
    for split in ("validation", "test"):
        x, y = getattr(task, split)
        if history.diverged:
            error, loss = commonest_class_error(task.train[1], y), math.nan
        else:
            accuracy, loss = evaluate(model, x, y)
            error = 1 - accuracy
        cell[f"{split}_error"] = round(error, 6)
        cell[f"{split}_loss"] = rounded(loss)
    return cell


def _cell(
    method: Method, depth: int, lr: float, seed: int, task: Task, config: Config, context: Context
) -> dict[str, Any]:
    return context.cell(
        f"{task.name}/{method}/d{depth}/lr{lr:g}/s{seed}",
        lambda: train_cell(method, depth, lr, seed, task, config, context),
    )


def selection_order(cell: dict[str, Any]) -> tuple[bool, float, float]:
    """Grid cells are compared by this: a diverged run last, then the lowest validation
    error, then (ties are common on small validation splits) the lowest validation loss."""
    loss = cell["validation_loss"]
    return (
        cell["diverged_at"] is not None,
        cell["validation_error"],
        math.inf if loss is None else loss,
    )


def run(config: Config, context: Context) -> dict[str, Any]:
    grid: dict[str, dict[str, list[dict[str, Any]]]] = {}
    chosen: dict[str, dict[str, dict[str, Any]]] = {}
    test: dict[str, dict[str, list[float]]] = {}
    tasks: dict[str, dict[str, Any]] = {}
    for name in config.tasks:
        task = load_task(name, context, config)
        tasks[name] = {
            "train": len(task.train[1]),
            "validation": len(task.validation[1]),
            "test": len(task.test[1]),
            "features": task.features,
            "classes": task.classes,
            "commonest_class_error": round(commonest_class_error(task.train[1], task.test[1]), 6),
        }
        grid[name], chosen[name], test[name] = {}, {}, {}
        for method in config.methods:
            runs = [
                {"depth": d, "lr": lr} | _cell(method, d, lr, 0, task, config, context)
                for d in config.depths
                for lr in config.lrs
            ]
            best = min(runs, key=selection_order)
            finals = [best] + [
                _cell(method, best["depth"], best["lr"], s, task, config, context)
                for s in range(1, config.seeds)
            ]
            grid[name][method] = runs
            chosen[name][method] = {"depth": best["depth"], "lr": best["lr"]}
            test[name][method] = [r["test_error"] for r in finals]
            log.info(
                "%s %s: depth %d, lr %g, test error %.4f (mean of %d seeds)",
                name,
                method,
                best["depth"],
                best["lr"],
                statistics.fmean(test[name][method]),
                config.seeds,
            )
    return {
        "setup": {
            "width": config.width,
            "depths": list(config.depths),
            "lrs": list(config.lrs),
            "steps": {name: config.steps_for(name) for name in config.tasks},
            "seeds": config.seeds,
        },
        "tasks": tasks,
        "grid": grid,
        "chosen": chosen,
        "test": test,
        "table": method_table(test, list(config.methods)),
    }


# The statistics ------------------------------------------------------------------------


def task_ranks(errors: dict[str, dict[str, float]], methods: list[str]) -> dict[str, list[float]]:
    """{task: rank of each method} by error, lowest first (rank 1); tied methods share
    the average of the ranks they span."""
    return {
        task: stats.rankdata([by_method[m] for m in methods]).tolist()
        for task, by_method in errors.items()
    }


def wilcoxon_p(errors: list[float], best: list[float]) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test on paired errors. Pairs with
    no difference are dropped (Wilcoxon's own rule); with no difference at all there is
    nothing to tell the two apart, p = 1."""
    if all(a == b for a, b in zip(errors, best, strict=True)):
        return 1.0
    return float(stats.wilcoxon(errors, best).pvalue)


def wilcoxon_pairs(
    test: dict[str, dict[str, list[float]]], method: str, best: str
) -> dict[str, tuple[list[float], list[float]]]:
    """The paired samples of `method` against `best`: over tasks (mean test error over
    seeds on each task, in task order) and over task-seed pairs (one test error each)."""
    tasks = list(test)
    return {
        "tasks": (
            [statistics.fmean(test[t][method]) for t in tasks],
            [statistics.fmean(test[t][best]) for t in tasks],
        ),
        "task_seeds": (
            [e for t in tasks for e in test[t][method]],
            [e for t in tasks for e in test[t][best]],
        ),
    }


def method_table(test: dict[str, dict[str, list[float]]], methods: list[str]) -> dict[str, Any]:
    """The paper's Table 1 from test errors {task: {method: [error per seed]}}: each
    method's average rank over tasks, its difference to the average rank of methods
    guessing at random ((k+1)/2 for k methods: the paper's column) and to the best
    method's, and Wilcoxon p-values against the best method; methods best first."""
    mean_errors = {t: {m: statistics.fmean(e[m]) for m in methods} for t, e in test.items()}
    ranks = task_ranks(mean_errors, methods)
    average = {m: statistics.fmean(r[i] for r in ranks.values()) for i, m in enumerate(methods)}
    order = sorted(methods, key=lambda m: (average[m], methods.index(m)))
    best = order[0]
    rows = []
    for method in order:
        pairs = wilcoxon_pairs(test, method, best)
        rows.append(
            {
                "method": method,
                "average_rank": round(average[method], 6),
                "rank_difference_to_random": round(average[method] - (len(methods) + 1) / 2, 6),
                "rank_difference_to_best": round(average[method] - average[best], 6),
                "p_tasks": None if method == best else wilcoxon_p(*pairs["tasks"]),
                "p_task_seeds": None if method == best else wilcoxon_p(*pairs["task_seeds"]),
            }
        )
    return {
        "methods": methods,  # the order of each task's ranks
        "best": best,
        "ranks": ranks,
        "mean_errors": mean_errors,
        "rows": rows,
    }


def mean_depth(results: dict[str, Any], method: str) -> float:
    return statistics.fmean(c[method]["depth"] for c in results["chosen"].values())


# Verdicts and report -------------------------------------------------------------------


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def verdicts(results: dict[str, Any]) -> list[str]:
    table = results["table"]
    rows = {r["method"]: r for r in table["rows"]}
    order = [r["method"] for r in table["rows"]]
    best, n_tasks = table["best"], len(results["tasks"])
    lines = []
    # (a) who comes first.
    worse = [m for m in order[1:] if rows[m]["p_tasks"] < SIGNIFICANT]
    ranking = ", ".join(f"{m} {rows[m]['average_rank']:.2f}" for m in order)
    first = (
        "agrees with the paper: SNN first"
        if best == "SNN"
        else f"DISAGREES with the paper: {best} first, SNN in place {order.index('SNN') + 1} "
        f"of {len(order)} (the paper: SNN first)"
        if "SNN" in order
        else f"{best} first (no SNN in this run)"
    )
    lines.append(
        f"(a) Average rank over {n_tasks} tasks (1 = lowest mean test error): {ranking}: {first}."
    )
    significant = (
        f"{len(worse)} of {len(order) - 1} others significantly worse than {best} at p < "
        f"{SIGNIFICANT} ({', '.join(worse) or 'none'})"
    )
    lines.append(
        f"(b) Wilcoxon signed-rank test against {best}, paired over the {n_tasks} tasks: "
        f"{significant}; the paper: SNN significantly better than all six others over 121 "
        f"data sets. "
        + (
            "Agrees."
            if best == "SNN" and len(worse) == len(order) - 1
            else f"DISAGREES (with {n_tasks} tasks no two-sided p can fall below "
            f"{1 / 2 ** (n_tasks - 1):.3g}; paired over the task-seed pairs "
            f"{sum(rows[m]['p_task_seeds'] < SIGNIFICANT for m in order[1:])} of "
            f"{len(order) - 1} are)."
        )
    )
    if "BatchNorm" in order:
        place = order.index("BatchNorm") + 1
        lines.append(
            f"(c) BatchNorm in place {place} of {len(order)} (the paper: last): "
            + ("agrees." if place == len(order) else "DISAGREES.")
        )
    if {"SNN", "BatchNorm"} <= set(order):
        snn, bn = mean_depth(results, "SNN"), mean_depth(results, "BatchNorm")
        lines.append(
            f"(d) Selected depth, mean over tasks: SNN {snn:.1f} layers, BatchNorm {bn:.1f} "
            f"(the paper: {PAPER_DEPTH['SNN']} vs {PAPER_DEPTH['BatchNorm']}): "
            + (
                "agrees (SNN selects deeper nets)."
                if snn > bn
                else "DISAGREES (SNN does not select deeper nets than BatchNorm)."
            )
        )
    if len(order) > 2:
        paper = ", ".join(m for m in METHODS if m in order)
        lines.append(
            f"(e) Our order against the paper's Table 1 ({paper}): Spearman rank correlation "
            f"{order_agreement(order):+.2f} (+1: the same order, 0: unrelated, -1: reversed)."
        )
    return lines


def order_agreement(order: list[str]) -> float:
    """Spearman's rank correlation between `order` (best first) and the paper's order of
    the same methods."""
    paper = [m for m in METHODS if m in order]
    return float(stats.spearmanr([order.index(m) for m in paper], range(len(paper))).statistic)


def report(results: dict[str, Any]) -> str:
    table, setup = results["table"], results["setup"]
    tasks = list(results["tasks"])
    n = len(table["rows"])
    lines = [
        "### Tasks",
        "",
        "| task | train | validation | test | features | classes | commonest-class error |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in results["tasks"].items():
        lines.append(
            f"| {name} | {t['train']:,} | {t['validation']:,} | {t['test']:,} | "
            f"{t['features']} | {t['classes']} | {_pct(t['commonest_class_error'])} |"
        )
    lines += [
        "",
        f"Every net {setup['width']} units wide; depth from {setup['depths']} and SGD "
        f"learning rate from {setup['lrs']} chosen per method and task on the validation "
        f"split (seed 0), then test error over {setup['seeds']} seeds.",
        "",
        "### The method table (the paper's Table 1)",
        "",
        f"Average rank over the {len(tasks)} tasks; its difference to {(n + 1) / 2:g}, the "
        f"average rank of {n} methods guessing at random (the paper's column), and to the "
        f"best method's; the two-sided Wilcoxon signed-rank p-value against the best "
        f"method ({table['best']}), paired over the tasks (mean test error over seeds per "
        f"task: {len(tasks)} pairs, as the paper pairs data sets) and over the task-seed "
        f"pairs ({len(tasks) * setup['seeds']} pairs).",
        "",
        "| method | average rank | difference to random | difference to best | p (tasks) "
        "| p (task-seed pairs) | mean selected depth |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table["rows"]:
        lines.append(
            f"| {r['method']} | {r['average_rank']:.3f} | {r['rank_difference_to_random']:+.3f} "
            f"| {r['rank_difference_to_best']:+.3f} | {_p(r['p_tasks'])} "
            f"| {_p(r['p_task_seeds'])} | {mean_depth(results, r['method']):.1f} |"
        )
    picks = [c for by_method in results["chosen"].values() for c in by_method.values()]
    lines += [
        "",
        f"Where the selection sits in the grid: the largest learning rate "
        f"({max(setup['lrs']):g}) in {sum(c['lr'] == max(setup['lrs']) for c in picks)} of "
        f"{len(picks)} method-task pairs, the shallowest depth ({min(setup['depths'])}) in "
        f"{sum(c['depth'] == min(setup['depths']) for c in picks)}, the deepest "
        f"({max(setup['depths'])}) in {sum(c['depth'] == max(setup['depths']) for c in picks)}.",
        "",
        "### Test error per task (mean ± standard deviation over seeds; rank; chosen "
        "depth and learning rate)",
        "",
        "| method | " + " | ".join(tasks) + " |",
        "|---|" + "---:|" * len(tasks),
    ]
    for method in [r["method"] for r in table["rows"]]:
        cells = []
        for task in tasks:
            errors = results["test"][task][method]
            chosen = results["chosen"][task][method]
            spread = statistics.pstdev(errors)
            rank = table["ranks"][task][table["methods"].index(method)]
            cells.append(
                f"{_pct(statistics.fmean(errors))} ± {100 * spread:.2f} (#{rank:g}; "
                f"d{chosen['depth']}, lr {chosen['lr']:g})"
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Figures -------------------------------------------------------------------------------


def plot(results: dict[str, Any], config: Config, out: Path) -> list[Path]:
    return [_plot_errors(results, out / "test_errors.png"), _plot_grid(results, out / "depth.png")]


def _plot_errors(results: dict[str, Any], path: Path) -> Path:
    tasks = list(results["tasks"])
    methods = [r["method"] for r in results["table"]["rows"]]
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for i, method in enumerate(methods):
            errors = [100 * e for e in results["test"][task][method]]
            ax.scatter([i] * len(errors), errors, color=COLOURS[method], alpha=0.5, s=18)
            ax.errorbar(
                i,
                statistics.fmean(errors),
                yerr=statistics.pstdev(errors),
                fmt="_",
                color="k",
                ms=14,
                capsize=4,
            )
        ax.set_xticks(range(len(methods)), labels=methods, rotation=35, ha="right")
        ax.set(ylabel="test error (%)", title=task)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.flat[len(tasks) :]:
        ax.set_visible(False)
    best = results["table"]["best"]
    fig.suptitle(
        f"Test error of each method's chosen setting, per task: dots = seeds, bar = mean ± "
        f"std (methods in order of average rank; best: {best})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_grid(results: dict[str, Any], path: Path) -> Path:
    """Validation error against depth at each depth's best learning rate (seed 0), and
    the depth each method selected."""
    tasks = list(results["tasks"])
    methods = [r["method"] for r in results["table"]["rows"]]
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for method in methods:
            by_depth: dict[int, dict[str, Any]] = {}
            for cell in results["grid"][task][method]:
                kept = by_depth.get(cell["depth"])
                if kept is None or selection_order(cell) < selection_order(kept):
                    by_depth[cell["depth"]] = cell
            depths = sorted(by_depth)
            ax.plot(
                depths,
                [100 * by_depth[d]["validation_error"] for d in depths],
                "o-",
                ms=3,
                color=COLOURS[method],
                label=method,
            )
            chosen = results["chosen"][task][method]["depth"]
            ax.plot(
                chosen,
                100 * by_depth[chosen]["validation_error"],
                "*",
                ms=12,
                color=COLOURS[method],
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths, labels=depths)
        ax.set(xlabel="hidden layers", ylabel="validation error (%)", title=task)
        ax.set_yscale("symlog", linthresh=1)  # log above 1%, linear down to 0
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    for ax in axes.flat[len(tasks) :]:
        ax.set_visible(False)
    fig.suptitle(
        "Validation error by depth at each depth's best learning rate (seed 0); star: the "
        "selected setting"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
