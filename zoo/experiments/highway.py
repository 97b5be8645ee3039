"""Highway networks: depth sweep against plain nets, the trained gates, and lesioning.

Srivastava, Greff & Schmidhuber (2015) train plain and highway nets of 10 to 100
layers on MNIST at a matched parameter budget per layer (Sec. 3.1, Fig. 1), then look
inside the best 50-layer highway net: its transform-gate biases and outputs, per
example and per class (Sec. 4, Fig. 2 and 3), and what each layer is worth, by forcing
its transform gate shut so that it only copies its input (Sec. 4, Fig. 4).

Three parts, one sweep of cells (`{family}-d{depth}-lr{lr}[-b{bias}]-s{seed}`):
  (a) plain and highway nets at each depth, each over a fixed grid of settings: SGD
      learning rates, and for highway nets also initial transform-gate biases; per
      depth and family the best setting's best training loss (the paper reports the
      best of its hyperparameter runs, Fig. 1);
  (b) the gates of the trained 50-layer highway net: the best (lowest loss, not
      diverged) 50-layer highway run of the grid, its gates computed inside its cell
      since the trained weights are not kept; if no run of the grid learned, a net
      trained with the zoo's own Adam recipe for deep highway nets instead;
  (c) the training-subset error of that net with each highway layer lesioned.

Scaled down against the paper: a grid fixed before running (3 learning rates; for
highway nets x 3 gate biases) instead of a 100-run random search per depth and
family, a few thousand SGD steps instead of hundreds of epochs, two seeds (one for
the 100-layer nets), and the training loss measured on a fixed 10,000-image subset of
the training set.

The gate bias is in the grid because the paper searches it (between -1 and -10, with
the learning rate, momentum, decay and activation): a first full run with the bias
fixed at -2 had no 50- or 100-layer highway net learn at any learning rate (each
diverged or stayed at chance), while at -6 both depths train at lr 0.01.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from zoo.experiments.base import Context
from zoo.experiments.callbacks import EvalEvery, LossEvery
from zoo.fit import evaluate, fit
from zoo.models import TrainRecipe, get_spec
from zoo.models.batchnorm import MLP, MLPConfig
from zoo.models.highway import HighwayMLP, HighwayMLPConfig
from zoo.models.layers import count_params

log = logging.getLogger(__name__)

CLAIM = (
    "Highway networks stay trainable as depth grows to 100 layers where plain nets "
    "degrade; their gates route data-dependently and the net uses only the layers it needs."
)
SOURCE = (
    "Srivastava, Greff & Schmidhuber 2015, Training Very Deep Networks (NIPS 2015; "
    "extends Highway Networks, arXiv 1505.00387), Sec. 3.1 (optimisation depth sweep on "
    "MNIST, Fig. 1) and Sec. 4 (analysis of the gates, Fig. 2-3; lesioning, Fig. 4)"
)

Family = Literal["plain", "highway"]
FAMILIES: tuple[Family, ...] = ("plain", "highway")
COLOURS = {"plain": "tab:red", "highway": "tab:blue"}
LESION_PP = 1.0  # a lesion "barely matters" when it raises the error by under 1 point
# A run whose best loss never went below this learned nothing: chance is ln 10 = 2.303.
CHANCE_LOSS = 2.0
# The zoo's registered recipe for its 50-layer highway MLP (Adam, lr 1e-3, one-cycle):
# the analysis net's fallback when no 50-layer highway run of the SGD grid learned.
FALLBACK_MODEL = "highway_mlp"


class Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seeds: int = Field(2, ge=1)
    # Sec. 3.1: a plain first layer, then 9/19/49/99 plain or highway layers.
    depths: tuple[int, ...] = (10, 20, 50, 100)
    # Sec. 3.1: 71 plain units or 50 highway units per layer, ~5,000 weights per layer
    # either way (71*71+71 = 5,112; 2*(50*50+50) = 5,100).
    plain_width: int = 71
    highway_width: int = 50
    # The paper tunes each depth and family by a 100-run random search (Sec. 3.1), the
    # initial transform-gate bias (between -1 and -10) among the hyperparameters; we
    # run a grid fixed before the run, the same for every depth, with one recipe
    # otherwise: SGD with (Nesterov) momentum as in the paper, a cosine decay in place
    # of its exponential one, a step budget of a few epochs.
    lrs: tuple[float, ...] = (0.001, 0.003, 0.01)
    gate_biases: tuple[float, ...] = (-2.0, -4.0, -6.0)  # highway nets only
    momentum: float = 0.9
    batch_size: int = 128
    steps: int = 3000
    # Nets of `deep_depth` layers or more run `deep_seeds` seeds (the slowest nets; the
    # full grid must fit 30 minutes on 2 CPU cores).
    deep_depth: int = 100
    deep_seeds: int = 1
    loss_every: int = 50  # training-curve resolution (mean loss of the last 50 steps)
    eval_every: int = 500  # full pass over the training subset, for the best loss
    subset: int = 10_000  # fixed training images for the loss, gates and lesions
    analysis_depth: int = 50  # the net of Sec. 4
    early_layers: int = 15  # paper: routing and lesion sensitivity in the first ~15
    classes: tuple[int, int] = (0, 7)  # the digits of the paper's Fig. 3
    examples_per_digit: int = 3  # the layers x examples picture

    def seeds_at(self, depth: int) -> int:
        return min(self.seeds, self.deep_seeds) if depth >= self.deep_depth else self.seeds

    def recipe(self, lr: float) -> TrainRecipe:
        return TrainRecipe(
            optimizer="sgd",
            lr=lr,
            momentum=self.momentum,
            batch_size=self.batch_size,
            schedule="cosine",
        )


def make_config(quick: bool, seeds: int | None) -> Config:
    if quick:
        config = Config(
            seeds=1,
            depths=(5, 10),
            lrs=(0.003, 0.01),
            gate_biases=(-2.0, -4.0),
            steps=150,
            loss_every=20,
            eval_every=50,
            subset=2000,
            analysis_depth=10,
            early_layers=4,
        )
    else:
        config = Config()
    return config.model_copy(update={"seeds": seeds}) if seeds else config


# --- the nets -------------------------------------------------------------------------


def build(family: Family, depth: int, config: Config, gate_bias: float = -2.0) -> nn.Module:
    """A `depth`-layer net: a plain first layer, then depth-1 plain or highway layers.

    He-normal weights and zero biases for every linear layer of both families (the
    standard initialisation for ReLU nets; it gives the deep plain nets their best
    chance), then the transform-gate biases at `gate_bias`. The caller seeds.
    """
    if family == "plain":
        model: nn.Module = MLP(
            MLPConfig(hidden=(config.plain_width,) * depth, activation="relu", norm="none")
        )
    else:
        model = HighwayMLP(
            HighwayMLPConfig(depth=depth - 1, width=config.highway_width, gate_bias=gate_bias)
        )
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    if isinstance(model, HighwayMLP):
        for layer in model.layers:
            nn.init.constant_(layer.gate.bias, gate_bias)
    return model


def hidden_layer_params(family: Family, config: Config) -> int:
    """Parameters of one hidden layer after the first (the budget the paper matches)."""
    if family == "plain":
        return config.plain_width * (config.plain_width + 1)
    return 2 * config.highway_width * (config.highway_width + 1)


@torch.no_grad()
def gate_outputs(model: HighwayMLP, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Every highway layer's transform-gate output T(x) on `x`: [N, layers, units]."""
    model.eval()
    seen: list[torch.Tensor] = []
    handles = [
        layer.gate.register_forward_hook(lambda m, i, out: seen.append(torch.sigmoid(out)))
        for layer in model.layers
    ]
    rows = []
    try:
        for start in range(0, len(x), batch):
            seen.clear()
            model(x[start : start + batch])
            rows.append(torch.stack(seen, dim=1))
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(rows)


@contextmanager
def lesioned(model: HighwayMLP, index: int) -> Iterator[None]:
    """Highway layer `index` (0-based among the highway layers) with its transform gate
    forced to 0: sigmoid(-inf) is exactly 0, so y = 0*H(x) + 1*x = x, the layer copies
    its input (paper, Sec. 4, Fig. 4)."""
    handle = model.layers[index].gate.register_forward_hook(
        lambda m, i, out: torch.full_like(out, -math.inf)
    )
    try:
        yield
    finally:
        handle.remove()


def lesion_errors(model: HighwayMLP, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Error on (x, y) of the intact net and with each highway layer lesioned in turn."""
    intact = 1 - evaluate(model, x, y)[0]
    errors = []
    for index in range(len(model.layers)):
        with lesioned(model, index):
            errors.append(round(1 - evaluate(model, x, y)[0], 6))
    return {"intact_error": round(intact, 6), "errors": errors}


def gate_summary(
    gates: torch.Tensor, labels: torch.Tensor, classes: tuple[int, ...], examples_per_digit: int
) -> dict[str, Any]:
    """Per-layer statistics of gate outputs [N, layers, units] (Sec. 4, Fig. 2-3).

    mean: the mean output per layer; spread: per layer, the mean over units of the
    standard deviation across examples (how much the routing depends on the input);
    examples: per layer, the mean over units for a few examples of each digit;
    class_deviation: per digit, the class mean minus the overall mean (layers x units),
    and its mean absolute value per layer.
    """
    overall = gates.mean(0)  # [layers, units]
    shown = torch.cat([(labels == d).nonzero().flatten()[:examples_per_digit] for d in range(10)])
    deviation = {str(c): gates[labels == c].mean(0) - overall for c in classes}
    return {
        "mean": _r(gates.mean((0, 2))),
        "spread": _r(gates.std(0, correction=0).mean(1)),
        "examples": _r(gates[shown].mean(2).T),  # [layers, examples]
        "example_labels": labels[shown].tolist(),
        "class_deviation": {c: _r(d) for c, d in deviation.items()},
        "class_deviation_abs": {c: _r(d.abs().mean(1)) for c, d in deviation.items()},
    }


def _r(t: torch.Tensor, digits: int = 5) -> Any:
    return torch.round(t.detach().float(), decimals=digits).tolist()


# --- the run --------------------------------------------------------------------------


def _subset(context: Context, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed subset of the training images (a seeded permutation, the same every run)."""
    x, y = context.train
    index = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]
    return x[index], y[index]


def fallback_recipe() -> TrainRecipe:
    """The zoo's registered recipe for its deep highway MLP (run for `config.steps`)."""
    return get_spec(FALLBACK_MODEL).recipe


def train_cell(
    family: Family,
    depth: int,
    seed: int,
    config: Config,
    context: Context,
    recipe: TrainRecipe,
    gate_bias: float | None,
    analyse_net: bool,
) -> dict[str, Any]:
    """One training run (`gate_bias`: None for a plain net); with `analyse_net`, the
    Sec. 4 analysis of the trained net (gates, lesions) rides along, since the trained
    weights are not kept."""
    torch.manual_seed(seed)
    model = build(family, depth, config, gate_bias if gate_bias is not None else 0.0)
    subset = _subset(context, config.subset)
    losses, evals = LossEvery(config.loss_every), EvalEvery(config.eval_every, subset)
    start_acc, start_loss = evaluate(model, *subset)
    head_rms = _head_input_rms(model, subset[0][:1000])
    history = fit(
        model,
        context.train,
        recipe,
        max_steps=config.steps,
        seed=seed,
        device=context.device,
        callbacks=[losses, evals],
        progress=context.progress,
        name=f"{family}-{depth}-{setting_key(recipe.lr, gate_bias)}",
    )
    points = [[0, round(start_acc, 6), round(start_loss, 6)], *evals.points]
    finite = [p[2] for p in points if math.isfinite(p[2])]
    val_acc, val_loss = evaluate(model, *context.validation)
    cell: dict[str, Any] = {
        "lr": recipe.lr,
        "gate_bias": gate_bias,
        "params": count_params(model),
        "init_head_input_rms": head_rms,  # the signal reaching the output layer at init
        "curve": [p for p in losses.points if math.isfinite(p[1])],
        "evals": [p for p in points if math.isfinite(p[2])],
        "best_loss": min(finite) if finite else None,
        "final_loss": points[-1][2] if math.isfinite(points[-1][2]) else None,
        "val_accuracy": round(val_acc, 6) if math.isfinite(val_loss) else None,
        "diverged_at": history.diverged_at,
        "steps": history.steps,
        "wall_s": round(history.wall_time_s, 1),
    }
    if analyse_net:
        # Gates and lesions of a diverged net (inf or NaN weights) would be noise: the
        # verdicts say why there is none instead.
        cell["analysis"] = None if history.diverged else analyse(model, subset, config)
    log.info(
        "%s depth %d %s seed %d: best training loss %s, %s",
        family,
        depth,
        setting_key(recipe.lr, gate_bias),
        seed,
        cell["best_loss"],
        history.outcome(),
    )
    return cell


@torch.no_grad()
def _head_input_rms(model: nn.Module, x: torch.Tensor) -> float:
    """Root mean square of what the output layer receives: how much of the input's
    signal survives the depth of the net (a diagnostic of vanishing signals)."""
    head = model.head if isinstance(model, HighwayMLP) else model.net[-1]
    seen: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        model.eval()(x)
    finally:
        handle.remove()
    return round(float(seen[0].pow(2).mean().sqrt()), 6)


def analyse(
    model: HighwayMLP, subset: tuple[torch.Tensor, torch.Tensor], config: Config
) -> dict[str, Any]:
    """Sec. 4 on the trained net: gate biases and outputs, and lesions (Fig. 2-4)."""
    model.cpu()
    gates = gate_outputs(model, subset[0])
    biases = torch.stack([layer.gate.bias.detach() for layer in model.layers])
    return {
        "gate_bias": _r(biases),
        "gate_bias_mean": _r(biases.mean(1)),
        "gates": gate_summary(gates, subset[1], config.classes, config.examples_per_digit),
        "lesion": lesion_errors(model, *subset),
    }


def setting_key(lr: float, gate_bias: float | None) -> str:
    """The name of one point of the grid: "lr 0.01", or "lr 0.01, bias -4" for highway."""
    return f"lr {lr:g}" if gate_bias is None else f"lr {lr:g}, bias {gate_bias:g}"


def settings(family: Family, config: Config) -> list[tuple[float, float | None]]:
    """The grid of one family: (learning rate, initial gate bias or None)."""
    if family == "plain":
        return [(lr, None) for lr in config.lrs]
    return [(lr, bias) for bias in config.gate_biases for lr in config.lrs]


def _learned(cell: dict[str, Any]) -> bool:
    return (
        cell["diverged_at"] is None
        and cell["best_loss"] is not None
        and cell["best_loss"] < CHANCE_LOSS
    )


def run(config: Config, context: Context) -> dict[str, Any]:
    started = time.perf_counter()
    # runs[family][depth][setting]: the seeds' cells
    runs: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {f: {} for f in FAMILIES}
    count = 0
    for seed in range(config.seeds):
        for depth in config.depths:
            if seed >= config.seeds_at(depth):
                continue
            for family in FAMILIES:
                for lr, bias in settings(family, config):
                    key = f"{family}-d{depth}-lr{lr:g}" + ("" if bias is None else f"-b{bias:g}")
                    analyse_net = family == "highway" and depth == config.analysis_depth
                    cell = context.cell(
                        f"{key}-s{seed}",
                        lambda f=family, d=depth, s=seed, r=lr, b=bias, a=analyse_net: train_cell(
                            f, d, s, config, context, config.recipe(r), b, a
                        ),
                    )
                    by_setting = runs[family].setdefault(str(depth), {})
                    by_setting.setdefault(setting_key(lr, bias), []).append(cell)
                    count += 1
    analysis, source = _pick_analysis(runs, config, context)
    log.info("highway: %d runs in %.0f s", count, time.perf_counter() - started)
    # Only the analysed net's gates and lesions go into the results (the others are in
    # cells.json): every run's losses stay, diverged ones included.
    runs = {
        f: {
            d: {
                setting: [{k: v for k, v in c.items() if k != "analysis"} for c in cells]
                for setting, cells in by_setting.items()
            }
            for d, by_setting in by_depth.items()
        }
        for f, by_depth in runs.items()
    }
    return {
        "layer_params": {f: hidden_layer_params(f, config) for f in FAMILIES},
        "runs": runs,
        "analysis": analysis,
        "analysis_source": source,
        "analysis_depth": config.analysis_depth,
        "highway_width": config.highway_width,
        "early_layers": config.early_layers,
        "subset": config.subset,
        "classes": list(config.classes),
    }


def _pick_analysis(
    runs: dict[str, Any], config: Config, context: Context
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The Sec. 4 net: the best (lowest loss) grid run at the analysis depth that learned;
    if none learned, one net trained with the zoo's own recipe for deep highway nets."""
    depth = config.analysis_depth
    candidates = [
        (cell["best_loss"], seed, cell)
        for cells in runs["highway"].get(str(depth), {}).values()
        for seed, cell in enumerate(cells)
        if _learned(cell)
    ]
    if candidates:
        loss, seed, cell = min(candidates, key=lambda c: c[0])
        return cell["analysis"], {
            "recipe": "grid",
            "lr": cell["lr"],
            "gate_bias": cell["gate_bias"],
            "seed": seed,
            "best_loss": loss,
            "optimizer": "sgd",
        }
    recipe, bias = fallback_recipe(), config.gate_biases[0]
    cell = context.cell(
        f"highway-d{depth}-fallback-s0",
        lambda: train_cell("highway", depth, 0, config, context, recipe, bias, True),
    )
    source = {
        "recipe": "fallback",
        "model": FALLBACK_MODEL,
        "optimizer": recipe.optimizer,
        "lr": recipe.lr,
        "gate_bias": bias,
        "schedule": recipe.schedule,
        "augment_shift": recipe.augment_shift,
        "seed": 0,
        "best_loss": cell["best_loss"],
        "diverged_at": cell["diverged_at"],
        "val_accuracy": cell["val_accuracy"],
    }
    return cell["analysis"], source


# --- summaries shared by verdicts, report and plots ------------------------------------


def best_loss(
    results: dict[str, Any],
    family: str,
    depth: str,
    setting: str | None = None,
    *,
    lr: float | None = None,
    gate_bias: float | None = None,
) -> float | None:
    """The best training loss over seeds at this depth: of one `setting`, or of the runs
    with learning rate `lr` and/or initial gate bias `gate_bias`, or (neither) of the
    whole grid (the paper's Fig. 1 shows the best of its runs)."""
    values = [
        r["best_loss"]
        for key, cells in results["runs"][family][depth].items()
        if setting is None or key == setting
        for r in cells
        if (lr is None or r["lr"] == lr)
        and (gate_bias is None or r["gate_bias"] == gate_bias)
        and r["best_loss"] is not None
    ]
    return min(values) if values else None


def best_setting(results: dict[str, Any], family: str, depth: str) -> str | None:
    by_setting = results["runs"][family][depth]
    scored = [(best_loss(results, family, depth, key), key) for key in by_setting]
    scored = [(v, key) for v, key in scored if v is not None]
    return min(scored)[1] if scored else None


def grid_values(results: dict[str, Any], family: str, field: str) -> list[float]:
    """The learning rates or gate biases (`field`) a family's grid ran, in grid order."""
    seen = {
        cells[0][field]: None
        for by_setting in results["runs"][family].values()
        for cells in by_setting.values()
    }
    return list(seen)


def _layer_numbers(results: dict[str, Any]) -> list[int]:
    """Highway layers are layers 2..depth of the net (layer 1 is the plain first layer)."""
    return list(range(2, results["analysis_depth"] + 1))


def _split(values: list[float], results: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Values of highway layers 2..early_layers and of the later ones."""
    cut = results["early_layers"] - 1
    return values[:cut], values[cut:]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def verdicts(results: dict[str, Any]) -> list[str]:
    depths = list(results["runs"]["plain"])
    shallow, deep = depths[0], depths[-1]
    lines = []
    plain_s, plain_d = best_loss(results, "plain", shallow), best_loss(results, "plain", deep)
    high_s, high_d = best_loss(results, "highway", shallow), best_loss(results, "highway", deep)
    plain_curve, high_curve = (
        ", ".join(
            f"{d}: {_fmt(best_loss(results, f, d))} ({best_setting(results, f, d)})" for d in depths
        )
        for f in FAMILIES
    )
    if plain_s is not None and (plain_d is None or plain_d > 2 * plain_s):
        word = "supports"
    else:
        word = "does not support"
    lines.append(
        f"(a) plain nets, best training loss by depth ({plain_curve}): the {deep}-layer net "
        f"ends {_ratio(plain_d, plain_s)} the {shallow}-layer one; {word} 'plain nets "
        "degrade with depth' (criterion: more than 2x worse)."
    )
    ratio = plain_d / high_d if plain_d and high_d else None
    if ratio is not None and ratio > 100:
        word = "supports the paper's > 2 orders of magnitude"
    elif ratio is not None and ratio > 1:
        word = (
            "same direction as the paper, but short of its > 2 orders of magnitude "
            "(a small fixed grid and a few epochs here, a 100-run random search and "
            "long runs there)"
        )
    else:
        word = (
            "does not support the paper (highway not better at this depth, with a small "
            "fixed grid where the paper tunes each depth by a 100-run random search)"
        )
    lines.append(
        f"(a) highway nets, best training loss by depth ({high_curve}): at {deep} layers "
        f"{_fmt(high_d)} vs plain {_fmt(plain_d)}, "
        + (f"plain / highway = {ratio:.3g}; " if ratio else "")
        + f"{word}. Highway {deep} vs {shallow} layers: {_ratio(high_d, high_s)}."
    )
    diverged = [
        f"{family} {depth} {setting} "
        f"({sum(r['diverged_at'] is not None for r in runs)} of {len(runs)})"
        for family in FAMILIES
        for depth, by_setting in results["runs"][family].items()
        for setting, runs in by_setting.items()
        if any(r["diverged_at"] is not None for r in runs)
    ]
    lines.append(
        "(a) diverged runs (loss NaN or infinite; counted at their best loss before): "
        + (", ".join(diverged) if diverged else "none")
        + "; signal reaching the output layer at initialisation (rms, seed 0): "
        + "; ".join(
            f"{family} "
            + ", ".join(
                f"{d}: {next(iter(by_setting.values()))[0]['init_head_input_rms']:.3g}"
                for d, by_setting in results["runs"][family].items()
            )
            for family in FAMILIES
        )
        + "."
    )
    analysis = results["analysis"]
    if analysis is None:
        return [*lines, *_not_analysed(results)]
    lines.append(_analysed_net(results))
    # Gates and lesions of a net that did not learn (by the same chance criterion that
    # sent the analysis to the fallback) cannot test the paper's Sec. 4 claims, which are
    # about a trained net: the numbers are reported, the verdict is withheld.
    untrained = not _analysed_net_learned(results)
    no_test = (
        f"inconclusive: the analysed net did not learn (best training loss "
        f"{_fmt(results['analysis_source']['best_loss'])} >= {CHANCE_LOSS:g}, chance 2.30), "
        "so this neither supports nor contradicts"
    )
    gates = analysis["gates"]
    early, late = _split(gates["spread"], results)
    last = results["early_layers"]
    dev = {c: _split(v, results) for c, v in gates["class_deviation_abs"].items()}
    word = "supports" if _mean(early) > _mean(late) else "does not support"
    word = no_test if untrained else word
    dev_text = "; ".join(
        f"digit {c}: {_mean(e):.3f} vs {_mean(l_):.3f}" for c, (e, l_) in dev.items()
    )
    lines.append(
        f"(b) gates of the trained {results['analysis_depth']}-layer highway net: mean "
        f"output {_mean(gates['mean']):.3f} (initial sigmoid(bias) "
        f"{_sigmoid(results['analysis_source']['gate_bias']):.3f}), gate bias mean "
        f"{_mean(analysis['gate_bias_mean']):.2f}; "
        f"spread of gate outputs across examples, layers 2-{last} vs {last + 1}-"
        f"{results['analysis_depth']}: {_mean(early):.3f} vs {_mean(late):.3f}; mean |class "
        f"mean - overall mean|, same split: {dev_text}; {word} 'data-dependent routing "
        f"concentrated in the first ~15 layers'."
    )
    lesion = analysis["lesion"]
    intact = lesion["intact_error"] * 100
    early_e, late_e = _split([e * 100 for e in lesion["errors"]], results)
    late_rise = [e - intact for e in late_e]
    barely = sum(r < LESION_PP for r in late_rise)
    supports = _mean(early_e) > _mean(late_e) and statistics.median(late_rise) < LESION_PP
    lines.append(
        f"(c) lesioning (transform gate forced to 0) on {len(lesion['errors'])} highway "
        f"layers: intact training-subset error {intact:.2f}%; lesioning one of layers "
        f"2-{last}: mean {_mean(early_e):.2f}% (max {max(early_e, default=math.nan):.2f}%); "
        f"layers {last + 1}-{results['analysis_depth']}: mean {_mean(late_e):.2f}% "
        f"(max {max(late_e, default=math.nan):.2f}%), {barely} of {len(late_e)} within "
        f"{LESION_PP:g} point of intact; "
        + (no_test if untrained else "supports" if supports else "does not support")
        + " 'early layers matter, later ones barely do'."
    )
    return lines


def _analysed_net_learned(results: dict[str, Any]) -> bool:
    source = results["analysis_source"]
    return source.get("diverged_at") is None and (source["best_loss"] or math.inf) < CHANCE_LOSS


def _analysed_net(results: dict[str, Any]) -> str:
    """Which trained net (b) and (c) analyse, and why that one."""
    source, depth = results["analysis_source"], results["analysis_depth"]
    if source["recipe"] == "grid":
        return (
            f"(b, c) the analysed net: the best {depth}-layer highway run of the SGD grid "
            f"(lr {source['lr']:g}, initial gate bias {source['gate_bias']:g}, seed "
            f"{source['seed']}, best training loss "
            f"{source['best_loss']:.3g})."
        )
    return (
        f"(b, c) the analysed net: NOT from the SGD grid. Every {depth}-layer highway run "
        f"of the grid diverged or stayed at chance (best loss >= {CHANCE_LOSS:g}), so the "
        f"analysed net is the same width-{results['highway_width']} {depth}"
        f"-layer highway net trained with the zoo's own recipe for deep "
        f"highway nets ({source['model']}: {source['optimizer']}, lr {source['lr']:g}, "
        f"{source['schedule']} schedule, random shifts of {source['augment_shift']} pixel), "
        f"seed 0: best training loss {_fmt(source['best_loss'])}"
        + (
            ""
            if _analysed_net_learned(results)
            else f", validation accuracy {source['val_accuracy']:.2%}: it did not learn "
            f"either (best loss >= {CHANCE_LOSS:g})"
        )
        + ". The paper trains its analysed net with SGD; ours is an Adam net."
    )


def _not_analysed(results: dict[str, Any]) -> list[str]:
    depth = results["analysis_depth"]
    source = results["analysis_source"]
    why = (
        f"every {depth}-layer highway run of the SGD grid diverged or stayed at chance, "
        f"and so did the fallback net trained with the zoo's own recipe (diverged at step "
        f"{source.get('diverged_at')}, best training loss {_fmt(source.get('best_loss'))}, "
        "chance is 2.30), so there is no trained net to analyse"
    )
    return [
        f"(b) gates: not measured: {why}; neither supports nor contradicts the paper.",
        f"(c) lesioning: not measured: {why}; neither supports nor contradicts the paper.",
    ]


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "n/a (a run diverged at once)"
    return f"{a / b:.3g}x" if a >= b else f"{b / a:.3g}x lower than"


def report(results: dict[str, Any]) -> str:
    params = results["layer_params"]
    lines = [
        f"Parameters per hidden layer: plain {params['plain']:,}, highway "
        f"{params['highway']:,}. Best training loss is the lowest mean cross-entropy on "
        f"the fixed {results['subset']:,}-image training subset over the run's evaluations.",
        "Scaled down against the paper: a grid fixed before the run of one SGD recipe "
        "(Nesterov momentum, cosine decay, He-normal init; the config has the numbers): "
        "3 learning rates for every depth and both families, times 3 initial "
        "transform-gate biases for highway nets, where the paper picks each depth's and "
        "family's learning rate, momentum, decay, activation and gate bias (between -1 "
        "and -10) by a 100-run random search; a few thousand steps instead of long runs; "
        "a few seeds (fewer for the deepest nets). Every setting's runs are listed, "
        "diverged ones included; * marks the best setting per depth and family.",
        "The gate bias is in the grid because an earlier full run with the bias fixed at "
        "-2 (the common default) had no 50- or 100-layer highway net learn at any of the "
        "3 learning rates: each diverged or stayed at chance.",
        "",
        "| depth | family | params | setting | best training loss (per seed) | final training "
        "loss | validation accuracy | diverged at step |",
        "|---:|---|---:|---:|---|---|---|---|",
    ]
    for depth in results["runs"]["plain"]:
        for family in FAMILIES:
            best = best_setting(results, family, depth)
            for setting, runs in results["runs"][family][depth].items():
                mark = "*" if setting == best else ""
                lines.append(
                    f"| {depth} | {family} | {runs[0]['params']:,} | {setting}{mark} | "
                    + ", ".join(_fmt(r["best_loss"]) for r in runs)
                    + " | "
                    + ", ".join(_fmt(r["final_loss"]) for r in runs)
                    + " | "
                    + ", ".join(
                        "n/a" if r["val_accuracy"] is None else f"{r['val_accuracy']:.2%}"
                        for r in runs
                    )
                    + " | "
                    + ", ".join(str(r["diverged_at"] or "no") for r in runs)
                    + " |"
                )
    analysis = results["analysis"]
    if analysis is None:
        return "\n".join([*lines, "", *_not_analysed(results)])
    gates, lesion = analysis["gates"], analysis["lesion"]
    classes = list(gates["class_deviation_abs"])
    lines += [
        "",
        _analysed_net(results),
        "",
        f"Trained {results['analysis_depth']}-layer highway net, per highway "
        f"layer: transform-gate bias (mean over units), mean gate output and its spread "
        f"across examples (mean over units of the standard deviation), mean |class mean "
        f"- overall mean| of the gate outputs for digits {' and '.join(classes)}, and the "
        f"training-subset error with that layer lesioned (intact: "
        f"{lesion['intact_error']:.2%}).",
        "",
        "| layer | gate bias | mean gate | spread | "
        + " | ".join(f"dev. digit {c}" for c in classes)
        + " | error lesioned |",
        "|---:|---:|---:|---:|" + "---:|" * len(classes) + "---:|",
    ]
    for i, layer in enumerate(_layer_numbers(results)):
        lines.append(
            f"| {layer} | {analysis['gate_bias_mean'][i]:.3f} | {gates['mean'][i]:.3f} | "
            f"{gates['spread'][i]:.3f} | "
            + " | ".join(f"{gates['class_deviation_abs'][c][i]:.4f}" for c in classes)
            + f" | {lesion['errors'][i]:.2%} |"
        )
    return "\n".join(lines)


# --- figures --------------------------------------------------------------------------


def plot(results: dict[str, Any], config: Config, out: Path) -> list[Path]:
    paths = [_plot_sweep(results, out / "depth_sweep.png")]
    if results["analysis"] is not None:
        paths.append(_plot_gates(results, out / "gates.png"))
        paths.append(_plot_lesion(results, out / "lesion.png"))
    return paths


LR_MARKERS = ["o", "s", "^", "D", "v"]


def _plot_sweep(results: dict[str, Any], path: Path) -> Path:
    depths = list(results["runs"]["plain"])
    lrs = grid_values(results, "plain", "lr")
    markers = dict(zip(lrs, LR_MARKERS, strict=False))
    fig, (left, by_lr, by_bias, right) = plt.subplots(1, 4, figsize=(25, 5.5))
    for family in FAMILIES:
        xs, ys = [], []
        for depth in depths:
            for i, lr in enumerate(lrs):
                # a small horizontal offset per learning rate keeps the dots apart
                x = int(depth) * 1.06 ** (i - (len(lrs) - 1) / 2)
                for cells in results["runs"][family][depth].values():
                    for r in cells:
                        if r["lr"] == lr and r["best_loss"] is not None:
                            left.scatter(
                                x,
                                r["best_loss"],
                                edgecolors=COLOURS[family],
                                facecolors="none" if r["diverged_at"] else COLOURS[family],
                                alpha=0.6,
                                marker=markers[lr],
                                s=30,
                            )
            best = best_loss(results, family, depth)
            if best is not None:
                xs.append(int(depth))
                ys.append(best)
        left.plot(xs, ys, "-", color=COLOURS[family], label=f"{family}: best setting and seed")
    for lr in lrs:
        left.scatter([], [], marker=markers[lr], color="grey", label=f"lr {lr:g}")
    left.scatter([], [], marker="o", facecolors="none", edgecolors="grey", label="diverged later")
    left.set(
        xscale="log",
        yscale="log",
        xlabel="depth (layers)",
        ylabel=f"best training cross-entropy ({results['subset']:,}-image training subset)",
        title="(a) best training loss by depth (dots: every run)",
    )
    left.set_xticks([int(d) for d in depths], labels=depths)
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.legend(fontsize=8)
    styles = ["-", "--", "-.", ":"] * 4
    for family in FAMILIES:
        for depth, style in zip(depths, styles, strict=False):
            values = [best_loss(results, family, depth, lr=lr) for lr in lrs]
            shown = [(lr, v) for lr, v in zip(lrs, values, strict=True) if v is not None]
            if shown:
                by_lr.plot(
                    *zip(*shown, strict=True),
                    style,
                    marker="o",
                    ms=4,
                    color=COLOURS[family],
                    label=f"{family} {depth}",
                )
    biases = grid_values(results, "highway", "gate_bias")
    for depth, style in zip(depths, styles, strict=False):
        values = [best_loss(results, "highway", depth, gate_bias=b) for b in biases]
        shown = [(b, v) for b, v in zip(biases, values, strict=True) if v is not None]
        if shown:
            by_bias.plot(
                *zip(*shown, strict=True),
                style,
                marker="o",
                ms=4,
                color=COLOURS["highway"],
                label=f"highway {depth}",
            )
    for ax, what in ((by_lr, "learning rate"), (by_bias, "initial gate bias")):
        ax.axhline(math.log(10), color="grey", ls=":", label="chance (ln 10)")
        ax.set(yscale="log", ylabel="best training cross-entropy (best seed)")
        ax.set_title(f"the grid: best over the other settings, per {what}")
        ax.legend(ncol=2, fontsize=8)
    by_lr.set(xscale="log", xlabel="SGD learning rate")
    by_lr.set_xticks(lrs, labels=[f"{lr:g}" for lr in lrs])
    by_lr.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    by_bias.set(xlabel="initial transform-gate bias (highway nets)")
    by_bias.set_xticks(biases, labels=[f"{b:g}" for b in biases])
    for family in FAMILIES:
        for depth, style in zip(depths, styles, strict=False):
            setting = best_setting(results, family, depth)
            if setting is None:
                continue
            run = results["runs"][family][depth][setting][0]
            if run["curve"]:
                steps, losses = zip(*run["curve"], strict=True)
                label = f"{family} {depth}, {setting}" + (
                    f" (diverged at step {run['diverged_at']})" if run["diverged_at"] else ""
                )
                right.plot(steps, losses, style, color=COLOURS[family], label=label)
    right.set(
        yscale="log",
        xlabel="SGD step",
        ylabel="training cross-entropy (running mean)",
        title="training curves at the best setting (seed 0)",
    )
    right.set_ylim(top=20)  # room above the curves for the legend
    right.legend(ncol=2, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _source_short(results: dict[str, Any]) -> str:
    source = results["analysis_source"]
    if source["recipe"] == "grid":
        return (
            f"best run of the SGD grid: lr {source['lr']:g}, gate bias "
            f"{source['gate_bias']:g}, seed {source['seed']}"
        )
    return (
        f"grid runs all failed; trained with the zoo's {source['optimizer']} recipe, "
        f"lr {source['lr']:g}, best loss {_fmt(source['best_loss'])}"
        + ("" if _analysed_net_learned(results) else ": it did not learn")
    )


def _plot_gates(results: dict[str, Any], path: Path) -> Path:
    analysis = results["analysis"]
    gates = analysis["gates"]
    layers = _layer_numbers(results)
    extent_units = [-0.5, len(analysis["gate_bias"][0]) - 0.5, layers[-1] + 0.5, layers[0] - 0.5]
    fig, axes = plt.subplots(2, 3, figsize=(15, 9))
    ax = axes[0, 0]
    im = ax.imshow(analysis["gate_bias"], aspect="auto", cmap="coolwarm_r", extent=extent_units)
    fig.colorbar(im, ax=ax, label="bias")
    ax.set(
        xlabel="unit",
        ylabel="layer",
        title="transform-gate bias after training "
        f"(init {results['analysis_source']['gate_bias']:g})",
    )
    ax = axes[0, 1]
    ax.plot(layers, gates["mean"], "o-", ms=3, label="mean gate output")
    ax.plot(layers, gates["spread"], "s-", ms=3, label="spread across examples (std)")
    ax.axvline(
        results["early_layers"] + 0.5,
        color="grey",
        ls=":",
        label=f"layer {results['early_layers']} | {results['early_layers'] + 1}",
    )
    ax.set(xlabel="layer", ylabel="transform gate T(x)", title="gate output per layer")
    ax.legend(fontsize=8)
    ax = axes[0, 2]
    labels = gates["example_labels"]
    im = ax.imshow(
        gates["examples"],
        aspect="auto",
        cmap="viridis",
        extent=[-0.5, len(labels) - 0.5, layers[-1] + 0.5, layers[0] - 0.5],
    )
    fig.colorbar(im, ax=ax, label="mean gate output over units")
    ax.set_xticks(range(len(labels)), labels=labels, fontsize=7)
    ax.set(xlabel="example (its digit)", ylabel="layer", title="gate activity per example")
    for ax, digit in zip(axes[1, :2], gates["class_deviation"], strict=False):
        matrix = gates["class_deviation"][digit]
        bound = max(abs(v) for row in matrix for v in row) or 1.0
        im = ax.imshow(
            matrix,
            aspect="auto",
            cmap="RdBu_r",
            vmin=-bound,
            vmax=bound,
            extent=extent_units,
        )
        fig.colorbar(im, ax=ax, label="class mean - overall mean")
        ax.set(xlabel="unit", ylabel="layer", title=f"gate activity: digit {digit} vs all")
    ax = axes[1, 2]
    for digit, values in gates["class_deviation_abs"].items():
        ax.plot(layers, values, "o-", ms=3, label=f"digit {digit}")
    ax.axvline(results["early_layers"] + 0.5, color="grey", ls=":")
    ax.set(
        xlabel="layer",
        ylabel="mean |class mean - overall mean|",
        title="class dependence of the gates per layer",
    )
    ax.legend()
    fig.suptitle(
        f"(b) transform gates of the trained {results['analysis_depth']}-layer highway net "
        f"({_source_short(results)})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_lesion(results: dict[str, Any], path: Path) -> Path:
    lesion = results["analysis"]["lesion"]
    layers = _layer_numbers(results)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(layers, [e * 100 for e in lesion["errors"]], "o-", ms=4, label="layer lesioned")
    ax.axhline(lesion["intact_error"] * 100, color="grey", ls="--", label="intact net")
    ax.axvline(results["early_layers"] + 0.5, color="grey", ls=":")
    errors = [e * 100 for e in lesion["errors"]] + [lesion["intact_error"] * 100]
    # a log scale only where the errors span a decade (a trained net: ~1% intact, lesions
    # up to chance); within one decade it would leave the axis without tick labels
    wide = min(errors) > 0 and max(errors) / min(errors) > 10
    ax.set(
        yscale="log" if wide else "linear",
        xlabel="lesioned layer (transform gate forced to 0: the layer copies its input)",
        ylabel="training-subset error (%)",
        title=f"(c) lesioning the trained {results['analysis_depth']}-layer highway net\n"
        f"({_source_short(results)})",
    )
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
