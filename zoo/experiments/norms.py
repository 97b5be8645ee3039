"""Normalisation at small batch sizes: BatchNorm, Batch Renorm, GroupNorm and LayerNorm.

BatchNorm trains with the statistics of each minibatch and infers with moving averages
of them; at a batch of 2 or 4 the two differ a great deal, and test accuracy suffers
(Wu & He 2018, Group Normalization, Sec. 4.1, Fig. 1: ResNet-50 on ImageNet at 2 images
per GPU, BN 34.7% error, GN 24.1% as at every batch size). Batch Renorm (Ioffe 2017)
trains with the moving averages' normalisation, corrected by the clipped r and d, so the
net learns what it will compute at inference; GroupNorm and LayerNorm never look across
the batch. We train one small CNN with each of the four at batch sizes 2, 4, 16 and 128
and measure MNIST test accuracy.

Fairness. Every run sees the same number of training examples (so the steps are
examples / batch), not the same number of steps: equal steps would give batch 128 64x
the data of batch 2 and measure data, not normalisation. The learning rate is scaled
linearly with the batch, lr = 0.1 x batch / 128 (the linear scaling rule of Goyal et al.
2017, which the GN paper's batch-size sweep uses: 0.1 x B/32), so each example moves the
weights by the same amount at every batch size; 0.1 at the largest batch is the usual
SGD-momentum rate, fixed before any run, as was everything in Config. Nesterov SGD with
momentum 0.9, a cosine decay over each run, no weight decay or augmentation, the same
initialisation per seed for every norm and batch size.

The net: zoo.models.batchnorm.CNN at 8-8-pool-16-16-pool channels and a 64-unit fully
connected layer, the chosen normalisation after every conv and after the fully connected
layer (group norm there: 4 groups of 16 features, zoo.models.layers.norm_1d); BN and
Batch Renorm keep torch's moving-average rate, 0.1. After the fully connected layer
their statistics come from the batch's B values of each feature, in the convs from
B x H x W values of each channel. Batch Renorm's schedule is the paper's (Sec. 4.1:
plain BN to 5k steps, dmax 5 at 25k, rmax 3 at 40k) scaled in time so that rmax reaches
3 half-way through each run: its corrections are fully on for the second half of every
run, whatever its number of steps.

To see why BN degrades, its nets are also scored as they computed in training: each
test batch of the training batch size normalised by its own statistics.

Against the papers: MNIST and a 5-layer CNN instead of ImageNet and ResNet-50 /
Inception v3; a fraction of an epoch instead of 100 epochs; and the whole batch is
small, where the Batch Renorm paper's small-minibatch test (Sec. 4.2) normalises
microbatches of 4 inside gradient minibatches of 32.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import statistics
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from zoo.experiments.base import Context, rounded
from zoo.fit import evaluate, fit
from zoo.models import TrainRecipe
from zoo.models.batch_renorm import (
    PAPER_DMAX_STEPS,
    PAPER_RMAX_STEPS,
    PAPER_WARMUP_STEPS,
    RenormSchedule,
    set_schedule,
)
from zoo.models.batchnorm import CNN, CNNConfig
from zoo.models.layers import Norm

log = logging.getLogger(__name__)

CLAIM = (
    "BatchNorm's test accuracy degrades at tiny batch sizes, because inference uses moving "
    "statistics that do not match the batch statistics it trained with; Batch Renorm, "
    "GroupNorm and LayerNorm do not degrade"
)
SOURCE = (
    "S. Ioffe, 2017, Batch Renormalization: Towards Reducing Minibatch Dependence in "
    "Batch-Normalized Models, Sec. 3-4; Y. Wu and K. He, 2018, Group Normalization, "
    "Sec. 4.1 (Fig. 1, batch sizes 32 to 2)"
)

LABELS = {
    "batch": "BatchNorm",
    "batch_renorm": "Batch Renorm",
    "group": "GroupNorm",
    "layer": "LayerNorm",
}
COLOURS = {
    "batch": "tab:red",
    "batch_renorm": "tab:orange",
    "group": "tab:blue",
    "layer": "tab:green",
}
# A norm "degrades" at a batch size when its mean test accuracy there is more than this
# below its accuracy at the largest batch (fixed before the run; seed-to-seed spread of
# these nets near 98% is a few tenths of a point).
DEGRADES = 0.01
REFERENCE_BATCH = 128  # lr = BASE_LR x batch / REFERENCE_BATCH


class Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seeds: int = Field(2, ge=1, description="seeds per cell")
    norms: tuple[Norm, ...] = ("batch", "batch_renorm", "group", "layer")
    # At least 2: BatchNorm needs more than one value per channel after the linear layer.
    batch_sizes: tuple[Annotated[int, Field(ge=2)], ...] = (2, 4, 16, 128)
    examples: int = Field(30_000, ge=1, description="training examples seen per run")
    channels: tuple[int, ...] = (8, 16)
    fc: int = Field(64, ge=1)
    base_lr: float = Field(0.1, gt=0, description=f"SGD lr at batch {REFERENCE_BATCH}")
    momentum: float = Field(0.9, ge=0, lt=1)
    renorm_relaxed_at: float = Field(
        0.5, gt=0, le=1, description="fraction of a run at which Batch Renorm's rmax reaches 3"
    )
    eval_size: int = Field(10_000, ge=1, description="test images evaluated")


def make_config(quick: bool, seeds: int | None) -> Config:
    config = Config()
    if quick:  # well under a minute on CPU: every norm and batch size, 1,500 examples each
        config = Config(seeds=1, examples=1500, eval_size=2000)
    return config.model_copy(update={"seeds": seeds}) if seeds else config


# One run ---------------------------------------------------------------------------------


def build(norm: Norm, config: Config) -> CNN:
    """The small CNN with `norm` after every conv and the fully connected layer."""
    return CNN(CNNConfig(channels=config.channels, fc=config.fc, norm=norm))


def learning_rate(batch: int, config: Config) -> float:
    return config.base_lr * batch / REFERENCE_BATCH


def steps_for(batch: int, config: Config) -> int:
    return max(1, config.examples // batch)


def renorm_schedule(steps: int, relaxed_at: float) -> RenormSchedule:
    """The paper's schedule scaled in time so that rmax reaches 3 at `relaxed_at` of a
    run of `steps` (and warm-up and dmax in the paper's proportions, 5k : 25k : 40k)."""
    scale = relaxed_at * steps / PAPER_RMAX_STEPS
    return RenormSchedule(
        warmup_steps=round(PAPER_WARMUP_STEPS * scale),
        rmax_steps=round(PAPER_RMAX_STEPS * scale),
        dmax_steps=round(PAPER_DMAX_STEPS * scale),
    )


@torch.no_grad()
def batch_statistics_accuracy(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int
) -> float:
    """Accuracy with each run of `batch` consecutive test images normalised by its own
    statistics, as in training (a remainder smaller than `batch` is left out). A copy
    runs in train mode, so the model's moving averages stay as they are."""
    net = copy.deepcopy(model).train()
    device = next(net.parameters()).device
    usable = len(x) - len(x) % batch
    correct = 0
    for start in range(0, usable, batch):
        logits = net(x[start : start + batch].to(device))
        correct += (logits.argmax(1).cpu() == y[start : start + batch]).sum().item()
    return correct / usable


def train_one(
    config: Config, context: Context, *, norm: Norm, batch: int, seed: int
) -> dict[str, Any]:
    """One net trained on `config.examples` examples at `batch`: its test accuracy."""
    steps = steps_for(batch, config)
    torch.manual_seed(seed)
    model = build(norm, config).to(context.device)
    schedule = renorm_schedule(steps, config.renorm_relaxed_at)
    if norm == "batch_renorm":
        set_schedule(model, schedule)
    lr = learning_rate(batch, config)
    recipe = TrainRecipe(
        optimizer="sgd",
        momentum=config.momentum,
        lr=lr,
        schedule="cosine",
        batch_size=batch,
    )
    history = fit(
        model,
        context.train,
        recipe,
        max_steps=steps,
        seed=seed,
        device=context.device,
        progress=context.progress,
        name=f"norms {norm} b{batch}",
    )
    test = tuple(t[: config.eval_size] for t in context.test)
    accuracy, loss = evaluate(model, *test)
    result: dict[str, Any] = {
        "accuracy": round(accuracy, 6),
        "loss": rounded(loss),
        "steps": history.steps,
        "examples": history.steps * batch,
        "lr": lr,
        "diverged_at": history.diverged_at,
    }
    if norm == "batch_renorm":
        result["renorm_schedule"] = dataclasses.asdict(schedule)
    if norm == "batch":
        result["batch_statistics_accuracy"] = round(
            batch_statistics_accuracy(model, *test, batch), 6
        )
    return result


def run(config: Config, context: Context) -> dict[str, Any]:
    def cell(norm: Norm, batch: int, seed: int) -> dict[str, Any]:
        def compute() -> dict[str, Any]:
            value = train_one(config, context, norm=norm, batch=batch, seed=seed)
            log.info("norms %s batch %d seed %d: %.4f", norm, batch, seed, value["accuracy"])
            return value

        return {"norm": norm, "batch_size": batch, "seed": seed} | context.cell(
            f"{norm}/b{batch}/seed{seed}", compute
        )

    runs = [
        cell(norm, batch, seed)
        for batch in config.batch_sizes
        for norm in config.norms
        for seed in range(config.seeds)
    ]
    return {
        "setup": {
            "norms": list(config.norms),
            "batch_sizes": list(config.batch_sizes),
            "examples": config.examples,
            "channels": list(config.channels),
            "fc": config.fc,
            "base_lr": config.base_lr,
            "reference_batch": REFERENCE_BATCH,
            "momentum": config.momentum,
            "renorm_relaxed_at": config.renorm_relaxed_at,
            "seeds": config.seeds,
            "eval_size": config.eval_size,
        },
        "runs": runs,
    }


# Summaries (shared by verdicts, report and plots) ----------------------------------------


def table(results: dict[str, Any], field: str = "accuracy") -> dict[str, dict[int, float]]:
    """{norm: {batch size: mean over seeds of `field`}} for the norms that have it."""
    values: dict[str, dict[int, list[float]]] = {}
    for run_ in results["runs"]:
        if field in run_:
            values.setdefault(run_["norm"], {}).setdefault(run_["batch_size"], [])
            values[run_["norm"]][run_["batch_size"]].append(run_[field])
    return {
        norm: {b: statistics.fmean(v) for b, v in sorted(by_batch.items())}
        for norm, by_batch in values.items()
    }


def drop(accuracies: dict[int, float], batch: int) -> float:
    """How far the accuracy at `batch` lies below the accuracy at the largest batch."""
    return accuracies[max(accuracies)] - accuracies[batch]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _row(accuracies: dict[int, float]) -> str:
    return " / ".join(_pct(a) for a in accuracies.values())


def _diverged(results: dict[str, Any]) -> list[str]:
    return [
        f"{LABELS[r['norm']]} batch {r['batch_size']} seed {r['seed']}"
        for r in results["runs"]
        if r["diverged_at"] is not None
    ]


# Verdicts and report -------------------------------------------------------------------


def _batches(sizes: list[int]) -> str:
    return "/".join(map(str, sizes)) or "none"


def verdicts(results: dict[str, Any]) -> list[str]:
    acc = table(results)
    sizes = sorted(next(iter(acc.values())))
    smallest, largest = sizes[0], sizes[-1]
    small = [b for b in sizes if b < 16] or [smallest]
    at = _batches(sizes)
    lines = []

    bn = acc.get("batch")
    if bn is not None:
        worse = [b for b in small if drop(bn, b) > DEGRADES]
        held = [b for b in small if b not in worse]
        drops = ", ".join(f"{100 * drop(bn, b):.1f} points at {b}" for b in small)
        if worse and not held:
            judgement = "supports the claim (BN degrades at every batch below 16)."
        elif worse:
            judgement = (
                f"supports the claim at batch {_batches(worse)} only: at {_batches(held)} BN "
                f"stays within {100 * DEGRADES:g} point of its batch-{largest} accuracy."
            )
        else:
            judgement = (
                f"does NOT support the claim: BN stays within {100 * DEGRADES:g} point at "
                f"every batch below 16."
            )
        lines.append(
            f"(a) BatchNorm, test accuracy at batch {at}: {_row(bn)}; below its batch-"
            f"{largest} accuracy by {drops}: {judgement}"
        )
    renorm = acc.get("batch_renorm")
    if renorm is not None and bn is not None:
        ahead = [b for b in small if renorm[b] > bn[b]]
        holds = [b for b in small if drop(renorm, b) <= DEGRADES]
        gains = ", ".join(f"{100 * (renorm[b] - bn[b]):+.1f} at {b}" for b in small)
        if len(ahead) == len(small) and len(holds) == len(small):
            judgement = "supports the claim (ahead of BN and no degradation at tiny batches)."
        elif ahead:
            judgement = (
                f"partly supports the claim: ahead of BN at batch {_batches(ahead)}, but it "
                f"still degrades, {100 * drop(renorm, smallest):.1f} points from batch "
                f"{largest} to {smallest}."
            )
        else:
            judgement = "does NOT support the claim: not ahead of BN at any batch below 16."
        lines.append(
            f"(b) Batch Renorm, test accuracy at batch {at}: {_row(renorm)}; against BN "
            f"(points): {gains}: {judgement}"
        )
    free = [n for n in ("group", "layer") if n in acc]
    if free:
        flat = all(drop(acc[n], b) <= DEGRADES for n in free for b in sizes)
        best_small = {n: max(acc[n][b] for b in sizes[:-1]) for n in free if len(sizes) > 1}
        lower_at_largest = [
            f"{LABELS[n]} is {100 * (best - acc[n][largest]):.1f} points below its best"
            for n, best in best_small.items()
            if best - acc[n][largest] > DEGRADES
        ]
        lines.append(
            f"(c) Batch-independent norms at batch {at}: "
            + "; ".join(f"{LABELS[n]} {_row(acc[n])}" for n in free)
            + ": "
            + (
                f"supports the claim (neither is more than {100 * DEGRADES:g} point below its "
                f"batch-{largest} accuracy at any smaller batch; the GN paper's ResNet-50 has "
                "24.1% ImageNet error with GN at batch 2, 34.7% with BN)"
                if flat
                else f"does NOT fully support the claim: more than {100 * DEGRADES:g} point "
                f"below batch {largest} at some smaller batch"
            )
            + (
                f"; at batch {largest} ({steps_of(results, largest)} steps) "
                f"{', '.join(lower_at_largest)}."
                if lower_at_largest
                else "."
            )
        )
    own = table(results, "batch_statistics_accuracy").get("batch")
    if own is not None and bn is not None:
        gap = own[smallest] - bn[smallest]
        moving_never_worse = all(own[b] <= bn[b] + DEGRADES for b in sizes)
        lines.append(
            f"(d) Why: BN nets scored as in training (each run of test images of the training "
            f"batch size normalised by its own statistics) reach {_row(own)} at batch {at}, "
            f"against {_row(bn)} with the moving statistics, {100 * gap:+.1f} points at batch "
            f"{smallest}: "
            + (
                "the loss at tiny batches is the mismatch between training's batch "
                "statistics and inference's moving ones, as claimed."
                if gap > DEGRADES
                else "the mismatch does NOT account for BN's accuracy at tiny batches"
                + (
                    "; the moving statistics score as well or better at every batch size"
                    if moving_never_worse
                    else ""
                )
                + (
                    ". What fails is the net trained at batch 2 itself: BN after the fully "
                    "connected layer normalises each feature over 2 values, which leaves it "
                    "at -1 or +1 whatever the two were (the convs' BN still has 2 x H x W "
                    "values a channel)."
                    if smallest == 2
                    else "."
                )
            )
        )
    diverged = _diverged(results)
    if diverged:
        lines.append(f"(e) Diverged runs (scored at divergence): {'; '.join(diverged)}.")
    return lines


def steps_of(results: dict[str, Any], batch: int) -> int:
    return next(r["steps"] for r in results["runs"] if r["batch_size"] == batch)


def report(results: dict[str, Any]) -> str:
    setup = results["setup"]
    acc = table(results)
    own = table(results, "batch_statistics_accuracy").get("batch")
    sizes = setup["batch_sizes"]
    channels = "-".join(f"{c}-{c}-pool" for c in setup["channels"])
    lines = [
        f"Setup: CNN {channels}, fully connected {setup['fc']}, the normalisation after "
        f"every conv and the fully connected layer; {setup['examples']:,} training examples "
        f"seen at every batch size (steps = examples / batch), Nesterov SGD momentum "
        f"{setup['momentum']:g}, lr {setup['base_lr']:g} x batch / "
        f"{setup['reference_batch']} (linear scaling), cosine decay; Batch Renorm's rmax "
        f"reaches 3 at {setup['renorm_relaxed_at']:.0%} of each run (the paper's schedule "
        f"scaled in time). Test accuracy on {setup['eval_size']:,} MNIST test images, mean of "
        f"{setup['seeds']} seed(s).",
        "",
        "| norm | " + " | ".join(f"batch {b}" for b in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for norm, by_batch in acc.items():
        lines.append(f"| {LABELS[norm]} | " + " | ".join(_pct(a) for a in by_batch.values()) + " |")
    if own is not None:
        lines.append(
            "| BatchNorm, each test batch normalised by its own statistics | "
            + " | ".join(_pct(a) for a in own.values())
            + " |"
        )
    lines += [
        "",
        f"Steps per run at batch {_batches(sizes)}: "
        f"{' / '.join(str(steps_of(results, b)) for b in sizes)}.",
    ]
    return "\n".join(lines)


# Figures ---------------------------------------------------------------------------------


def plot(results: dict[str, Any], config: Config, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup = results["setup"]
    acc = table(results)
    own = table(results, "batch_statistics_accuracy").get("batch")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    for ax, error in ((axes[0], False), (axes[1], True)):

        def value(accuracy: float, error: bool = error) -> float:
            return 100 * (1 - accuracy) if error else accuracy

        for norm, by_batch in acc.items():
            ax.plot(
                list(by_batch),
                [value(a) for a in by_batch.values()],
                color=COLOURS[norm],
                marker="o",
                label=f"{LABELS[norm]} (mean)",
            )
            seeds = [r for r in results["runs"] if r["norm"] == norm]
            ax.scatter(
                [r["batch_size"] for r in seeds],
                [value(r["accuracy"]) for r in seeds],
                color=COLOURS[norm],
                s=12,
                alpha=0.5,
            )
        if own is not None:
            ax.plot(
                list(own),
                [value(a) for a in own.values()],
                color=COLOURS["batch"],
                ls="--",
                marker="x",
                label="BatchNorm, test batches normalised by their own statistics",
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(setup["batch_sizes"], [str(b) for b in setup["batch_sizes"]])
        ax.set_xlabel("batch size (lr scaled linearly, same examples seen)")
        if error:
            ax.set_yscale("log")
            ax.set(ylabel="test error (%)", title="test error, log scale")
        else:
            ax.set(ylabel="test accuracy", title="test accuracy, mean and each seed")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(
        f"The same CNN at each batch size: {setup['examples']:,} training examples, "
        f"{setup['seeds']} seed(s), {setup['eval_size']:,} test images"
    )
    fig.tight_layout()
    figures = [out / "norms_batch_size.png"]
    fig.savefig(figures[0], dpi=100)
    plt.close(fig)
    return figures
