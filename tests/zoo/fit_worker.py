"""A torchrun worker for tests/zoo/test_distributed.py: `fit` in a gloo group, with a
callback that asks to stop in the last process only, after step STOP_AFTER. Each process
writes the steps it took to OUT/rank<N>.json.

    torchrun --standalone --nproc-per-node 2 tests/zoo/fit_worker.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from zoo.data import train_val_split
from zoo.distributed import Replicas, torchrun_replicas
from zoo.fit import Callback, FitState, fit
from zoo.models import TrainRecipe

STOP_AFTER = 3


class StopInLastProcess(Callback):
    def __init__(self, replicas: Replicas) -> None:
        self.replicas = replicas

    def on_step(self, state: FitState) -> None:
        if self.replicas.rank == self.replicas.size - 1 and state.step == STOP_AFTER:
            state.stop = True


def main(out: Path) -> None:
    replicas = torchrun_replicas()
    assert replicas is not None, "start me with torchrun"
    x, y = train_val_split()[0].tensors()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with replicas.process_group("cpu"):
        history = fit(
            model,
            (x[:2048], y[:2048]),
            TrainRecipe(batch_size=64),
            max_steps=20,
            callbacks=[StopInLastProcess(replicas)],
            progress=False,
            replicas=replicas,
        )
    (out / f"rank{replicas.rank}.json").write_text(json.dumps({"steps": history.steps}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
