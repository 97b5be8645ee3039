"""Batch Normalization on MNIST, after Ioffe & Szegedy 2015, Sec. 4.1 (Fig. 1).

The paper's net: 3 fully connected hidden layers of 100 sigmoid units, batch 60, small
random Gaussian weights, trained with and without BN (BN before each sigmoid). We
measure, both nets alike:

(a) test accuracy against steps;
(b) the 15th/50th/85th percentiles of the input to one sigmoid of the last hidden layer
    on a fixed batch, over training (Fig. 1b/c: drift without BN, stable with it);
(c) final accuracy against the learning rate of plain SGD (Sec. 3.3: BN allows higher
    rates), a diverged run recorded as such;
(d) final accuracy against the std of the Gaussian init (abstract: BN lets us "be less
    careful about initialization");
(e) the same net at 10 and 20 sigmoid layers (Sec. 1: BN "makes it possible to use
    saturating nonlinearities"; the paper has no such depth experiment, this is ours).

Scaled down against the paper: 10,000 steps instead of 50,000 for (a, b), 3,000 per
sweep cell and 5,000 per depth cell, 2 seeds. The paper gives neither the learning rate
nor the init std of Sec. 4.1; both were fixed once, before any run (see Config), and
every sweep varies one of them around that point.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from zoo.experiments.base import Context, rounded
from zoo.experiments.callbacks import EvalEvery, Probe
from zoo.fit import evaluate, fit
from zoo.models import TrainRecipe
from zoo.models.batchnorm import MLP, MLPConfig

log = logging.getLogger(__name__)

CLAIM = (
    "Batch Normalization keeps the inputs of each sigmoid stable during training, "
    "trains faster and to a higher accuracy, tolerates higher learning rates and "
    "poorer initialisation, and makes deep sigmoid nets trainable"
)
SOURCE = (
    "S. Ioffe and C. Szegedy, 2015, Batch Normalization: Accelerating Deep Network "
    "Training by Reducing Internal Covariate Shift, Sec. 4.1 (MNIST, Fig. 1) and Sec. 3.3"
)

NETS = ("plain", "bn")
LABELS = {"plain": "without BN", "bn": "with BN"}
COLOURS = {"plain": "tab:red", "bn": "tab:blue"}
PERCENTILES = (15, 50, 85)  # Fig. 1b/c of the paper
# A net whose test accuracy stays below this has not left the start: chance is 10%,
# always answering MNIST's commonest test digit (1) scores 11.35%.
STALLED = 0.2


class Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seeds: int = Field(2, ge=1, description="seeds per cell")
    width: int = Field(100, ge=1, description="sigmoid units per hidden layer (paper: 100)")
    depth: int = Field(3, ge=1, description="hidden layers of (a)-(d) (paper: 3)")
    batch_size: int = Field(60, ge=1, description="paper: 60")
    # Not given in the paper; fixed before any run. 0.01 is the usual "small random
    # Gaussian" of the time (e.g. Krizhevsky et al. 2012); lr 0.5 lies mid-sweep in (c).
    init_std: float = Field(0.01, gt=0)
    lr: float = Field(0.5, gt=0, description="plain SGD, no momentum, constant")
    steps: int = Field(10_000, ge=1, description="(a, b); the paper trains 50,000")
    eval_every: int = Field(250, ge=1)
    eval_size: int = Field(10_000, ge=1, description="test images evaluated")
    probe_every: int = Field(100, ge=1)
    probe_size: int = Field(1000, ge=1, description="the fixed batch: the first test images")
    probe_unit: int = Field(0, ge=0, description="the sigmoid of the last hidden layer probed")
    sweep_steps: int = Field(3000, ge=1, description="per cell of (c) and (d)")
    lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
    init_stds: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
    depths: tuple[int, ...] = (10, 20)
    depth_steps: int = Field(5000, ge=1, description="per cell of (e)")
    trains_at: float = Field(0.9, gt=0, lt=1, description="(c): a run 'trains' at this accuracy")


def make_config(quick: bool, seeds: int | None) -> Config:
    config = Config()
    if quick:  # about a minute on CPU: every part, a few hundred steps each
        config = Config(
            seeds=1,
            steps=400,
            eval_every=100,
            eval_size=2000,
            probe_every=50,
            sweep_steps=150,
            lrs=(0.1, 1.0, 10.0),
            init_stds=(0.01, 0.1, 1.0),
            depth_steps=150,
        )
    return config.model_copy(update={"seeds": seeds}) if seeds else config


# The nets ------------------------------------------------------------------------------


def build(net: str, depth: int, width: int, init_std: float) -> MLP:
    """`depth` hidden layers of `width` sigmoid units, BN before each sigmoid for "bn"
    (the zoo's MLP: Linear -> [BatchNorm1d] -> Sigmoid, inputs standardised), every
    weight drawn from N(0, init_std^2) (Sec. 4.1: "small random Gaussian values") and
    every bias zero. The caller seeds torch."""
    model = MLP(
        MLPConfig(
            hidden=(width,) * depth,
            activation="sigmoid",
            norm="batch" if net == "bn" else "none",
        )
    )
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def last_sigmoid_input(model: MLP) -> nn.Module:
    """The module whose output is the input of the last hidden layer's sigmoids: its
    BatchNorm1d with BN, its Linear without."""
    layers = list(model.net)
    last = max(i for i, layer in enumerate(layers) if isinstance(layer, nn.Sigmoid))
    return layers[last - 1]


def percentiles(output: torch.Tensor, unit: int) -> list[float]:
    """The 15th/50th/85th percentiles over the batch of one unit's value (linear
    interpolation between order statistics, as numpy's default)."""
    q = torch.tensor(PERCENTILES, dtype=torch.float64) / 100
    return [round(v, 6) for v in torch.quantile(output[:, unit].double(), q).tolist()]


def train_one(
    config: Config,
    context: Context,
    *,
    net: str,
    seed: int,
    steps: int,
    lr: float | None = None,
    init_std: float | None = None,
    depth: int | None = None,
    curve: bool = False,
    probe: bool = False,
) -> dict[str, Any]:
    """One training run: final test accuracy (at divergence, if it diverged), and on
    request the accuracy curve and the percentiles of the probed sigmoid's input."""
    lr = config.lr if lr is None else lr
    init_std = config.init_std if init_std is None else init_std
    depth = config.depth if depth is None else depth
    test = tuple(t[: config.eval_size] for t in context.test)
    torch.manual_seed(seed)
    model = build(net, depth, config.width, init_std).to(context.device)
    callbacks: list[Any] = []
    if curve:
        evals = EvalEvery(config.eval_every, test)
        start = [0, *(round(v, 6) for v in evaluate(model, *test))]
        callbacks.append(evals)
    if probe:
        batch = context.test[0][: config.probe_size]
        probed = Probe(
            last_sigmoid_input(model),
            batch,
            config.probe_every,
            lambda out: percentiles(out, config.probe_unit),
        )
        probed.record(model, 0)
        callbacks.append(probed)
    # Sec. 4.1: plain stochastic gradient descent, minibatches of 60, the same for both.
    recipe = TrainRecipe(
        optimizer="sgd",
        momentum=0.0,
        lr=lr,
        schedule="constant",
        batch_size=config.batch_size,
    )
    history = fit(
        model,
        context.train,
        recipe,
        max_steps=steps,
        seed=seed,
        device=context.device,
        callbacks=callbacks,
        progress=context.progress,
        name=f"bn {net}",
    )
    accuracy, loss = evaluate(model, *test)
    result: dict[str, Any] = {
        "accuracy": round(accuracy, 6),
        "loss": rounded(loss),
        "steps": history.steps,
        "diverged_at": history.diverged_at,
    }
    if curve:
        points = [start, *evals.points]
        if points[-1][0] != history.steps:
            points.append([history.steps, result["accuracy"], result["loss"]])
        result["curve"] = [[s, a, rounded(v)] for s, a, v in points]
    if probe:
        result["percentiles"] = probed.points
    return result


def _cell(context: Context, key: str, **kwargs: Any) -> dict[str, Any]:
    def compute() -> dict[str, Any]:
        value = train_one(**kwargs, context=context)
        outcome = f"diverged at step {value['diverged_at']}" if value["diverged_at"] else "ok"
        log.info("bn %s: test accuracy %.4f (%s)", key, value["accuracy"], outcome)
        return value

    return context.cell(key, compute)


def run(config: Config, context: Context) -> dict[str, Any]:
    seeds = range(config.seeds)
    common = {"config": config}
    curves = {
        net: [
            _cell(
                context,
                f"curve/{net}/seed{s}",
                **common,
                net=net,
                seed=s,
                steps=config.steps,
                curve=True,
                probe=True,
            )
            for s in seeds
        ]
        for net in NETS
    }
    lr_sweep = [
        {"net": net, "lr": lr, "seed": s}
        | _cell(
            context,
            f"lr/{net}/{lr:g}/seed{s}",
            **common,
            net=net,
            seed=s,
            steps=config.sweep_steps,
            lr=lr,
        )
        for lr in config.lrs
        for net in NETS
        for s in seeds
    ]
    init_sweep = [
        {"net": net, "init_std": std, "seed": s}
        | _cell(
            context,
            f"init/{net}/{std:g}/seed{s}",
            **common,
            net=net,
            seed=s,
            steps=config.sweep_steps,
            init_std=std,
        )
        for std in config.init_stds
        for net in NETS
        for s in seeds
    ]
    depth = [
        {"net": net, "depth": d, "seed": s}
        | _cell(
            context,
            f"depth/{net}/{d}/seed{s}",
            **common,
            net=net,
            seed=s,
            steps=config.depth_steps,
            depth=d,
            curve=True,
        )
        for d in config.depths
        for net in NETS
        for s in seeds
    ]
    return {
        "setup": {
            "depth": config.depth,
            "width": config.width,
            "lr": config.lr,
            "init_std": config.init_std,
            "steps": config.steps,
            "sweep_steps": config.sweep_steps,
            "depth_steps": config.depth_steps,
            "seeds": config.seeds,
            "trains_at": config.trains_at,
            "probe_unit": config.probe_unit,
            "probe_size": config.probe_size,
            "eval_size": config.eval_size,
        },
        "curves": curves,
        "lr_sweep": lr_sweep,
        "init_sweep": init_sweep,
        "depth": depth,
    }


# Summaries (shared by verdicts, report and plots) ----------------------------------------


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def sweep_table(rows: list[dict[str, Any]], key: str) -> dict[float, dict[str, dict[str, Any]]]:
    """{value of `key`: {net: {"accuracy": mean over seeds, "diverged": n, "runs": n}}}."""
    table: dict[float, dict[str, dict[str, Any]]] = {}
    for row in rows:
        entry = table.setdefault(row[key], {}).setdefault(
            row["net"], {"accuracies": [], "diverged": 0, "runs": 0}
        )
        entry["accuracies"].append(row["accuracy"])
        entry["diverged"] += row["diverged_at"] is not None
        entry["runs"] += 1
    for nets in table.values():
        for entry in nets.values():
            entry["accuracy"] = _mean(entry.pop("accuracies"))
    return dict(sorted(table.items()))


def final_accuracy(runs: list[dict[str, Any]]) -> float:
    return _mean([r["accuracy"] for r in runs])


def drift(run_: dict[str, Any]) -> float:
    """How far the probed sigmoid's input distribution moved over training: the range
    (max - min) of each of its three percentiles over the run, averaged."""
    tracks = list(zip(*(p for _, p in run_["percentiles"]), strict=True))
    return _mean([max(t) - min(t) for t in tracks])


def steps_to(run_: dict[str, Any], accuracy: float) -> int | None:
    """The first evaluated step at which the run reached `accuracy`, None if never."""
    return next((s for s, a, _ in run_["curve"] if a >= accuracy), None)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _cell_text(entry: dict[str, Any]) -> str:
    text = _pct(entry["accuracy"])
    if entry["diverged"]:
        text += f" (diverged {entry['diverged']}/{entry['runs']})"
    return text


# Verdicts and report -------------------------------------------------------------------


def verdicts(results: dict[str, Any]) -> list[str]:
    setup = results["setup"]
    lines = []
    # (a) speed and final accuracy.
    curves = results["curves"]
    plain, bn = final_accuracy(curves["plain"]), final_accuracy(curves["bn"])
    reach = [steps_to(r, plain) for r in curves["bn"]]
    reach_text = (
        f"; with BN it first reached the plain net's final accuracy at step "
        f"{'/'.join(str(s) for s in reach)}"
        if all(s is not None for s in reach)
        else ""
    )
    lines.append(
        f"(a) Training speed: after {setup['steps']} steps (lr {setup['lr']:g}, init std "
        f"{setup['init_std']:g}) test accuracy {_pct(bn)} with BN vs {_pct(plain)} without"
        f"{reach_text}: "
        + (
            "supports the claim (BN trains faster and higher)."
            if bn > plain
            else "does NOT support the claim: the plain net is as good or better."
        )
    )
    # (b) drift of the sigmoid's input distribution.
    d_plain = _mean([drift(r) for r in curves["plain"]])
    d_bn = _mean([drift(r) for r in curves["bn"]])
    first, last = (curves["plain"][0]["percentiles"][i][1] for i in (0, -1))
    first_bn, last_bn = (curves["bn"][0]["percentiles"][i][1] for i in (0, -1))
    lines.append(
        f"(b) Input of one last-layer sigmoid, 15/50/85th percentiles: without BN "
        f"{_triple(first)} at step 0 -> {_triple(last)} at the end (mean range of a "
        f"percentile over training {d_plain:.2f}); with BN {_triple(first_bn)} -> "
        f"{_triple(last_bn)} (range {d_bn:.2f}): "
        + (
            f"supports the claim (the distribution moves {d_plain / d_bn:.1f}x as much without BN)."
            if d_plain > d_bn
            else "does NOT support the claim: it moves as much or more with BN."
        )
    )
    # (c) learning rates.
    table = sweep_table(results["lr_sweep"], "lr")

    def trains(entry: dict[str, Any]) -> bool:
        return entry["accuracy"] >= setup["trains_at"] and not entry["diverged"]

    bn_only = [lr for lr, e in table.items() if trains(e["bn"]) and not trains(e["plain"])]
    plain_only = [lr for lr, e in table.items() if trains(e["plain"]) and not trains(e["bn"])]
    both = [lr for lr, e in table.items() if trains(e["plain"]) and trains(e["bn"])]
    diverged = {net: [lr for lr, e in table.items() if e[net]["diverged"]] for net in NETS}
    lines.append(
        f"(c) Learning rate ({setup['sweep_steps']} steps, 'trains' = mean test accuracy "
        f">= {_pct(setup['trains_at'])}, no seed diverged): both train at lr "
        f"{_rates(both)}; only with BN at {_rates(bn_only)}; only without BN at "
        f"{_rates(plain_only)}; diverged runs: with BN at {_rates(diverged['bn'])}, without "
        f"at {_rates(diverged['plain'])}: "
        + (
            "supports the claim (BN trains at rates where the plain net fails"
            + (
                "; no plain run diverged: it stays near chance or learns more slowly)."
                if not diverged["plain"]
                else ")."
            )
            if bn_only and not plain_only
            else "partly supports the claim (each net trains at some rates the other does not)."
            if bn_only
            else "does NOT support the claim: no rate trains with BN only."
        )
    )
    # (d) init scale.
    table = sweep_table(results["init_sweep"], "init_std")
    accs = {net: [e[net]["accuracy"] for e in table.values()] for net in NETS}
    spread = {net: max(a) - min(a) for net, a in accs.items()}
    plain_ahead = [v for v, e in table.items() if e["plain"]["accuracy"] > e["bn"]["accuracy"]]
    lines.append(
        f"(d) Init std {min(table):g}..{max(table):g} ({setup['sweep_steps']} steps, lr "
        f"{setup['lr']:g}): final accuracy with BN {_pct(min(accs['bn']))}..{_pct(max(accs['bn']))}"
        f", without {_pct(min(accs['plain']))}..{_pct(max(accs['plain']))}: "
        + (
            "supports the claim (BN is less affected by the init scale)"
            if spread["bn"] < spread["plain"] and min(accs["bn"]) > min(accs["plain"])
            else "does NOT support the claim: BN's accuracy varies as much with the init"
        )
        + (
            f"; but at init std {_rates(plain_ahead)} the plain net is ahead (best "
            f"{_pct(max(accs['plain']))} vs {_pct(max(accs['bn']))} with BN)."
            if plain_ahead
            else "."
        )
    )
    # (e) depth.
    table = sweep_table(results["depth"], "depth")

    def state(accuracy: float) -> str:
        return "stalled" if accuracy < STALLED else "trains"

    parts = [
        f"{d} layers: {_pct(e['bn']['accuracy'])} with BN ({state(e['bn']['accuracy'])}) vs "
        f"{_pct(e['plain']['accuracy'])} without ({state(e['plain']['accuracy'])})"
        for d, e in table.items()
    ]
    unstalled = sorted(
        set(table) - {d for d, e in table.items() if e["plain"]["accuracy"] < STALLED}
    )
    plain_stalls = [d for d, e in table.items() if e["plain"]["accuracy"] < STALLED]
    bn_stalls = [d for d, e in table.items() if e["bn"]["accuracy"] < STALLED]
    better = all(e["bn"]["accuracy"] > e["plain"]["accuracy"] for e in table.values())
    if len(plain_stalls) == len(table) and not bn_stalls:
        judgement = "supports the claim (the plain net stalls, the BN net trains)."
    elif better:
        judgement = (
            "partly supports the claim: BN is ahead at every depth, but "
            + "; ".join(
                ([f"the BN net also stalls at {_rates(bn_stalls)} layers"] if bn_stalls else [])
                + (
                    [f"the plain net does not stall at {_rates(unstalled)} layers"]
                    if len(plain_stalls) < len(table)
                    else []
                )
            )
            + "."
        )
    else:
        judgement = "does NOT support the claim: the plain net is as good or better at some depth."
    lines.append(
        f"(e) Deep sigmoid nets ({setup['depth_steps']} steps, 'stalled' = below "
        f"{_pct(STALLED)}): {'; '.join(parts)}: {judgement}"
    )
    return lines


def _triple(p: list[float]) -> str:
    return "/".join(f"{v:+.2f}" for v in p)


def _rates(rates: list[float]) -> str:
    return ", ".join(f"{r:g}" for r in rates) or "none"


def report(results: dict[str, Any]) -> str:
    setup = results["setup"]
    depths = " and ".join(str(d) for d in sorted({r["depth"] for r in results["depth"]}))
    lines = [
        f"Setup: {setup['depth']}x{setup['width']} sigmoid MLP ({depths} layers in (e)), "
        f"batch 60, "
        f"plain SGD (no momentum, constant lr), weights N(0, std^2), biases 0; test accuracy "
        f"on {setup['eval_size']} MNIST test images, mean of {setup['seeds']} seed(s). "
        f"Scaled down against the paper's 50,000 steps: {setup['steps']} steps for the "
        f"curves, {setup['sweep_steps']} per sweep cell, {setup['depth_steps']} per depth "
        f"cell. Probe: unit {setup['probe_unit']} of the last hidden layer, on the first "
        f"{setup['probe_size']} test images, net in train mode (BN: batch statistics).",
        "",
        "| | without BN | with BN |",
        "|---|---|---|",
    ]
    curves = results["curves"]
    lines.append(
        f"| (a) test accuracy after {setup['steps']} steps | "
        f"{_pct(final_accuracy(curves['plain']))} | {_pct(final_accuracy(curves['bn']))} |"
    )
    lines.append(
        "| (b) mean range of a percentile of the sigmoid input | "
        f"{_mean([drift(r) for r in curves['plain']]):.3f} | "
        f"{_mean([drift(r) for r in curves['bn']]):.3f} |"
    )
    for title, key, rows in (
        (
            f"(c) learning rate, init std {setup['init_std']:g}, {setup['sweep_steps']} steps",
            "lr",
            results["lr_sweep"],
        ),
        (
            f"(d) init std, lr {setup['lr']:g}, {setup['sweep_steps']} steps",
            "init_std",
            results["init_sweep"],
        ),
        (
            f"(e) depth, lr {setup['lr']:g}, init std {setup['init_std']:g}, "
            f"{setup['depth_steps']} steps",
            "depth",
            results["depth"],
        ),
    ):
        lines += ["", f"{title}:", "", f"| {key} | without BN | with BN |", "|---|---|---|"]
        for value, entry in sweep_table(rows, key).items():
            lines.append(
                f"| {value:g} | {_cell_text(entry['plain'])} | {_cell_text(entry['bn'])} |"
            )
    return "\n".join(lines)


# Figures ---------------------------------------------------------------------------------


def plot(results: dict[str, Any], config: Config, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup = results["setup"]
    figures = []

    # Fig. 1 of the paper: (a) accuracy against steps, (b, c) the sigmoid input's percentiles.
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for net in NETS:
        for i, r in enumerate(results["curves"][net]):
            steps, acc = [p[0] for p in r["curve"]], [p[1] for p in r["curve"]]
            axes[0].plot(
                steps, acc, color=COLOURS[net], alpha=0.8, label=LABELS[net] if i == 0 else None
            )
    axes[0].set(
        xlabel="training step",
        ylabel="test accuracy",
        title=f"(a) test accuracy, {setup['depth']}x{setup['width']} sigmoid, lr {setup['lr']:g}, "
        f"init std {setup['init_std']:g}",
        ylim=(0, 1),
    )
    axes[0].legend(loc="lower right")
    axes[0].grid(alpha=0.3)
    values = [v for net in NETS for _, p in results["curves"][net][0]["percentiles"] for v in p]
    pad = 0.05 * (max(values) - min(values) or 1)
    for ax, net, letter in ((axes[1], "plain", "b"), (axes[2], "bn", "c")):
        points = results["curves"][net][0]["percentiles"]
        steps = [s for s, _ in points]
        for j, q in enumerate(PERCENTILES):
            ax.plot(
                steps,
                [p[j] for _, p in points],
                color=COLOURS[net],
                lw=2 if q == 50 else 1,
                ls={15: ":", 50: "-", 85: "--"}[q],
                label=f"{q}th percentile",
            )
        ax.set(
            xlabel="training step",
            ylabel="input to the sigmoid",
            title=f"({letter}) {LABELS[net]}: one last-layer sigmoid (seed 0)",
            ylim=(min(values) - pad, max(values) + pad),  # the same scale for both nets
        )
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    figures.append(out / "bn_training.png")
    fig.savefig(figures[-1], dpi=100)
    plt.close(fig)

    # (c, d): final accuracy against the learning rate and the init std.
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key, rows, xlabel, title in (
        (
            axes[0],
            "lr",
            results["lr_sweep"],
            "learning rate (plain SGD)",
            f"(c) by learning rate; init std {setup['init_std']:g}",
        ),
        (
            axes[1],
            "init_std",
            results["init_sweep"],
            "std of the Gaussian init",
            f"(d) by init std; lr {setup['lr']:g}",
        ),
    ):
        table = sweep_table(rows, key)
        for net in NETS:
            ax.plot(
                list(table),
                [e[net]["accuracy"] for e in table.values()],
                color=COLOURS[net],
                marker="o",
                label=f"{LABELS[net]} (mean)",
            )
            done = [r for r in rows if r["net"] == net and r["diverged_at"] is None]
            lost = [r for r in rows if r["net"] == net and r["diverged_at"] is not None]
            ax.scatter(
                [r[key] for r in done],
                [r["accuracy"] for r in done],
                color=COLOURS[net],
                s=12,
                alpha=0.5,
            )
            if lost:
                ax.scatter(
                    [r[key] for r in lost],
                    [r["accuracy"] for r in lost],
                    color=COLOURS[net],
                    marker="x",
                    s=60,
                    label=f"{LABELS[net]}: diverged (accuracy at divergence)",
                )
        if key == "lr":
            ax.axhline(setup["trains_at"], color="grey", ls=":", lw=1, label="'trains' threshold")
        ax.set(
            xscale="log",
            xlabel=xlabel,
            ylabel=f"test accuracy after {setup['sweep_steps']} steps",
            ylim=(0, 1),
            title=f"{title}; mean and each seed",
        )
        ax.legend(loc="lower left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    figures.append(out / "bn_sweeps.png")
    fig.savefig(figures[-1], dpi=100)
    plt.close(fig)

    # (e): deep sigmoid nets.
    depths = sorted({r["depth"] for r in results["depth"]})
    fig, axes = plt.subplots(1, len(depths), figsize=(6 * len(depths), 4.2), squeeze=False)
    for ax, d in zip(axes[0], depths, strict=True):
        for net in NETS:
            runs = [r for r in results["depth"] if r["depth"] == d and r["net"] == net]
            for i, r in enumerate(runs):
                ax.plot(
                    [p[0] for p in r["curve"]],
                    [p[1] for p in r["curve"]],
                    color=COLOURS[net],
                    alpha=0.8,
                    label=LABELS[net] if i == 0 else None,
                )
        ax.set(
            xlabel="training step",
            ylabel="test accuracy",
            ylim=(0, 1),
            title=f"(e) {d} sigmoid layers of {setup['width']}, lr {setup['lr']:g}, "
            f"init std {setup['init_std']:g}",
        )
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    figures.append(out / "bn_depth.png")
    fig.savefig(figures[-1], dpi=100)
    plt.close(fig)
    return figures
