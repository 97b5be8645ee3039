"""One training loop for `zoo train` and every experiment: model, data, recipe, callbacks
-> history.

    history = fit(model, (x, y), recipe, callbacks=[EvalEvery(100, test_x, test_y)])

MNIST fits in memory, so batches are slices of in-memory tensors with a seeded
`randperm` (~4x faster than a DataLoader on 2 cores, measured). A callback sees every
step (`on_step`) and every epoch (`on_epoch`) and may ask the loop to stop. A loss
that turns NaN or infinite ends the run as a recorded outcome, `history.diverged_at`,
not an exception: a learning rate too high for a plain net is a result, not a crash.

Under torchrun, every process calls `fit` alike with its `zoo.distributed.Replicas` and
they train one DistributedDataParallel model. Every process draws the same seeded
permutation; each global batch of `recipe.batch_size` images is the one a single process
would take, and each process takes every world-th image of it with the augmentation
shift a single process would draw for that image. So one seed gives one result, close to
the single process's: the gradient is the same mean, summed in another order, but
BatchNorm on CPU normalises each process's share (SyncBatchNorm on CUDA: the global
batch), and the last `len(x) % world` images of each epoch's permutation are left out.
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

from zoo.distributed import SINGLE_PROCESS, Replicas, per_process_batch
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


def draw_shifts(n: int, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """[n, 2] random whole-pixel (x, y) shifts, uniform in [-max_shift, max_shift]."""
    return torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator).float()


def translate(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Images [N, C, H, W] moved by `shifts` [N, 2] whole pixels. Pixels shifted in are
    zero (background), as at MNIST's borders."""
    n = x.shape[0]
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
    replicas: Replicas = SINGLE_PROCESS,
) -> History:
    """Train `model` in place for `recipe.epochs` epochs (or `max_steps` steps, cycling
    through the data as often as needed). Shuffling and augmentation draw from `seed`;
    the model's initialisation is the caller's. Each epoch's row holds the training loss,
    the validation loss and accuracy (with `validation`), the learning rate and speed.

    With `replicas` of a torchrun run (see the module's docstring), `device` is this
    process's, `recipe.batch_size` is the global batch and must split evenly among the
    processes, `state.loss` is the global batch's loss, callbacks run in every process
    (a stop asked for in one stops all), `validation` is evaluated where it is given, and
    each epoch's row also says whether every process holds identical parameters
    (`replicas_agree`)."""
    x, y = data
    model.to(device)
    channels_last = uses_conv(model) and device == "cpu"
    if channels_last:  # ~1.4x faster convolutions on CPU (measured)
        model.to(memory_format=torch.channels_last)
    per_process_batch(recipe.batch_size, replicas.size)  # refuses a batch that does not split
    images_per_epoch = replicas.usable(len(x))
    batches_per_epoch = math.ceil(images_per_epoch / recipe.batch_size)
    epochs = math.ceil(max_steps / batches_per_epoch) if max_steps else recipe.epochs
    trained = replicas.with_sync_batchnorms(model, device)
    step_model = replicas.data_parallel(trained, device)
    optimizer = make_optimizer(trained, recipe)
    schedule = make_schedule(optimizer, recipe, max_steps or epochs * batches_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    state, history = FitState(trained, optimizer), History()
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        state.epoch = epoch
        epoch_start, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
        total, seen = 0.0, 0
        step_model.train()
        with tqdm(
            total=images_per_epoch,
            desc=f"{name} epoch {epoch}/{epochs}",
            unit="img",
            disable=not progress,
            file=sys.stderr,
        ) as bar:
            order = torch.randperm(len(x), generator=generator)[:images_per_epoch]
            for batch in order.split(recipe.batch_size):  # the global batch
                index = replicas.shard(batch)
                xb, yb = x[index], y[index]
                if recipe.augment_shift:
                    shifts = draw_shifts(len(batch), recipe.augment_shift, generator)
                    xb = translate(xb, replicas.shard(shifts))
                xb, yb = xb.to(device), yb.to(device)
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                loss = F.cross_entropy(step_model(xb), yb, label_smoothing=recipe.label_smoothing)
                state.loss = replicas.mean(loss)
                if not math.isfinite(state.loss):
                    history.diverged_at = state.step + 1
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.grad_clip:
                    nn.utils.clip_grad_norm_(trained.parameters(), recipe.grad_clip)
                optimizer.step()
                schedule.step()
                state.step += 1
                total += state.loss * len(batch)
                seen += len(batch)
                bar.update(len(batch))
                bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
                for callback in callbacks:
                    callback.on_step(state)
                state.stop = replicas.any(state.stop, device)
                if state.stop or state.step == max_steps:
                    break
        if history.diverged or not seen:
            break
        seconds = time.perf_counter() - epoch_start
        row: dict[str, Any] = {"epoch": epoch, "train_loss": round(total / seen, 6)}
        if validation is not None:
            val_acc, val_loss = evaluate(trained, *validation)
            row |= {"val_loss": round(val_loss, 6), "val_accuracy": round(val_acc, 6)}
        row |= {"lr": lr, "images_per_s": round(seen / seconds, 1), "seconds": round(seconds, 2)}
        if replicas.distributed:
            row["replicas_agree"] = replicas.agree(trained)
        history.epochs.append(row)
        for callback in callbacks:
            callback.on_epoch(state, row)
        state.stop = replicas.any(state.stop, device)
        if state.stop or state.step == max_steps:
            break
    history.steps = state.step
    history.wall_time_s = time.perf_counter() - started
    if trained is not model:  # the SyncBatchNorm copy: its state dict loads as it is
        model.load_state_dict(trained.state_dict())
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return history
