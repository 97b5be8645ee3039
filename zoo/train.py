"""Training and evaluation on MNIST: `zoo train MODEL` and `zoo evaluate CHECKPOINT`.

MNIST fits in memory, so batches are slices of in-memory tensors with a seeded
`randperm` (~4x faster than a DataLoader on 2 cores, measured). A run writes, under
`--out` (default `runs/<model>/`): `model.pt` (weights + card), `metrics.jsonl` (one
JSON object per epoch) and `curves.png`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from pydantic_settings import CliPositionalArg
from torch import nn
from tqdm import tqdm

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
from zoo.errors import FailedPreconditionError, InvalidArgumentError
from zoo.models import ModelSpec, TrainRecipe, get_spec
from zoo.models.layers import count_params
from zoo.settings import ZooSettings, add_settings_arguments, settings_from_args

log = logging.getLogger(__name__)

RUNS_DIR = Path("runs")
EVAL_BATCH = 1000


class TrainSettings(ZooSettings):
    """Settings of `zoo train`; unset hyperparameters come from the model's recipe."""

    model: CliPositionalArg[str] = Field(description="registered model name (see `zoo models`)")
    epochs: int | None = Field(None, ge=1, description="epochs (default: the model's recipe)")
    lr: float | None = Field(None, gt=0, description="peak learning rate")
    batch_size: int | None = Field(None, ge=1, description="batch size")
    weight_decay: float | None = Field(None, ge=0, description="weight decay")
    augment_shift: int | None = Field(None, ge=0, description="random translation in pixels")
    seed: int = Field(0, description="seed of initialisation, shuffling and augmentation")
    out: Path | None = Field(None, description="output folder (default: runs/<model>)")
    threads: int | None = Field(None, ge=1, description="torch threads (default: all cores)")
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


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by a random whole number of pixels in [-max_shift, max_shift].

    Pixels shifted in are zero (background), as at MNIST's borders.
    """
    n = x.shape[0]
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator).float()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = -shifts * 2 / x.shape[-1]  # affine_grid works in [-1, 1] coordinates
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def make_optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    params = model.parameters()
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay
        )
    cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, recipe: TrainRecipe, steps: int) -> Any:
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=steps)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def uses_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` in eval mode."""
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(x), EVAL_BATCH):
        logits = model(x[start : start + EVAL_BATCH])
        target = y[start : start + EVAL_BATCH]
        loss += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(1) == target).sum().item()
    return correct / len(x), loss / len(x)


def train_epoch(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    recipe: TrainRecipe,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    generator: torch.Generator,
    bar: tqdm,
) -> float:
    x, y = data
    model.train()
    total, seen = 0.0, 0
    channels_last = uses_conv(model)
    for index in torch.randperm(len(x), generator=generator).split(recipe.batch_size):
        xb, yb = x[index], y[index]
        if recipe.augment_shift:
            xb = random_shift(xb, recipe.augment_shift, generator)
        if channels_last:  # ~1.4x faster convolutions on CPU (measured)
            xb = xb.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(xb), yb, label_smoothing=recipe.label_smoothing)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training loss became {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        schedule.step()
        total += loss.item() * len(index)
        seen += len(index)
        bar.update(len(index))
        bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
    return total / seen


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
    generator = torch.Generator().manual_seed(settings.seed)

    train_split, val_split = train_val_split()
    train_data = train_split.tensors()
    if settings.limit_train:
        train_data = (train_data[0][: settings.limit_train], train_data[1][: settings.limit_train])
    val_x, val_y = val_split.tensors()

    model = spec.build()
    if uses_conv(model):
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe)
    steps = recipe.epochs * math.ceil(len(train_data[0]) / recipe.batch_size)
    schedule = make_schedule(optimizer, recipe, steps)
    log.info(
        "training %s (%s params) with %s",
        spec.name,
        f"{count_params(model):,}",
        recipe.model_dump(),
    )

    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    with (out / "metrics.jsonl").open("w") as metrics_file:
        for epoch in range(1, recipe.epochs + 1):
            epoch_start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            with tqdm(
                total=len(train_data[0]),
                desc=f"{spec.name} epoch {epoch}/{recipe.epochs}",
                unit="img",
                disable=not settings.progress,
                file=sys.stderr,
            ) as bar:
                train_loss = train_epoch(
                    model, train_data, recipe, optimizer, schedule, generator, bar
                )
            seconds = time.perf_counter() - epoch_start
            val_acc, val_loss = evaluate(model, val_x, val_y)
            row = {
                "epoch": epoch,
                "train_loss": round(train_loss, 6),
                "val_loss": round(val_loss, 6),
                "val_accuracy": round(val_acc, 6),
                "lr": lr,
                "images_per_s": round(len(train_data[0]) / seconds, 1),
                "seconds": round(seconds, 2),
            }
            history.append(row)
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            log.info("%s epoch %d: %s", spec.name, epoch, row)
    wall_time = time.perf_counter() - started

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
            "val_accuracy": Metric(value=history[-1]["val_accuracy"], command=command),
            "test_accuracy": Metric(value=round(test_acc, 6), command=command),
        },
    )
    model = model.to(memory_format=torch.contiguous_format)
    save_checkpoint(out / "model.pt", model, card)
    plot_curves(history, out / "curves.png", spec.name)
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
