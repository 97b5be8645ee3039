"""Measured experiments: each of the lecture's claims as figures on MNIST.

One module per experiment (`bn`, `selu`, `highway`), each a small typed `Config`, a
`run(config, context) -> results`, a `plot(results, out) -> figures` and a
`report(record) -> markdown`; `zoo experiment NAME` runs one (zoo/experiments/cli.py),
`scripts/experiments_report.py` turns the committed results into docs/experiments.md.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from zoo.errors import NotFoundError

# name -> module, imported only when that experiment runs.
EXPERIMENTS: dict[str, str] = {
    "bn": "zoo.experiments.bn",
    "selu": "zoo.experiments.selu",
    "highway": "zoo.experiments.highway",
    "norms": "zoo.experiments.norms",
    "methods": "zoo.experiments.methods",
    "gridlstm": "zoo.experiments.gridlstm",
}


def get_experiment(name: str) -> ModuleType:
    """The experiment's module; an unknown name raises with the closest ones."""
    if name not in EXPERIMENTS:
        close = difflib.get_close_matches(name, EXPERIMENTS, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise NotFoundError(
            f"unknown experiment {name!r}{hint} (experiments: {', '.join(EXPERIMENTS)})"
        )
    return importlib.import_module(EXPERIMENTS[name])
