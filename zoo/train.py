"""Training and evaluation on MNIST: `zoo train MODEL` and `zoo evaluate CHECKPOINT`.

The loop itself is `zoo.fit.fit`, shared with the experiments. A run writes, under
`--out` (default `runs/<model>/`): `model.pt` (weights + card), `metrics.jsonl` (one
JSON object per epoch) and `curves.png`.

Data-parallel runs go through torchrun (see `zoo.distributed`): `zoo train NAME --nproc N`
launches `torchrun --standalone --nproc-per-node N -m zoo.train NAME ...`, and torchrun
can start this module itself on one machine or several. Rank 0 alone writes, logs and
shows progress, and evaluates: the validation and test accuracy are measured on the
weights every process holds, as a single process would measure them, while the others
wait at their next collective (evaluation is a small part of an epoch).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from contextlib import ExitStack
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
from zoo.distributed import (
    SINGLE_PROCESS,
    DeviceKind,
    Replicas,
    launch,
    per_process_batch,
    require_cuda_devices,
    torchrun_replicas,
)
from zoo.errors import DivergedError, FailedPreconditionError, InvalidArgumentError
from zoo.fit import Callback, FitState, History, evaluate, fit
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
    device: DeviceKind = Field("cpu", description="train on the CPU or on CUDA GPUs")
    nproc: int = Field(
        1,
        ge=1,
        description="data-parallel processes on this machine, launched with torchrun "
        "(the batch size is split among them)",
    )


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


def make_output_folder(out: Path) -> None:
    """Make the run's folder first: a mistake fails before hours of training."""
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"--out {out} is a file: expected a folder, new or existing")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file above it, no permission
        raise FailedPreconditionError(
            f"cannot write to output folder {out}: {error.strerror or error}"
        ) from None


def train(
    settings: TrainSettings, command: str, replicas: Replicas = SINGLE_PROCESS
) -> tuple[nn.Module, ModelCard, Path]:
    """Train; rank 0 alone (a single process is rank 0) measures and writes the run."""
    spec = get_spec(settings.model)
    recipe = resolve_recipe(spec, settings)
    device = replicas.device(settings.device)
    out = settings.out or RUNS_DIR / spec.name
    if replicas.lead:
        make_output_folder(out)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)  # the same initial weights in every process

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
    with ExitStack() as files:
        callbacks: list[Callback] = []
        if replicas.lead:
            metrics_file = files.enter_context((out / "metrics.jsonl").open("w"))
            callbacks.append(MetricsFile(metrics_file, spec.name))
        history = fit(
            model,
            train_data,
            recipe,
            validation=val_split.tensors() if replicas.lead else None,
            seed=settings.seed,
            device=device,
            callbacks=callbacks,
            progress=settings.progress and replicas.lead,
            name=spec.name,
            replicas=replicas,
        )
    if history.diverged:  # every process sees the same loss, so all stop here
        raise DivergedError(
            f"{spec.name}: the training loss became NaN or infinite at step "
            f"{history.diverged_at}; try a lower --lr"
        )
    metrics = replicas.from_lead(
        lambda: measure(spec.name, model, history, settings.limit_test, command)
    )
    training = {
        **recipe.model_dump(),
        "seed": settings.seed,
        "train_images": len(train_data[0]),
        "validation": f"{VALIDATION_SIZE} training images held out (seed {VALIDATION_SEED})",
        "augmentation": f"random shift up to {recipe.augment_shift} px"
        if recipe.augment_shift
        else "none",
        "wall_time_s": round(history.wall_time_s, 1),
        "device": settings.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if replicas.distributed:
        training["processes"] = replicas.size
    card = ModelCard(
        name=spec.name,
        family=spec.family,
        architecture=type(model).__name__,
        config=spec.config.model_dump(mode="json"),
        params=count_params(model),
        description=spec.description,
        normalisation_mean=MNIST_MEAN,
        normalisation_std=MNIST_STD,
        training=training,
        metrics=metrics,
    )
    if replicas.lead:
        save_checkpoint(out / "model.pt", model, card)
        plot_curves(history.epochs, out / "curves.png", spec.name)
    return model, card, out


def measure(
    name: str, model: nn.Module, history: History, limit_test: int | None, command: str
) -> dict[str, Metric]:
    """The final validation accuracy and the test accuracy of a finished run."""
    test_acc, n_test = test_accuracy(model, limit_test)
    log.info(
        "%s: test accuracy %.2f%% on %d images in %.0f s",
        name,
        100 * test_acc,
        n_test,
        history.wall_time_s,
    )
    return {
        "val_accuracy": Metric(value=history.epochs[-1]["val_accuracy"], command=command),
        "test_accuracy": Metric(value=round(test_acc, 6), command=command),
    }


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
    spec = get_spec(settings.model)  # unknown names fail before any data is loaded
    replicas = torchrun_replicas()
    processes = replicas.size if replicas else settings.nproc
    per_process_batch(resolve_recipe(spec, settings).batch_size, processes)
    if replicas is None and settings.nproc > 1:
        if settings.device == "cuda":
            require_cuda_devices(settings.nproc)
        make_output_folder(settings.out or RUNS_DIR / spec.name)
        return launch(settings.nproc, "zoo.train", argv)
    replicas = replicas or SINGLE_PROCESS
    if settings.nproc not in (1, replicas.local_size):
        raise InvalidArgumentError(
            f"--nproc {settings.nproc} under torchrun, which started {replicas.local_size} "
            "processes on this machine: leave --nproc out"
        )
    if not replicas.lead:  # rank 0 speaks for the run
        logging.getLogger().setLevel(logging.WARNING)
    with replicas.process_group(settings.device):
        _, card, out = train(settings, run_command(argv, settings, replicas), replicas)
    if replicas.lead:
        accuracy = card.metrics["test_accuracy"].value
        print(f"{card.name}: test accuracy {100 * accuracy:.2f}% -> {out / 'model.pt'}")
    return 0


def run_command(argv: list[str], settings: TrainSettings, replicas: Replicas) -> str:
    """The command that repeats this run, as the card records it."""
    if replicas.distributed and replicas.size != settings.nproc:  # torchrun started us
        nodes = replicas.size // replicas.local_size
        launcher = ["torchrun", f"--nnodes={nodes}", f"--nproc-per-node={replicas.local_size}"]
        return shlex.join([*launcher, "-m", "zoo.train", *argv])
    return shlex.join(["zoo", "train", *argv])


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


if __name__ == "__main__":  # what torchrun starts: torchrun --nproc-per-node N -m zoo.train NAME
    from zoo.cli import main as zoo_main

    sys.exit(zoo_main(["train", *sys.argv[1:]]))
