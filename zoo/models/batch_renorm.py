"""Batch Renormalization (Ioffe 2017, "Batch Renormalization: Towards Reducing Minibatch
Dependence in Batch-Normalized Models"), as a subclass of torch's BatchNorm.

In training a BatchNorm normalises with the minibatch's mean μ_B and std σ_B, at
inference with the moving averages μ, σ; when a minibatch is small the two disagree.
Batch Renorm trains with (x − μ_B)/σ_B · r + d, where r = σ_B/σ and d = (μ_B − μ)/σ
(Algorithm 1), which is exactly (x − μ)/σ; r is clipped to [1/rmax, rmax] and d to
[−dmax, dmax], and both are constants to the gradient, so the net still learns through
the batch statistics as under BN. The moving averages are updated as BN's.

At inference it IS a BatchNorm with the moving statistics (eval mode runs BatchNorm's own
forward), so the exporter folds it like one and the ONNX graph has no normalisation left.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

# Ioffe 2017, Sec. 4.1 (Inception v3 on ImageNet): rmax = 1, dmax = 0 (plain batchnorm)
# for the first 5,000 steps, then relaxed to reach rmax = 3 at 40k steps and dmax = 5
# at 25k steps.
PAPER_RMAX = 3.0
PAPER_DMAX = 5.0
PAPER_WARMUP_STEPS = 5_000
PAPER_RMAX_STEPS = 40_000
PAPER_DMAX_STEPS = 25_000


@dataclass(frozen=True)
class RenormSchedule:
    """rmax and dmax against the training step: 1 and 0 (plain BN) up to `warmup_steps`,
    then raised linearly (the paper says only "gradually") to `rmax` at `rmax_steps` and
    to `dmax` at `dmax_steps`, and held there."""

    rmax: float = PAPER_RMAX
    dmax: float = PAPER_DMAX
    warmup_steps: int = PAPER_WARMUP_STEPS
    rmax_steps: int = PAPER_RMAX_STEPS
    dmax_steps: int = PAPER_DMAX_STEPS

    def __post_init__(self) -> None:
        if self.rmax < 1 or self.dmax < 0:
            raise ValueError(f"expected rmax >= 1 and dmax >= 0, got {self.rmax}, {self.dmax}")
        if not 0 <= self.warmup_steps <= min(self.rmax_steps, self.dmax_steps):
            raise ValueError(
                f"expected 0 <= warmup_steps <= rmax_steps, dmax_steps, got {self.warmup_steps}, "
                f"{self.rmax_steps}, {self.dmax_steps}"
            )

    def limits(self, step: int) -> tuple[float, float]:
        """(rmax, dmax) at `step`, the number of training steps taken before this one."""
        return (
            1 + (self.rmax - 1) * self._progress(step, self.rmax_steps),
            self.dmax * self._progress(step, self.dmax_steps),
        )

    def _progress(self, step: int, end: int) -> float:
        """0 until the warm-up ends, 1 from `end` on, linear in between."""
        if step >= end:
            return 1.0
        return max(0.0, (step - self.warmup_steps) / (end - self.warmup_steps))


class _BatchRenorm(_BatchNorm):
    """The training-time forward of Algorithm 1; everything else is BatchNorm's.

    The schedule's step counter is BatchNorm's own `num_batches_tracked` buffer: one per
    training forward pass, saved and restored with the weights, so no callback drives it.
    """

    def __init__(
        self,
        num_features: int,
        schedule: RenormSchedule | None = None,  # None: the paper's
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine=True, track_running_stats=True)
        self.schedule = schedule or RenormSchedule()

    def limits(self) -> tuple[float, float]:
        """(rmax, dmax) for the next training step."""
        return self.schedule.limits(int(self.num_batches_tracked))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)  # BatchNorm with the moving statistics
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]  # everything but the channels
        count = x.numel() // x.shape[1]
        if count < 2:
            raise ValueError(
                f"Batch Renorm needs more than 1 value per channel in training, got input "
                f"of shape {list(x.shape)}"
            )
        shape = [1, -1] + [1] * (x.dim() - 2)  # a per-channel vector against x
        mean = x.mean(dims)
        var = x.var(dims, correction=0)
        batch_std = torch.sqrt(var + self.eps)
        r, d = self._corrections(mean.detach(), batch_std.detach())
        self._update_moving_averages(mean.detach(), var.detach(), count)
        x_hat = (x - mean.view(shape)) / batch_std.view(shape) * r.view(shape) + d.view(shape)
        return x_hat * self.weight.view(shape) + self.bias.view(shape)

    @torch.no_grad()
    def _corrections(self, mean: Tensor, batch_std: Tensor) -> tuple[Tensor, Tensor]:
        """r = clip(σ_B/σ, 1/rmax, rmax), d = clip((μ_B − μ)/σ, −dmax, dmax), from the moving
        averages before this batch updates them (Algorithm 1's order)."""
        rmax, dmax = self.limits()
        std = torch.sqrt(self.running_var + self.eps)
        r = (batch_std / std).clamp(1 / rmax, rmax)
        d = ((mean - self.running_mean) / std).clamp(-dmax, dmax)
        return r, d

    @torch.no_grad()
    def _update_moving_averages(self, mean: Tensor, var: Tensor, count: int) -> None:
        """As torch's BatchNorm: an exponential average with rate `momentum`, of the mean and
        of the unbiased variance."""
        self.running_mean.mul_(1 - self.momentum).add_(mean, alpha=self.momentum)
        unbiased = var * (count / (count - 1))
        self.running_var.mul_(1 - self.momentum).add_(unbiased, alpha=self.momentum)
        self.num_batches_tracked.add_(1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, schedule={self.schedule}"


class BatchRenorm1d(_BatchRenorm, nn.BatchNorm1d):
    """Batch Renorm over [N, C] or [N, C, L]; at inference a BatchNorm1d."""


class BatchRenorm2d(_BatchRenorm, nn.BatchNorm2d):
    """Batch Renorm over [N, C, H, W]; at inference a BatchNorm2d."""


def set_schedule(model: nn.Module, schedule: RenormSchedule) -> int:
    """Give every Batch Renorm layer of `model` this schedule; returns how many there were."""
    layers = [m for m in model.modules() if isinstance(m, _BatchRenorm)]
    for layer in layers:
        layer.schedule = schedule
    return len(layers)
