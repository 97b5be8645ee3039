"""One model into the repository: fold, export, verify, write; staged, then renamed into place.

    <repository>/<model>/config.pbtxt                      (zoo.repository writes it)
    <repository>/<model>/card.json
    <repository>/<model>/<version>/model.onnx
    <repository>/<model>/<version>/test_data_set_0/{input_0,output_0,output_1}.pb

Everything is written into a hidden folder inside the repository (same file system,
so renames are atomic; `zoo.repository.list_models` skips hidden folders) and moved
into place only after verification passed: an interrupted or failed export leaves
no half model.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from zoo import repository
from zoo.card import Metric, ModelCard
from zoo.errors import AlreadyExistsError, ExportError, FailedPreconditionError
from zoo.export.fold import fold_model
from zoo.export.onnx_export import DEFAULT_OPSET, MIN_OPSET, export_onnx
from zoo.export.verify import (
    MAX_ABS_DIFF,
    TEST_DATA_SET,
    Verification,
    ort_outputs,
    read_test_data_set,
    session,
    verify,
    write_test_data_set,
)
from zoo.settings import ZooSettings

log = logging.getLogger(__name__)

# Images in test_data_set_0: a handful, so the repository stays small.
TEST_DATA_IMAGES = 8


class ExportSettings(ZooSettings):
    """Settings of `zoo export` (flags override ZOO_* variables)."""

    repository: Path = Field(description="model repository folder (Triton layout)")
    version: int = Field(1, ge=1, description="version folder to write")
    opset: int = Field(DEFAULT_OPSET, ge=MIN_OPSET, description="ONNX opset")
    force: bool = Field(False, description="replace a version that exists already")
    checkpoints_dir: Path = Field(
        Path("runs"),
        description="where --all (or a model without --checkpoint) finds <model>/model.pt",
    )
    verify_images: int | None = Field(
        None, ge=1, description="verify on the first N MNIST test images (unset: all 10,000)"
    )
    max_batch_size: int = Field(128, ge=1, description="config.pbtxt max_batch_size")
    preferred_batch_sizes: tuple[int, ...] = Field(
        (8, 32), description="config.pbtxt dynamic_batching preferred sizes, comma-separated"
    )
    max_queue_delay_us: int = Field(500, ge=0, description="config.pbtxt max queue delay (µs)")
    progress: bool = Field(True, description="show a progress bar")

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _within_max_batch(cls, sizes: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        # Triton refuses a config whose preferred batch size exceeds max_batch_size.
        limit = info.data.get("max_batch_size", 0)
        if any(not 1 <= size <= limit for size in sizes):
            raise ValueError(f"each must be between 1 and --max-batch-size {limit}")
        return sizes


@dataclass(frozen=True)
class ExportResult:
    name: str
    version: int
    onnx_path: Path
    onnx_bytes: int
    verification: Verification
    seconds: float


def refuse_existing(settings: ExportSettings, name: str) -> None:
    """AlreadyExistsError when the version folder exists and --force was not given."""
    version_dir = settings.repository / name / str(settings.version)
    if version_dir.exists() and not settings.force:
        raise AlreadyExistsError(
            f"{version_dir} exists already: pass --force to replace it, "
            f"or --version {_next_version(settings.repository / name)}"
        )


def _next_version(model_dir: Path) -> int:
    return max(repository.version_folders(model_dir), default=0) + 1


def export_model(
    model: nn.Module,
    card: ModelCard,
    settings: ExportSettings,
    data: tuple[torch.Tensor, torch.Tensor],
    command: str,
    on_stage: Callable[[str], None] = lambda stage: None,
) -> ExportResult:
    """Export a trained model (eval mode) into the repository; `data` are test images and labels."""
    started = time.perf_counter()
    refuse_existing(settings, card.name)
    images, labels = data
    on_stage("fold")
    folded = fold_model(model, images[:2])
    on_stage("export")
    proto = export_onnx(folded, card, settings.opset)
    with _staging(settings.repository, card.name) as stage:
        version_dir = stage / str(settings.version)
        version_dir.mkdir()
        onnx_path = version_dir / repository.DEFAULT_MODEL_FILENAME
        onnx.save_model(proto, onnx_path)
        on_stage("verify")
        verification = verify(onnx_path, model, images, labels)
        write_test_data_set(version_dir, model, images[:TEST_DATA_IMAGES])
        check_test_data_set(version_dir)
        final_card = _final_card(card, settings.opset, onnx_path, verification, command)
        repository.card_file(stage).write_text(final_card.to_json())
        repository.write_model_config(stage, _model_config(final_card, settings))
        on_stage("write")
        _move_into_place(stage, settings.repository / card.name, settings.version)
    target = settings.repository / card.name / str(settings.version) / onnx_path.name
    seconds = time.perf_counter() - started
    return ExportResult(
        card.name, settings.version, target, target.stat().st_size, verification, seconds
    )


def check_test_data_set(version_dir: Path) -> None:
    """Run the model on its own test_data_set_0 and compare with the stored outputs."""
    inputs, outputs = read_test_data_set(version_dir / TEST_DATA_SET)
    (pixels,) = inputs.values()
    sess = session(version_dir / repository.DEFAULT_MODEL_FILENAME, "disabled")
    got = dict(zip(outputs, ort_outputs(sess, pixels, len(pixels)), strict=True))
    worst = max(float(np.abs(got[name] - expected).max()) for name, expected in outputs.items())
    if worst > MAX_ABS_DIFF:
        raise ExportError(f"{version_dir / TEST_DATA_SET}: outputs differ by {worst:.3g}")


def _final_card(
    card: ModelCard, opset: int, onnx_path: Path, verification: Verification, command: str
) -> ModelCard:
    """The card beside the model: the graph's card plus its sha256 and what verification measured.

    The card inside model.onnx cannot hold the file's own hash, nor results measured
    on the file, so only this one carries them.
    """
    where = f"{command}  (onnxruntime CPU on {verification.images} MNIST test images)"
    metrics = dict(card.metrics)
    metrics["onnx_max_abs_diff"] = Metric(value=verification.max_abs_diff, command=where)
    accuracy = verification.levels[0].accuracy
    if accuracy is not None:
        metrics["onnx_test_accuracy"] = Metric(value=round(accuracy, 6), command=where)
    sha256 = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    return card.model_copy(update={"opset": opset, "onnx_sha256": sha256, "metrics": metrics})


def _model_config(card: ModelCard, settings: ExportSettings) -> repository.ModelConfig:
    return repository.config_for_card(
        card,
        max_batch_size=settings.max_batch_size,
        preferred_batch_sizes=settings.preferred_batch_sizes,
        max_queue_delay_us=settings.max_queue_delay_us,
    )


@contextlib.contextmanager
def _staging(repository_dir: Path, name: str) -> Iterator[Path]:
    """A hidden folder inside the repository, removed whatever happens."""
    try:
        repository_dir.mkdir(parents=True, exist_ok=True)
        # Not tempfile.mkdtemp: its folders are private (0700), and a new model's
        # staging folder becomes the model folder, which servers must be able to read.
        stage = repository_dir / f".export-{name}-{secrets.token_hex(4)}"
        stage.mkdir()
    except OSError as error:
        raise FailedPreconditionError(
            f"cannot write to repository {repository_dir}: {error.strerror or error}"
        ) from None
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _move_into_place(stage: Path, model_dir: Path, version: int) -> None:
    """Rename the staged version (and config, card) into the model folder."""
    if not model_dir.exists():
        os.rename(stage, model_dir)  # a new model appears whole, in one rename
        return
    old = model_dir / str(version)
    if old.exists():  # --force: keep the old version in the stage, deleted with it
        os.rename(old, stage / f"replaced-{version}")
    os.rename(stage / str(version), old)
    for filename in (repository.CONFIG_FILENAME, repository.card_file(stage).name):
        os.replace(stage / filename, model_dir / filename)
