"""One training loop for `zoo train` and every experiment: model, data, recipe, callbacks
-> history.

    history = fit(model, (x, y), recipe, callbacks=[EvalEvery(100, test_x, test_y)])

MNIST fits in memory, so batches are slices of in-memory tensors with a seeded
`randperm` (~4x faster than a DataLoader on 2 cores, measured). A callback sees every
step (`on_step`) and every epoch (`on_epoch`) and may ask the loop to stop. A loss
that turns NaN or infinite ends the run as a recorded outcome, `history.diverged_at`,
not an exception: a learning rate too high for a plain net is a result, not a crash.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from zoo.models import TrainRecipe

EVAL_BATCH = 1000
Data = tuple[torch.Tensor, torch.Tensor]


@dataclass
class FitState:
    """What a callback sees: the run so far. `stop = True` ends it after this step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs begun (1-based while running)
    loss: float = math.nan  # this step's training loss
    stop: bool = False


class Callback:
    """Hooks into the loop; override what you need."""

    def on_step(self, state: FitState) -> None:
        """After each optimizer step."""

    def on_epoch(self, state: FitState, row: dict[str, Any]) -> None:
        """After each epoch, with its row of the history (add to it to record more)."""


@dataclass
class History:
    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    diverged_at: int | None = None  # the step whose loss was NaN or infinite
    wall_time_s: float = 0.0

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    def outcome(self) -> str:
        return f"diverged at step {self.diverged_at}" if self.diverged else "finished"


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by a random whole number of pixels in [-max_shift, max_shift].

    Pixels shifted in are zero (background), as at MNIST's borders.
    """
    n = x.shape[0]
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator).float()
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = -shifts.to(x.device) * 2 / x.shape[-1]  # affine_grid works in [-1, 1]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def make_optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    params = model.parameters()
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.momentum > 0,
            weight_decay=recipe.weight_decay,
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
    """(accuracy, mean cross-entropy) of `model` in eval mode; the mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, loss = 0, 0.0
    for start in range(0, len(x), EVAL_BATCH):
        logits = model(x[start : start + EVAL_BATCH].to(device))
        target = y[start : start + EVAL_BATCH].to(device)
        loss += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(1) == target).sum().item()
    model.train(was_training)
    return correct / len(x), loss / len(x)


def fit(
    model: nn.Module,
    data: Data,
    recipe: TrainRecipe,
    *,
    validation: Data | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    name: str = "",
) -> History:
    """Train `model` in place for `recipe.epochs` epochs (or `max_steps` steps, cycling
    through the data as often as needed). Shuffling and augmentation draw from `seed`;
    the model's initialisation is the caller's. Each epoch's row holds the training loss,
    the validation loss and accuracy (with `validation`), the learning rate and speed."""
    x, y = data
    model.to(device)
    channels_last = uses_conv(model) and device == "cpu"
    if channels_last:  # ~1.4x faster convolutions on CPU (measured)
        model.to(memory_format=torch.channels_last)
    batches_per_epoch = math.ceil(len(x) / recipe.batch_size)
    epochs = math.ceil(max_steps / batches_per_epoch) if max_steps else recipe.epochs
    optimizer = make_optimizer(model, recipe)
    schedule = make_schedule(optimizer, recipe, max_steps or epochs * batches_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    state, history = FitState(model, optimizer), History()
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        state.epoch = epoch
        epoch_start, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
        total, seen = 0.0, 0
        model.train()
        with tqdm(
            total=len(x),
            desc=f"{name} epoch {epoch}/{epochs}",
            unit="img",
            disable=not progress,
            file=sys.stderr,
        ) as bar:
            for index in torch.randperm(len(x), generator=generator).split(recipe.batch_size):
                xb, yb = x[index], y[index]
                if recipe.augment_shift:
                    xb = random_shift(xb, recipe.augment_shift, generator)
                xb, yb = xb.to(device), yb.to(device)
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                loss = F.cross_entropy(model(xb), yb, label_smoothing=recipe.label_smoothing)
                state.loss = loss.item()
                if not math.isfinite(state.loss):
                    history.diverged_at = state.step + 1
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                optimizer.step()
                schedule.step()
                state.step += 1
                total += state.loss * len(index)
                seen += len(index)
                bar.update(len(index))
                bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
                for callback in callbacks:
                    callback.on_step(state)
                if state.stop or state.step == max_steps:
                    break
        if history.diverged or not seen:
            break
        seconds = time.perf_counter() - epoch_start
        row: dict[str, Any] = {"epoch": epoch, "train_loss": round(total / seen, 6)}
        if validation is not None:
            val_acc, val_loss = evaluate(model, *validation)
            row |= {"val_loss": round(val_loss, 6), "val_accuracy": round(val_acc, 6)}
        row |= {"lr": lr, "images_per_s": round(seen / seconds, 1), "seconds": round(seconds, 2)}
        history.epochs.append(row)
        for callback in callbacks:
            callback.on_epoch(state, row)
        if state.stop or state.step == max_steps:
            break
    history.steps = state.step
    history.wall_time_s = time.perf_counter() - started
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return history
