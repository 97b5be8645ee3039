"""Verification, part of every export: onnxruntime against the unfolded PyTorch model.

The reference is the model as trained (BatchNorm and parametrisations still in it),
so a passing check proves the folding exact. It runs with onnxruntime's graph
optimisations disabled (nothing but our folding between the two) and enabled (what a
server runs), at chunk sizes other than the traced batch, so a batch axis the exporter
silently fixed fails here too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from zoo.card import INPUT_NAME, OUTPUT_LOGITS, OUTPUT_PROBABILITIES
from zoo.errors import ExportError

log = logging.getLogger(__name__)

# The export issue's acceptance bounds.
MAX_ABS_DIFF = 1e-4
OPTIMISATION_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "enabled": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# The ONNX Model Zoo convention: <model dir>/test_data_set_0/{input,output}_<i>.pb.
TEST_DATA_SET = "test_data_set_0"


@dataclass(frozen=True)
class LevelReport:
    """How onnxruntime at one optimisation level agreed with PyTorch."""

    level: str
    max_abs_diff_logits: float
    max_abs_diff_probabilities: float
    argmax_agreement: float
    accuracy: float | None


@dataclass(frozen=True)
class Verification:
    images: int
    levels: tuple[LevelReport, ...]

    @property
    def max_abs_diff(self) -> float:
        return max(level.max_abs_diff_logits for level in self.levels)

    def summary(self) -> str:
        parts = [
            f"{r.level}: max|Δlogits| {r.max_abs_diff_logits:.2e}, "
            f"argmax agreement {100 * r.argmax_agreement:.2f}%"
            for r in self.levels
        ]
        return f"{self.images} images; " + "; ".join(parts)


def session(
    model_path: Path,
    level: str = "enabled",
    spin: bool = True,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> ort.InferenceSession:
    """An onnxruntime session (CPU unless told) at one of OPTIMISATION_LEVELS, default threads.

    `spin=False` stops idle worker threads from spin-waiting, which would otherwise take
    the CPU from another session run right after this one.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMISATION_LEVELS[level]
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: ort's warnings are about its own fusions
    return ort.InferenceSession(str(model_path), options, providers=list(providers))


def torch_logits(model: nn.Module, images: torch.Tensor, chunk: int) -> np.ndarray:
    """PyTorch eval-mode logits, computed in chunks to bound memory."""
    model.eval()
    with torch.no_grad():
        return torch.cat(
            [model(images[i : i + chunk]) for i in range(0, len(images), chunk)]
        ).numpy()


def ort_outputs(sess: ort.InferenceSession, images: np.ndarray, chunk: int) -> list[np.ndarray]:
    """[logits, probabilities] from onnxruntime, run in chunks of `chunk` images."""
    parts = [
        sess.run([OUTPUT_LOGITS, OUTPUT_PROBABILITIES], {INPUT_NAME: images[i : i + chunk]})
        for i in range(0, len(images), chunk)
    ]
    return [np.concatenate([p[k] for p in parts]) for k in range(2)]


def verify(
    model_path: Path,
    reference: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    chunk: int = 1000,
) -> Verification:
    """Compare model.onnx with `reference` on `images`; raise ExportError past the bounds."""
    expected = torch_logits(reference, images, chunk)
    expected_probabilities = torch.softmax(torch.from_numpy(expected), dim=1).numpy()
    pixels = images.numpy()
    reports = []
    for level in OPTIMISATION_LEVELS:
        logits, probabilities = ort_outputs(session(model_path, level), pixels, chunk)
        report = LevelReport(
            level=level,
            max_abs_diff_logits=float(np.abs(logits - expected).max()),
            max_abs_diff_probabilities=float(np.abs(probabilities - expected_probabilities).max()),
            argmax_agreement=float((logits.argmax(1) == expected.argmax(1)).mean()),
            accuracy=None if labels is None else float((logits.argmax(1) == labels.numpy()).mean()),
        )
        _check(report, model_path)
        reports.append(report)
    return Verification(images=len(images), levels=tuple(reports))


def _check(report: LevelReport, model_path: Path) -> None:
    worst = max(report.max_abs_diff_logits, report.max_abs_diff_probabilities)
    if worst > MAX_ABS_DIFF or report.argmax_agreement < 1.0:
        raise ExportError(
            f"{model_path}: onnxruntime (optimisations {report.level}) differs from PyTorch: "
            f"max abs diff {worst:.3g} (expected <= {MAX_ABS_DIFF}), "
            f"argmax agreement {100 * report.argmax_agreement:.2f}% (expected 100%)"
        )


def write_test_data_set(model_dir: Path, reference: nn.Module, images: torch.Tensor) -> Path:
    """input_0.pb (images) and output_0.pb / output_1.pb (logits, probabilities) from PyTorch."""
    folder = model_dir / TEST_DATA_SET
    folder.mkdir(parents=True, exist_ok=True)
    logits = torch.from_numpy(torch_logits(reference, images, len(images)))
    tensors = {
        "input_0.pb": (INPUT_NAME, images),
        "output_0.pb": (OUTPUT_LOGITS, logits),
        "output_1.pb": (OUTPUT_PROBABILITIES, torch.softmax(logits, dim=1)),
    }
    for filename, (name, tensor) in tensors.items():
        (folder / filename).write_bytes(
            numpy_helper.from_array(tensor.numpy(), name=name).SerializeToString()
        )
    return folder


def read_test_data_set(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """({input name: array}, {output name: array}) from a test_data_set folder."""

    def load(pattern: str) -> dict[str, np.ndarray]:
        tensors = [onnx.load_tensor(str(path)) for path in sorted(folder.glob(pattern))]
        return {t.name: numpy_helper.to_array(t) for t in tensors}

    return load("input_*.pb"), load("output_*.pb")
