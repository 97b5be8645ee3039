"""What every experiment shares: its run context (output folder, device, progress,
resumable cells, MNIST in memory) and the record it writes, `results.json`.

A sweep is a set of cells, each computed by `context.cell(key, compute)`: a finished
cell is saved at once (cells.json, replaced atomically), so a run interrupted half-way
continues from the cells it finished. A cell's value must be plain JSON.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.data import load_mnist, train_val_split

log = logging.getLogger(__name__)

RESULTS_FILENAME = "results.json"
CELLS_FILENAME = "cells.json"


def rounded(value: float, digits: int = 6) -> float | None:
    """A figure for results.json: rounded, and null when NaN or infinite (a diverged run's
    loss, a blown-up statistic), which plain JSON cannot hold."""
    return round(value, digits) if math.isfinite(value) else None


def _plain(value: Any) -> Any:
    """Plain JSON has no NaN or infinity (a diverged run's loss): they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def write_json(path: Path, value: Any) -> None:
    """Replace `path` atomically: a reader (or a resumed run) never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the results from other users
        with os.fdopen(fd, "w") as f:
            json.dump(_plain(value), f, indent=1, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Context:
    """One run of one experiment."""

    out: Path
    device: str = "cpu"
    progress: bool = True
    config_key: str = ""  # cells of another config are not reused
    _cells: dict[str, Any] = field(default_factory=dict)
    computed: int = 0  # cells computed in this run (not resumed)

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / CELLS_FILENAME
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("config") == self.config_key:
                self._cells = saved["cells"]
                log.info("resuming: %d finished cells in %s", len(self._cells), path)

    def cell(self, key: str, compute: Callable[[], Any]) -> Any:
        """The value of cell `key`: from an earlier, interrupted run, or computed now."""
        if key in self._cells:
            return self._cells[key]
        started = time.perf_counter()
        value = compute()
        self._cells[key] = value
        self.computed += 1
        write_json(self.out / CELLS_FILENAME, {"config": self.config_key, "cells": self._cells})
        log.info("cell %s done in %.1f s", key, time.perf_counter() - started)
        return value

    @cached_property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 55,000 training images (the 5,000 validation ones held out), in memory."""
        return train_val_split()[0].tensors()

    @cached_property
    def validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        return train_val_split()[1].tensors()

    @cached_property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return load_mnist("test").tensors()


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def environment(device: str) -> dict[str, Any]:
    """What a figure depends on besides the config: versions, threads, device."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "platform": sys.platform,
    }


def record(
    name: str,
    module: Any,
    config: Any,
    results: dict[str, Any],
    figures: list[Path],
    *,
    command: str,
    quick: bool,
    device: str,
    wall_time_s: float,
) -> dict[str, Any]:
    """The results.json of a run: every number behind every figure, and how it was made."""
    return {
        "experiment": name,
        "claim": module.CLAIM,
        "source": module.SOURCE,
        "command": command,
        "quick": quick,
        "config": config.model_dump(mode="json"),
        "environment": environment(device),
        "wall_time_s": round(wall_time_s, 1),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "figures": [f.name for f in figures],
        "results": results,
    }
