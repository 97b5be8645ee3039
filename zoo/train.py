"""Training and evaluation on MNIST: `zoo train MODEL` and `zoo evaluate CHECKPOINT`.

The loop itself is `zoo.fit.fit`, shared with the experiments. A run writes, under
`--out` (default `runs/<model>/`): `model.pt` (weights + card), `metrics.jsonl` (one
JSON object per epoch) and `curves.png`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from pathlib import Path
from typing import IO, Any

import torch
from pydantic import Field
from pydantic_settings import CliPositionalArg
from torch import nn

from zoo.card import Metric, ModelCard
from zoo.checkpoint import load_checkpoint, save_checkpoint
from zoo.data import (
    MNIST_MEAN,
    MNIST_STD,
    VALIDATION_SEED,
    VALIDATION_SIZE,
    load_mnist,
    train_val_split,
)
from zoo.errors import DivergedError, FailedPreconditionError, InvalidArgumentError
from zoo.fit import Callback, FitState, evaluate, fit
from zoo.models import ModelSpec, TrainRecipe, get_spec
from zoo.models.layers import count_params
from zoo.settings import ZooSettings, add_settings_arguments, settings_from_args

log = logging.getLogger(__name__)

RUNS_DIR = Path("runs")


class TrainSettings(ZooSettings):
    """Settings of `zoo train`; unset hyperparameters come from the model's recipe."""

    model: CliPositionalArg[str] = Field(description="registered model name (see `zoo models`)")
    epochs: int | None = Field(None, ge=1, description="epochs (unset: the model's recipe)")
    lr: float | None = Field(None, gt=0, description="peak learning rate")
    batch_size: int | None = Field(None, ge=1, description="batch size")
    weight_decay: float | None = Field(None, ge=0, description="weight decay")
    augment_shift: int | None = Field(None, ge=0, description="random translation in pixels")
    seed: int = Field(0, description="seed of initialisation, shuffling and augmentation")
    out: Path | None = Field(None, description="output folder (unset: runs/<model>)")
    threads: int | None = Field(None, ge=1, description="torch threads (unset: all cores)")
    limit_train: int | None = Field(
        None, ge=1, description="train on the first N training images only"
    )
    limit_test: int | None = Field(
        None, ge=1, description="evaluate on the first N test images only"
    )
    progress: bool = Field(True, description="show a progress bar per epoch")


def resolve_recipe(spec: ModelSpec, settings: TrainSettings) -> TrainRecipe:
    overrides = {
        k: getattr(settings, k)
        for k in TrainRecipe.model_fields
        if getattr(settings, k, None) is not None
    }
    return spec.recipe.model_copy(update=overrides)


class MetricsFile(Callback):
    """One JSON line per epoch, flushed at once (a run can be watched while it trains)."""

    def __init__(self, file: IO[str], name: str) -> None:
        self._file, self._name = file, name

    def on_epoch(self, state: FitState, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        log.info("%s epoch %d: %s", self._name, row["epoch"], row)


def train(settings: TrainSettings, command: str) -> tuple[nn.Module, ModelCard, Path]:
    spec = get_spec(settings.model)
    recipe = resolve_recipe(spec, settings)
    out = settings.out or RUNS_DIR / spec.name
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"--out {out} is a file: expected a folder, new or existing")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file above it, no permission: say so before hours of training
        raise FailedPreconditionError(
            f"cannot write to output folder {out}: {error.strerror or error}"
        ) from None
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)

    train_split, val_split = train_val_split()
    train_data = train_split.tensors()
    if settings.limit_train:
        train_data = (train_data[0][: settings.limit_train], train_data[1][: settings.limit_train])

    model = spec.build()
    log.info(
        "training %s (%s params) with %s",
        spec.name,
        f"{count_params(model):,}",
        recipe.model_dump(),
    )
    with (out / "metrics.jsonl").open("w") as metrics_file:
        history = fit(
            model,
            train_data,
            recipe,
            validation=val_split.tensors(),
            seed=settings.seed,
            callbacks=[MetricsFile(metrics_file, spec.name)],
            progress=settings.progress,
            name=spec.name,
        )
    if history.diverged:
        raise DivergedError(
            f"{spec.name}: the training loss became NaN or infinite at step "
            f"{history.diverged_at}; try a lower --lr"
        )
    wall_time = history.wall_time_s

    test_acc, n_test = test_accuracy(model, settings.limit_test)
    card = ModelCard(
        name=spec.name,
        family=spec.family,
        architecture=type(model).__name__,
        config=spec.config.model_dump(mode="json"),
        params=count_params(model),
        description=spec.description,
        normalisation_mean=MNIST_MEAN,
        normalisation_std=MNIST_STD,
        training={
            **recipe.model_dump(),
            "seed": settings.seed,
            "train_images": len(train_data[0]),
            "validation": f"{VALIDATION_SIZE} training images held out (seed {VALIDATION_SEED})",
            "augmentation": f"random shift up to {recipe.augment_shift} px"
            if recipe.augment_shift
            else "none",
            "wall_time_s": round(wall_time, 1),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        metrics={
            "val_accuracy": Metric(value=history.epochs[-1]["val_accuracy"], command=command),
            "test_accuracy": Metric(value=round(test_acc, 6), command=command),
        },
    )
    save_checkpoint(out / "model.pt", model, card)
    plot_curves(history.epochs, out / "curves.png", spec.name)
    log.info(
        "%s: test accuracy %.2f%% on %d images in %.0f s",
        spec.name,
        100 * test_acc,
        n_test,
        wall_time,
    )
    return model, card, out


def test_accuracy(model: nn.Module, limit: int | None = None) -> tuple[float, int]:
    x, y = load_mnist("test").tensors()
    if limit:
        x, y = x[:limit], y[:limit]
    return evaluate(model, x, y)[0], len(x)


def plot_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    left.plot(epochs, [r["val_loss"] for r in history], "o-", label="validation")
    left.set(xlabel="epoch", ylabel="cross-entropy", title=f"{title}: loss")
    left.legend()
    right.plot(epochs, [100 * r["val_accuracy"] for r in history], "o-")
    right.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{title}: validation accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="zoo train", description="Train a registered model on MNIST."
    )
    add_settings_arguments(parser, TrainSettings)
    settings = settings_from_args(TrainSettings, parser.parse_args(argv))
    get_spec(settings.model)  # unknown names fail before any data is loaded
    _, card, out = train(settings, shlex.join(["zoo", "train", *argv]))
    accuracy = card.metrics["test_accuracy"].value
    print(f"{card.name}: test accuracy {100 * accuracy:.2f}% -> {out / 'model.pt'}")
    return 0


def evaluate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="zoo evaluate", description="MNIST test accuracy of a checkpoint."
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="first N test images only")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    model, card = load_checkpoint(args.checkpoint)
    accuracy, n = test_accuracy(model, args.limit)
    if args.json:
        print(
            json.dumps(
                {
                    "model": card.name,
                    "checkpoint": str(args.checkpoint),
                    "test_accuracy": accuracy,
                    "images": n,
                }
            )
        )
    else:
        print(f"{card.name}: test accuracy {100 * accuracy:.2f}% on {n} MNIST test images")
    return 0
