"""One model into the repository: fold, export, verify, write; staged, then renamed into place.

    <repository>/<model>/config.pbtxt                      (zoo.repository writes it)
    <repository>/<model>/card.json
    <repository>/<model>/<version>/model.onnx
    <repository>/<model>/<version>/test_data_set_0/{input_0,output_0,output_1}.pb

Everything is written into a hidden folder inside the repository (same file system,
so renames are atomic; `zoo.repository.list_models` skips hidden folders) and moved
into place only after verification passed: an interrupted or failed export leaves
no half model.

A reduced-precision variant (`export_variant`, `zoo export MODEL --quantize int8|fp16`) is
made from the float model.onnx such an export wrote, checked against it (zoo.export.precision)
and written beside it as the model `<model>_int8` or `<model>_fp16`: the same layout without
test_data_set_0, whose outputs are the PyTorch model's and which a variant is not meant to
reproduce to 1e-4.
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
from zoo.card import Metric, ModelCard, Variant
from zoo.errors import AlreadyExistsError, ExportError, FailedPreconditionError, NotFoundError
from zoo.export.fold import fold_model
from zoo.export.onnx_export import (
    DEFAULT_OPSET,
    MIN_OPSET,
    check_graph,
    drop_value_info,
    export_onnx,
    set_card,
)
from zoo.export.precision import (
    CALIBRATION_IMAGES,
    CALIBRATION_SEED,
    CALIBRATION_SPLIT,
    Precision,
    PrecisionReport,
    calibration_images,
    check_tolerance,
    compare,
    convert_fp16,
    quantize_int8,
)
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
# Where --quantize looks for the float model when --repository lacks it: the shipped zoo,
# relative to the working directory as scripts/run.sh names it.
SHIPPED_REPOSITORY = Path("model_repository")
METHODS = {
    "int8": "onnxruntime quantize_static: QDQ, int8 weights per output channel, "
    "uint8 activations calibrated with MinMax",
    "fp16": "onnxruntime float16 conversion: FP16 weights and arithmetic, FP32 inputs and outputs",
}


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
    quantize: Precision | None = Field(
        None,
        description="write the reduced-precision variant MODEL_int8 or MODEL_fp16 of the "
        "float model instead (read from the repository, no checkpoint needed)",
    )
    float_repository: Path | None = Field(
        None,
        description="--quantize: the repository holding the float model (unset: --repository "
        f"when it holds MODEL, else {SHIPPED_REPOSITORY})",
    )
    calibration_images: int = Field(
        CALIBRATION_IMAGES,
        ge=1,
        le=60_000,
        description="--quantize int8: MNIST training images that calibrate activation ranges",
    )

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


@dataclass(frozen=True)
class VariantResult:
    name: str
    version: int
    onnx_path: Path
    onnx_bytes: int
    source: Path
    report: PrecisionReport
    seconds: float


@dataclass(frozen=True)
class FloatSource:
    """A float model as `zoo export` wrote it: the file its card verified, and that card."""

    onnx_path: Path
    card: ModelCard


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
    return card.model_copy(
        update={"opset": opset, "onnx_sha256": _sha256(onnx_path), "metrics": metrics}
    )


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


def variant_name(name: str, precision: Precision) -> str:
    return f"{name}_{precision}"


def float_source(settings: ExportSettings, name: str) -> FloatSource:
    """The float model `name` to derive a variant from: --float-repository, else --repository
    when it holds the model, else the shipped repository."""
    candidates = (
        [settings.float_repository]
        if settings.float_repository is not None
        else list(dict.fromkeys([settings.repository, SHIPPED_REPOSITORY]))
    )
    for candidate in candidates:
        if (candidate / name / repository.CONFIG_FILENAME).is_file():
            return _read_float_source(candidate / name)
    where = " or ".join(str(c) for c in candidates)
    raise NotFoundError(
        f"no float model {name!r} in {where}: export it first "
        f"(zoo export {name} --repository DIR), or name its repository with --float-repository"
    )


def _read_float_source(model_dir: Path) -> FloatSource:
    config = repository.read_model_config(model_dir)
    versions = repository.list_versions(model_dir, config.version_policy)
    card = repository.read_card(model_dir)
    if not versions or card is None or card.onnx_sha256 is None:
        raise NotFoundError(f"{model_dir}: expected a version and the card `zoo export` writes")
    if card.variant is not None:
        raise ExportError(f"{model_dir} is already the {card.variant.precision} variant")
    path = repository.model_file(model_dir, versions[-1], config)
    if _sha256(path) != card.onnx_sha256:
        raise ExportError(
            f"{path} is not the file its card verified (sha256 differs): export it again"
        )
    return FloatSource(path, card)


def export_variant(
    source: FloatSource,
    precision: Precision,
    settings: ExportSettings,
    data: tuple[np.ndarray, np.ndarray],
    command: str,
    on_stage: Callable[[str], None] = lambda stage: None,
) -> VariantResult:
    """Write `<model>_<precision>` into the repository, if it passes its tolerance on `data`
    (test images and labels)."""
    started = time.perf_counter()
    name = variant_name(source.card.name, precision)
    refuse_existing(settings, name)
    with _staging(settings.repository, name) as stage:
        version_dir = stage / str(settings.version)
        version_dir.mkdir()
        onnx_path = version_dir / repository.DEFAULT_MODEL_FILENAME
        on_stage(precision)
        if precision == "int8":
            proto = quantize_int8(
                source.onnx_path, onnx_path, calibration_images(settings.calibration_images)
            )
        else:
            proto = convert_fp16(source.onnx_path)
        card = _variant_card(source, precision, proto, settings)
        drop_value_info(proto)
        check_graph(proto, card)
        set_card(proto, card)
        onnx.save_model(proto, onnx_path)
        on_stage("verify")
        report = compare(source.onnx_path, onnx_path, precision, *data)
        check_tolerance(report, name)
        final_card = _final_variant_card(card, onnx_path, report, command)
        repository.card_file(stage).write_text(final_card.to_json())
        repository.write_model_config(stage, _model_config(final_card, settings))
        on_stage("write")
        _move_into_place(stage, settings.repository / name, settings.version)
    target = settings.repository / name / str(settings.version) / onnx_path.name
    seconds = time.perf_counter() - started
    return VariantResult(
        name, settings.version, target, target.stat().st_size, source.onnx_path, report, seconds
    )


def _variant_card(
    source: FloatSource, precision: Precision, proto: onnx.ModelProto, settings: ExportSettings
) -> ModelCard:
    """The float model's card, renamed and marked as its variant; metrics come after checking."""
    float_card = source.card
    calibration = (
        {
            "split": f"MNIST {CALIBRATION_SPLIT}",
            "images": settings.calibration_images,
            "sampling": f"uniform without replacement, seed {CALIBRATION_SEED}",
            "method": "MinMax",
        }
        if precision == "int8"
        else {}
    )
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return float_card.model_copy(
        update={
            "name": variant_name(float_card.name, precision),
            "description": f"{precision} variant of {float_card.name}: {float_card.description}",
            "metrics": {},
            "opset": opset,
            "onnx_sha256": None,
            "variant": Variant(
                of=float_card.name,
                precision=precision,
                source_sha256=float_card.onnx_sha256 or "",
                method=METHODS[precision],
                calibration=calibration,
            ),
        }
    )


def _final_variant_card(
    card: ModelCard, onnx_path: Path, report: PrecisionReport, command: str
) -> ModelCard:
    """The variant's card with what checking it measured (`test_accuracy` is its own)."""
    where = f"{command}  (onnxruntime {report.provider} on {report.images} MNIST test images)"
    metrics = {
        "test_accuracy": report.accuracy,
        "float_test_accuracy": report.float_accuracy,
        "argmax_agreement_with_float": report.argmax_agreement,
        "max_abs_diff_logits_from_float": report.max_abs_diff_logits,
    }
    return card.model_copy(
        update={
            "metrics": {k: Metric(value=round(v, 6), command=where) for k, v in metrics.items()},
            "onnx_sha256": _sha256(onnx_path),
        }
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
