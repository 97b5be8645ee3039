"""Callbacks the experiments share: accuracy and loss every N steps, and a forward-hook
probe that records what a module emits on a fixed batch as training goes on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from zoo.fit import Callback, FitState, evaluate


class EvalEvery(Callback):
    """Accuracy and loss on `data` every `every` steps (fit calls back after each step,
    so step 0 is the caller's to record): `points` holds [step, accuracy, loss] rows."""

    def __init__(self, every: int, data: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.every, self.data = every, data
        self.points: list[list[float]] = []

    def on_step(self, state: FitState) -> None:
        if state.step % self.every == 0:
            accuracy, loss = evaluate(state.model, *self.data)
            self.points.append([state.step, round(accuracy, 6), round(loss, 6)])


class LossEvery(Callback):
    """The mean training loss of each `every` steps: `points` holds [step, loss] rows."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.points: list[list[float]] = []
        self._sum, self._count = 0.0, 0

    def on_step(self, state: FitState) -> None:
        self._sum += state.loss
        self._count += 1
        if state.step % self.every == 0:
            self.points.append([state.step, round(self._sum / self._count, 6)])
            self._sum, self._count = 0.0, 0


class Probe(Callback):
    """Every `every` steps, run `batch` through the model (no gradients, the model's mode
    kept) and hand what `module` emitted to `summarise`; `points` holds
    [step, summarise(output)] rows. Call `record(model, step)` to add a row by hand
    (e.g. at step 0, before training).

    The model is left as it was found: in train mode a forward pass folds the batch into
    BatchNorm's running averages, so every buffer is put back afterwards."""

    def __init__(
        self,
        module: nn.Module,
        batch: torch.Tensor,
        every: int,
        summarise: Callable[[torch.Tensor], Any],
    ) -> None:
        self.module, self.batch, self.every, self.summarise = module, batch, every, summarise
        self.points: list[list[Any]] = []

    @torch.no_grad()
    def record(self, model: nn.Module, step: int) -> None:
        seen: list[torch.Tensor] = []
        saved = {name: b.clone() for name, b in model.named_buffers()}
        handle = self.module.register_forward_hook(lambda m, i, out: seen.append(out.detach()))
        try:
            model(self.batch.to(next(model.parameters()).device))
        finally:
            handle.remove()
            for name, b in model.named_buffers():
                b.copy_(saved[name])
        self.points.append([step, self.summarise(seen[0].cpu())])

    def on_step(self, state: FitState) -> None:
        if state.step % self.every == 0:
            self.record(state.model, state.step)
