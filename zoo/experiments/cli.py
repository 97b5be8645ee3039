"""`zoo experiment NAME [--quick] [--seeds N] [--out DIR] [--device ...]`."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import time
from pathlib import Path
from types import ModuleType
from typing import Literal

import torch
from pydantic import Field
from pydantic_settings import CliPositionalArg

from zoo.errors import NotFoundError
from zoo.experiments import EXPERIMENTS, get_experiment
from zoo.experiments.base import RESULTS_FILENAME, Context, record, resolve_device, write_json
from zoo.settings import ZooSettings, add_settings_arguments, settings_from_args

log = logging.getLogger(__name__)

RUNS_DIR = Path("runs/experiments")


class ExperimentSettings(ZooSettings):
    name: CliPositionalArg[str] = Field(description=f"experiment: {', '.join(EXPERIMENTS)}")
    quick: bool = Field(False, description="shrink steps and sizes to about a minute (for CI)")
    seeds: int | None = Field(None, ge=1, description="seeds per cell (unset: the experiment's)")
    out: Path | None = Field(None, description="output folder (unset: runs/experiments/NAME)")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="torch device")
    threads: int | None = Field(None, ge=1, description="torch threads (unset: all cores)")
    progress: bool = Field(True, description="show progress bars")
    replot: bool = Field(
        False, description="redraw the figures from the results.json in --out, without running"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="zoo experiment",
        description="Run one of the lecture's claims as a measured experiment on MNIST.",
    )
    add_settings_arguments(parser, ExperimentSettings)
    settings = settings_from_args(ExperimentSettings, parser.parse_args(argv))
    module = get_experiment(settings.name)  # an unknown name fails before any work
    config = module.make_config(quick=settings.quick, seeds=settings.seeds)
    device = resolve_device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    out = settings.out or RUNS_DIR / settings.name
    if settings.replot:
        return replot(module, out)
    context = Context(
        out, device=device, progress=settings.progress, config_key=config.model_dump_json()
    )
    started = time.perf_counter()
    results = module.run(config, context)
    figures = module.plot(results, config, out)
    command = shlex.join(["zoo", "experiment", *argv])
    write_json(
        out / RESULTS_FILENAME,
        record(
            settings.name,
            module,
            config,
            results,
            figures,
            command=command,
            quick=settings.quick,
            device=device,
            wall_time_s=time.perf_counter() - started,
        ),
    )
    print(f"zoo experiment {settings.name}: {out / RESULTS_FILENAME}, {len(figures)} figures")
    for line in module.verdicts(results):
        print(f"  {line}")
    return 0


def replot(module: ModuleType, out: Path) -> int:
    """Redraw a finished run's figures with the current plot code; the numbers stay."""
    path = out / RESULTS_FILENAME
    if not path.is_file():
        raise NotFoundError(f"{path}: no results to redraw; run the experiment first")
    saved = json.loads(path.read_text())
    config = module.Config(**saved["config"])
    saved["figures"] = [f.name for f in module.plot(saved["results"], config, out)]
    write_json(path, saved)
    print(f"zoo experiment {saved['experiment']}: redrew {len(saved['figures'])} figures in {out}")
    return 0
