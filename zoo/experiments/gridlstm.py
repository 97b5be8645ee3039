"""Grid LSTM on MNIST: the 2D grid against 3D grids (a depth axis) at equal parameters.

Kalchbrenner, Danihelka & Graves (2016) arrange LSTM cells in a grid whose depth axis is
an axis like any other, with LSTM cells between layers, and apply a 3D Grid LSTM (the
two spatial axes of the image's patches plus depth, the weights not tied along depth)
to MNIST, reporting 0.32% test error. We ask what the depth axis buys at a fixed size:
the zoo's 2D Grid LSTM (`grid_lstm`, hidden 96) against 3D Grid LSTMs
(`grid_lstm_3d`) of 2 and 3 depth layers whose hidden size is chosen to give as many
parameters, all on the same 7x7 grid of 4x4 patches, trained with one recipe:

(a) test accuracy after the same number of training steps, and validation accuracy
    against steps;
(b) images/s of training (forward, backward and Adam step at batch 128) and of
    inference (batch 1, 32 and 256), in PyTorch on this machine;
(c) test accuracy after the same training time: each 3D net trained for as many steps
    as it runs in the time the 2D net takes for its steps, at the speeds of (b).

Scaled down against the paper: under two epochs instead of training to convergence, no
augmentation, 2 seeds; its 0.32% is out of this budget's reach, and the comparison at
equal parameters, steps and time is this experiment's design. Speeds are the best of a
few repeats on a shared machine, so they are a lower bound on the quiet machine's.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from zoo.experiments.base import Context, rounded
from zoo.experiments.callbacks import EvalEvery
from zoo.fit import evaluate, fit, make_optimizer
from zoo.models import TrainRecipe, create_model
from zoo.models.layers import count_params

log = logging.getLogger(__name__)

CLAIM = (
    "A 3D Grid LSTM, whose depth axis has LSTM cells between layers, classifies MNIST "
    "more accurately than a 2D Grid LSTM with as many parameters"
)
SOURCE = (
    "N. Kalchbrenner, I. Danihelka and A. Graves, 2016, Grid Long Short-Term Memory "
    "(ICLR 2016), the 3D Grid LSTM on MNIST (0.32% test error)"
)

FLAT = "2d"  # the 2D net's key; a 3D net's is "3d-<depth layers>"
COLOURS = {"2d": "tab:grey", "3d-1": "tab:green", "3d-2": "tab:blue", "3d-3": "tab:purple"}


class Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seeds: int = Field(2, ge=1, description="seeds per net (equal steps)")
    patch: int = Field(4, ge=1, description="patch side: a 7x7 grid of 4x4 patches")
    hidden_2d: int = Field(96, ge=1, description="the 2D net's hidden size (the zoo's)")
    depths: tuple[int, ...] = Field((2, 3), description="depth layers of the 3D nets")
    steps: int = Field(800, ge=1, description="training steps of (a), batch 128")
    lr: float = Field(2e-3, gt=0, description="Adam, one-cycle: the zoo's Grid LSTM recipe")
    batch_size: int = Field(128, ge=1)
    eval_every: int = Field(200, ge=1)
    val_size: int = Field(5000, ge=1, description="validation images of the curves")
    test_size: int = Field(10_000, ge=1, description="test images of the final accuracy")
    time_seeds: int = Field(1, ge=1, description="seeds per 3D net at equal time (c)")
    timing_steps: int = Field(10, ge=1, description="training steps per timed repeat")
    inference_batches: tuple[int, ...] = (1, 32, 256)
    inference_images: int = Field(1024, ge=1, description="images per timed repeat")
    timing_repeats: int = Field(3, ge=1, description="speed: the best of these repeats")

    def recipe(self) -> TrainRecipe:
        return TrainRecipe(lr=self.lr, batch_size=self.batch_size, grad_clip=1.0)


def make_config(quick: bool, seeds: int | None) -> Config:
    config = Config()
    if quick:  # about a minute on CPU: small nets on a 4x4 grid of 7x7 patches
        config = Config(
            seeds=1,
            patch=7,
            hidden_2d=32,
            steps=60,
            eval_every=20,
            val_size=1000,
            test_size=2000,
            timing_steps=3,
            inference_batches=(1, 32),
            inference_images=128,
            timing_repeats=2,
        )
    return config.model_copy(update={"seeds": seeds}) if seeds else config


# --- the nets -------------------------------------------------------------------------


def build(net: str, hidden: int, config: Config) -> nn.Module:
    """The registry's 2D net, or its 3D net with `net`'s depth layers. The caller seeds."""
    if net == FLAT:
        return create_model("grid_lstm", patch=config.patch, hidden=hidden)
    depth = int(net.removeprefix("3d-"))
    return create_model("grid_lstm_3d", patch=config.patch, hidden=hidden, depth=depth)


def matching_hidden(net: str, params: int, config: Config) -> int:
    """The hidden size that gives `net` the number of parameters closest to `params`
    (a net's parameter count grows with its hidden size: bisect, then the nearer side)."""
    low, high = 1, 4 * config.hidden_2d
    while low < high:  # the smallest hidden size with at least `params` parameters
        middle = (low + high) // 2
        if count_params(build(net, middle, config)) < params:
            low = middle + 1
        else:
            high = middle
    return min(
        (max(low - 1, 1), low), key=lambda h: abs(count_params(build(net, h, config)) - params)
    )


def sizes(config: Config) -> dict[str, dict[str, int]]:
    """{net: {"hidden", "params", "depth"}}: the 2D net, then the 3D nets at its size."""
    params = count_params(build(FLAT, config.hidden_2d, config))
    table = {FLAT: {"hidden": config.hidden_2d, "params": params, "depth": 0}}
    for depth in config.depths:
        net = f"3d-{depth}"
        hidden = matching_hidden(net, params, config)
        table[net] = {
            "hidden": hidden,
            "params": count_params(build(net, hidden, config)),
            "depth": depth,
        }
    return table


# --- speed ----------------------------------------------------------------------------


def _best_seconds(run: Callable[[], None], repeats: int) -> float:
    """The fastest of `repeats` timed calls of `run` (after one untimed warm-up call):
    on a shared machine the least disturbed one is nearest the net's own cost."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def speed(net: str, hidden: int, config: Config, context: Context) -> dict[str, Any]:
    """Training and inference images/s of a freshly initialised net, on fixed images."""
    torch.manual_seed(0)
    model = build(net, hidden, config).to(context.device)
    x, y = (t[: config.batch_size].to(context.device) for t in context.train)
    recipe = config.recipe()
    optimizer = make_optimizer(model, recipe)

    def train_steps() -> None:  # what fit does per step, without the data shuffling
        for _ in range(config.timing_steps):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()

    model.train()
    seconds = _best_seconds(train_steps, config.timing_repeats)
    result: dict[str, Any] = {
        "train_images_per_s": rounded(config.timing_steps * len(x) / seconds, 1),
        "inference_images_per_s": {},
    }
    model.eval()
    images = context.test[0]
    for batch in config.inference_batches:
        calls = max(1, config.inference_images // batch)
        chunk = images[:batch].to(context.device)

        @torch.no_grad()
        def infer(chunk: torch.Tensor = chunk, calls: int = calls) -> None:
            for _ in range(calls):
                model(chunk)

        seconds = _best_seconds(infer, config.timing_repeats)
        result["inference_images_per_s"][str(batch)] = rounded(calls * batch / seconds, 1)
    log.info("gridlstm %s speed: %s", net, result)
    return result


# --- training -------------------------------------------------------------------------


def train_one(
    net: str, hidden: int, seed: int, steps: int, config: Config, context: Context
) -> dict[str, Any]:
    """One run of the shared recipe: validation curve, final test accuracy."""
    torch.manual_seed(seed)
    model = build(net, hidden, config).to(context.device)
    val = tuple(t[: config.val_size] for t in context.validation)
    evals = EvalEvery(config.eval_every, val)
    start = [0, *(round(v, 6) for v in evaluate(model, *val))]
    history = fit(
        model,
        context.train,
        config.recipe(),
        max_steps=steps,
        seed=seed,
        device=context.device,
        callbacks=[evals],
        progress=context.progress,
        name=f"gridlstm {net} seed {seed}",
    )
    accuracy, loss = evaluate(model, *(t[: config.test_size] for t in context.test))
    curve = [start, *evals.points]
    if curve[-1][0] != history.steps:
        curve.append([history.steps, *(round(v, 6) for v in evaluate(model, *val))])
    log.info("gridlstm %s seed %d, %d steps: test accuracy %.4f", net, seed, steps, accuracy)
    return {
        "steps": history.steps,
        "diverged_at": history.diverged_at,
        "test_accuracy": round(accuracy, 6),
        "test_loss": rounded(loss),
        "curve": [[s, a, rounded(v)] for s, a, v in curve],
    }


def equal_time_steps(steps: int, speeds: dict[str, Any], net: str) -> int:
    """The steps `net` runs in the time the 2D net takes for `steps`."""
    ratio = speeds[net]["train_images_per_s"] / speeds[FLAT]["train_images_per_s"]
    return max(1, round(steps * ratio))


def run(config: Config, context: Context) -> dict[str, Any]:
    nets = sizes(config)
    speeds = {
        net: context.cell(
            f"speed/{net}", lambda n=net: speed(n, nets[n]["hidden"], config, context)
        )
        for net in nets
    }
    equal_steps = {
        net: [
            context.cell(
                f"steps/{net}/seed{s}",
                lambda n=net, s=s: train_one(
                    n, nets[n]["hidden"], s, config.steps, config, context
                ),
            )
            for s in range(config.seeds)
        ]
        for net in nets
    }
    equal_time = {
        net: [
            context.cell(
                f"time/{net}/seed{s}",
                lambda n=net, s=s: train_one(
                    n,
                    nets[n]["hidden"],
                    s,
                    equal_time_steps(config.steps, speeds, n),
                    config,
                    context,
                ),
            )
            for s in range(config.time_seeds)
        ]
        for net in nets
        if net != FLAT
    }
    return {
        "setup": {
            "patch": config.patch,
            "steps": config.steps,
            "lr": config.lr,
            "batch_size": config.batch_size,
            "seeds": config.seeds,
            "time_seeds": config.time_seeds,
            "val_size": config.val_size,
            "test_size": config.test_size,
            "threads": torch.get_num_threads(),
        },
        "nets": nets,
        "speed": speeds,
        "equal_steps": equal_steps,
        "equal_time": equal_time,
    }


# --- summaries, verdicts, report --------------------------------------------------------


def mean_accuracy(runs: list[dict[str, Any]]) -> float:
    return statistics.fmean(r["test_accuracy"] for r in runs)


def label(net: str, nets: dict[str, Any]) -> str:
    size = nets[net]
    kind = "2D" if net == FLAT else f"3D, {size['depth']} depth layers"
    return f"{kind}, hidden {size['hidden']}"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _seeds(runs: list[dict[str, Any]]) -> str:
    return "/".join(_pct(r["test_accuracy"]) for r in runs)


def verdicts(results: dict[str, Any]) -> list[str]:
    setup, nets, speeds = results["setup"], results["nets"], results["speed"]
    deep = [net for net in nets if net != FLAT]
    flat_runs = results["equal_steps"][FLAT]
    flat = mean_accuracy(flat_runs)
    lines = []
    # (a) equal parameters and steps.
    ahead = [n for n in deep if mean_accuracy(results["equal_steps"][n]) > flat]
    # Clearly ahead: the 3D net's lowest seed above the 2D net's highest.
    clearly = [
        n
        for n in ahead
        if min(r["test_accuracy"] for r in results["equal_steps"][n])
        > max(r["test_accuracy"] for r in flat_runs)
    ]
    parts = [
        f"{label(n, nets)}: {_pct(mean_accuracy(results['equal_steps'][n]))} "
        f"({_seeds(results['equal_steps'][n])})"
        for n in deep
    ]
    if len(ahead) == len(deep):
        judgement = "supports the claim (every 3D net is ahead"
        judgement += (
            ", each seed above every 2D seed)."
            if clearly == ahead
            else ("; but within the spread of the seeds).")
        )
    elif ahead:
        judgement = f"partly supports the claim (only {', '.join(ahead)} is ahead)."
    else:
        judgement = "does NOT support the claim at this budget: the 2D net is as accurate or more."
    params = ", ".join(f"{size['params']:,}" for size in nets.values())
    lines.append(
        f"(a) Equal parameters ({params}) and "
        f"{setup['steps']} steps, test accuracy (mean; each seed): 2D {_pct(flat)} "
        f"({_seeds(flat_runs)}); {'; '.join(parts)}: {judgement}"
    )
    # (b) speed.
    batches = list(speeds[FLAT]["inference_images_per_s"])
    largest = batches[-1]

    def ratio(net: str, key: str, batch: str | None = None) -> float:
        own, base = speeds[net][key], speeds[FLAT][key]
        if batch is not None:
            own, base = own[batch], base[batch]
        return base / own

    lines.append(
        f"(b) Speed ({setup['threads']} thread(s), best of repeats): training "
        f"{speeds[FLAT]['train_images_per_s']:,.0f} images/s for 2D, "
        + ", ".join(
            f"{speeds[n]['train_images_per_s']:,.0f} for {n} "
            f"({ratio(n, 'train_images_per_s'):.2f}x the 2D net's time)"
            for n in deep
        )
        + f"; inference at batch {largest}: {speeds[FLAT]['inference_images_per_s'][largest]:,.0f}"
        " for 2D, "
        + ", ".join(
            f"{speeds[n]['inference_images_per_s'][largest]:,.0f} for {n} "
            f"({ratio(n, 'inference_images_per_s', largest):.2f}x the time)"
            for n in deep
        )
        + ": "
        + (
            "at equal parameters the depth axis costs time per image, in training and in "
            "inference (our measurement, not the paper's)."
            if all(
                ratio(n, "train_images_per_s") > 1
                and ratio(n, "inference_images_per_s", largest) > 1
                for n in deep
            )
            else "at equal parameters the 3D nets are not slower throughout (our "
            "measurement, not the paper's)."
        )
    )
    # (c) equal training time.
    parts = [
        f"{n} {_pct(mean_accuracy(results['equal_time'][n]))} after "
        f"{results['equal_time'][n][0]['steps']} steps"
        for n in deep
    ]
    behind = [n for n in deep if mean_accuracy(results["equal_time"][n]) <= flat]
    lines.append(
        f"(c) Equal training time (the 2D net's {setup['steps']} steps, at the speeds of "
        f"(b)): 2D {_pct(flat)}; {'; '.join(parts)}: "
        + (
            "the depth axis pays for its cost at this budget (every 3D net ahead)."
            if not behind
            else "at equal time the 2D net is as accurate or more than "
            + ", ".join(behind)
            + ": what depth buys per step does not pay for its cost at this budget."
        )
    )
    return lines


def report(results: dict[str, Any]) -> str:
    setup, nets, speeds = results["setup"], results["nets"], results["speed"]
    batches = list(speeds[FLAT]["inference_images_per_s"])
    grid = 28 // setup["patch"]
    lines = [
        f"Setup: a {grid}x{grid} grid of {setup['patch']}x{setup['patch']} patches; every "
        f"net trained with Adam (lr {setup['lr']:g}, one-cycle), batch "
        f"{setup['batch_size']}, gradient norm clipped at 1, no augmentation; (a) "
        f"{setup['steps']} steps, {setup['seeds']} seed(s); (c) {setup['time_seeds']} "
        f"seed(s). Test accuracy on {setup['test_size']:,} MNIST test images, curves on "
        f"{setup['val_size']:,} held-out training images. Speeds in PyTorch, "
        f"{setup['threads']} thread(s), the best of a few repeats.",
        "",
        "| net | params | (a) test accuracy, equal steps | (c) steps at equal time "
        "| (c) test accuracy | train images/s | "
        + " | ".join(f"inference images/s, batch {b}" for b in batches)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(batches),
    ]
    for net, size in nets.items():
        timed = results["equal_time"].get(net)
        runs = results["equal_steps"][net]
        lines.append(
            f"| {label(net, nets)} | {size['params']:,} "
            f"| {_pct(mean_accuracy(runs))} ({_seeds(runs)}) "
            f"| {timed[0]['steps'] if timed else setup['steps']} "
            f"| {_pct(mean_accuracy(timed or runs))} "
            f"| {speeds[net]['train_images_per_s']:,.0f} | "
            + " | ".join(f"{speeds[net]['inference_images_per_s'][b]:,.0f}" for b in batches)
            + " |"
        )
    return "\n".join(lines)


# --- figures --------------------------------------------------------------------------


def plot(results: dict[str, Any], config: Config, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    setup, nets, speeds = results["setup"], results["nets"], results["speed"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))

    # (a) validation accuracy against steps, each seed.
    ax = axes[0]
    trained = []  # accuracies after the first evaluation: the range worth showing
    for net in nets:
        for i, r in enumerate(results["equal_steps"][net]):
            steps, accuracy = [p[0] for p in r["curve"]], [100 * p[1] for p in r["curve"]]
            trained += accuracy[1:]
            ax.plot(
                steps,
                accuracy,
                "o-",
                ms=3,
                color=COLOURS.get(net),
                alpha=0.85,
                label=f"{label(net, nets)}, {nets[net]['params']:,} params" if i == 0 else None,
            )
    ax.set(
        xlabel="training step",
        ylabel="validation accuracy (%)",
        title=f"(a) equal parameters: validation accuracy, {setup['seeds']} seed(s)",
        ylim=(max(0.0, min(trained) - 1), 100),
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)

    # (a, c) test error at equal steps and equal time, mean and each seed.
    ax = axes[1]
    names = list(nets)
    budgets = (("equal_steps", -0.2, "", "equal steps"), ("equal_time", 0.2, "//", "equal time"))
    for key, offset, hatch, _ in budgets:
        for x, net in enumerate(names):
            runs = results[key].get(net) or results["equal_steps"][net]  # 2D: the same run
            errors = [100 * (1 - r["test_accuracy"]) for r in runs]
            ax.bar(
                x + offset,
                statistics.fmean(errors),
                width=0.38,
                color=COLOURS.get(net),
                hatch=hatch,
                alpha=0.8,
                edgecolor="black",
            )
            ax.scatter([x + offset] * len(errors), errors, color="black", s=10, zorder=3)
    ax.set_xticks(
        range(len(names)), [label(n, nets).replace(", hidden", "\nhidden") for n in names]
    )
    ax.set(
        ylabel="test error (%)",
        title=f"(a) {setup['steps']} steps each, (c) the 2D net's training time",
    )
    ax.legend(
        handles=[
            Patch(facecolor="white", edgecolor="black", hatch=hatch, label=text)
            for _, _, hatch, text in budgets
        ],
        fontsize=8,
    )
    ax.grid(alpha=0.3, axis="y")

    # (b) images/s of training and inference.
    ax = axes[2]
    kinds = ["train", *speeds[FLAT]["inference_images_per_s"]]
    width = 0.8 / len(names)
    for i, net in enumerate(names):
        values = [
            speeds[net]["train_images_per_s"],
            *speeds[net]["inference_images_per_s"].values(),
        ]
        ax.bar(
            [k + (i - (len(names) - 1) / 2) * width for k in range(len(kinds))],
            values,
            width=width,
            color=COLOURS.get(net),
            label=net,
        )
    ax.set_xticks(
        range(len(kinds)),
        [f"train\nbatch {setup['batch_size']}"] + [f"inference\nbatch {b}" for b in kinds[1:]],
    )
    ax.set(
        yscale="log",
        ylabel="images/s",
        title=f"(b) speed in PyTorch, {setup['threads']} thread(s)",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = out / "gridlstm.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
