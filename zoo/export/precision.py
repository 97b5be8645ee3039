"""Reduced-precision variants of an exported float model: int8 and fp16.

    int8  onnxruntime static quantisation: QDQ format, int8 weights per output channel,
          uint8 activations whose ranges are calibrated (MinMax) on MNIST training images
    fp16  FP16 weights and arithmetic, FP32 inputs and outputs (clients do not change)

Both start from the folded, verified float model.onnx that `zoo export` wrote, and are
compared with it on the MNIST test set against their own tolerance (`check_tolerance`);
`zoo.export.pipeline.export_variant` writes one into the repository as a model of its own.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from zoo.card import INPUT_NAME
from zoo.data import load_mnist
from zoo.errors import ExportError
from zoo.export.onnx_export import quiet_loggers
from zoo.export.verify import ort_outputs, session

Precision = Literal["int8", "fp16"]

# Calibration: a seeded sample of MNIST *training* images (test images only ever measure).
# MinMax ranges of these small nets settle within a few hundred images; 512 keeps the
# calibration pass under a second for the MLPs and a few seconds for the LSTMs.
CALIBRATION_IMAGES = 512
CALIBRATION_SEED = 0
CALIBRATION_SPLIT = "train"
CALIBRATION_BATCH = 64

# Tolerances against the float model on the MNIST test set, in accuracy (a fraction).
# int8: within 0.3 points, the bound a quantised zoo model is held to.
INT8_MAX_ACCURACY_CHANGE = 0.003
# fp16: its 11-bit significand rounds each weight and activation by at most 2^-11
# (~5e-4 relative), which can only flip images whose top two logits nearly tie. On CPU
# the shipped models moved by 0 or 1 test image and kept >= 99.99% argmax agreement;
# 0.1 points (10 images) and 99.8% leave room for CUDA's FP16 arithmetic, still 3x
# tighter than int8's bound.
FP16_MAX_ACCURACY_CHANGE = 0.001
FP16_MIN_ARGMAX_AGREEMENT = 0.998

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def calibration_images(count: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """`count` MNIST training images ([N, 1, 28, 28] in [0, 1]), a seeded sample."""
    train = load_mnist(CALIBRATION_SPLIT)
    index = np.sort(np.random.default_rng(seed).choice(len(train), size=count, replace=False))
    images, _ = train.subset(index).tensors()
    return images.numpy()


class ImageBatches(CalibrationDataReader):
    """Feeds calibration images to onnxruntime's calibrator, CALIBRATION_BATCH at a time."""

    def __init__(self, images: np.ndarray) -> None:
        self._batches = iter(
            [images[i : i + CALIBRATION_BATCH] for i in range(0, len(images), CALIBRATION_BATCH)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


# quant_pre_process logs each of its steps at INFO: noise between the CLI's progress lines.
_QUANTIZER_LOGGERS = ("onnxruntime.quantization.shape_inference",)


def quantize_int8(source: Path, target: Path, images: np.ndarray) -> onnx.ModelProto:
    """Statically quantise `source` into a QDQ graph, activation ranges from `images`."""
    with tempfile.TemporaryDirectory() as folder:
        # onnxruntime's recommended first step (shape inference, its basic graph clean-up);
        # without it quantize_static warns on every call.
        prepared = Path(folder) / "prepared.onnx"
        with quiet_loggers(*_QUANTIZER_LOGGERS):
            quant_pre_process(str(source), str(prepared))
        quantize_static(
            str(prepared),
            str(target),
            ImageBatches(images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # uint8 activations with int8 weights: onnxruntime's recommended pairing on x86,
            # whose int8 kernels multiply u8 by s8 (with s8 activations resnet ran slower than in
            # float here, with u8 faster).
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return onnx.load(target)


def convert_fp16(source: Path) -> onnx.ModelProto:
    """`source` with FP16 initializers and arithmetic, casts at its FP32 inputs and outputs."""
    proto = convert_float_to_float16(onnx.load(source), keep_io_types=True)
    # The converter appends its input casts at the end of the node list; the ONNX checker
    # wants nodes in topological order.
    OnnxModel(proto).topological_sort()
    return proto


def providers_for(precision: Precision) -> list[str]:
    """Where a variant is verified: int8 on CPU (what it is for); fp16 on CUDA when present."""
    if precision == "fp16" and CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    return [CPU]


@dataclass(frozen=True)
class PrecisionReport:
    """A variant against its float model on the same test images and provider."""

    precision: Precision
    provider: str
    images: int
    float_accuracy: float
    accuracy: float
    argmax_agreement: float
    max_abs_diff_logits: float
    # fp16 only: what the provider really ran in FP16 (see `fp16_execution`).
    fp16_nodes: int | None = None
    float_nodes: int | None = None
    fp16_ops: tuple[str, ...] = ()
    fp32_ops: tuple[str, ...] = ()

    @property
    def accuracy_change(self) -> float:
        return self.accuracy - self.float_accuracy

    def summary(self) -> str:
        text = (
            f"{self.images} images on {self.provider}: accuracy {100 * self.accuracy:.2f}% "
            f"(float {100 * self.float_accuracy:.2f}%, {100 * self.accuracy_change:+.2f} points), "
            f"argmax agreement {100 * self.argmax_agreement:.2f}%, "
            f"max|Δlogits| {self.max_abs_diff_logits:.3g}"
        )
        if self.fp16_nodes == 0:
            text += (
                f"; none of its {self.float_nodes} nodes ran in FP16 here (FP32 kernels for "
                f"{', '.join(self.fp32_ops)}): this checked the FP16 weights' rounding, "
                "not FP16 arithmetic"
            )
        elif self.fp16_nodes is not None:
            text += (
                f"; {self.fp16_nodes} of {self.float_nodes} nodes ran in FP16 "
                f"({', '.join(self.fp16_ops)})"
            )
            if self.fp32_ops:
                text += f", the rest in FP32 ({', '.join(self.fp32_ops)})"
        return text


def compare(
    float_path: Path,
    variant_path: Path,
    precision: Precision,
    images: np.ndarray,
    labels: np.ndarray,
    chunk: int = 1000,
) -> PrecisionReport:
    """Run both models on `images` (optimisations enabled, as a server runs them)."""
    providers = providers_for(precision)
    reference, _ = ort_outputs(session(float_path, providers=providers), images, chunk)
    provider, logits = _run_variant(variant_path, providers, images, chunk)
    fp16 = {}
    if precision == "fp16":
        counts = fp16_execution(variant_path, providers, images[:2])
        keys = ("fp16_nodes", "float_nodes", "fp16_ops", "fp32_ops")
        fp16 = dict(zip(keys, counts, strict=True))
    return PrecisionReport(
        precision=precision,
        provider=provider,
        images=len(images),
        float_accuracy=float((reference.argmax(1) == labels).mean()),
        accuracy=float((logits.argmax(1) == labels).mean()),
        argmax_agreement=float((logits.argmax(1) == reference.argmax(1)).mean()),
        max_abs_diff_logits=float(np.abs(logits - reference).max()),
        **fp16,
    )


def _run_variant(
    path: Path, providers: list[str], images: np.ndarray, chunk: int
) -> tuple[str, np.ndarray]:
    """(the provider that ran it, its logits); ExportError when no provider can run it."""
    try:
        variant = session(path, providers=providers)
        logits, _ = ort_outputs(variant, images, chunk)
    except Exception as error:  # onnxruntime raises its own untyped errors
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(
            f"{path.name}: no onnxruntime provider here can run it ({', '.join(providers)}): "
            f"{first}"
        ) from None
    return variant.get_providers()[0], logits


# Conversions and copies between devices: no arithmetic to count.
_NOT_COMPUTE = frozenset({"Cast", "MemcpyFromHost", "MemcpyToHost"})


def fp16_execution(
    path: Path, providers: list[str], images: np.ndarray
) -> tuple[int, int, tuple[str, ...], tuple[str, ...]]:
    """(nodes run in FP16, floating-point nodes run, their op types in FP16, in FP32),
    casts, copies and shape arithmetic (integers only) aside.

    A provider without an FP16 kernel for an op inserts casts and runs the op in FP32;
    onnxruntime's profile records the input types each kernel actually received.
    """
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        options.log_severity_level = 3
        sess = ort.InferenceSession(str(path), options, providers=providers)
        sess.run(None, {INPUT_NAME: images})
        events = json.loads(Path(sess.end_profiling()).read_text())
    fp16, nodes = 0, 0
    ops: dict[bool, set[str]] = {True: set(), False: set()}
    for event in events:
        args = event.get("args", {})
        kernel = event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
        if not kernel or args.get("op_name", "Cast") in _NOT_COMPUTE:
            continue
        types = {t for shapes in args.get("input_type_shape", []) for t in shapes}
        if not types & {"float", "float16"}:
            continue  # shape arithmetic on integers
        nodes += 1
        fp16 += "float16" in types
        ops["float16" in types].add(args["op_name"])
    return fp16, nodes, tuple(sorted(ops[True])), tuple(sorted(ops[False]))


def check_tolerance(report: PrecisionReport, name: str) -> None:
    """ExportError (one line) when the variant strays past its precision's bound."""
    bound = INT8_MAX_ACCURACY_CHANGE if report.precision == "int8" else FP16_MAX_ACCURACY_CHANGE
    floor = FP16_MIN_ARGMAX_AGREEMENT if report.precision == "fp16" else 0.0
    if abs(report.accuracy_change) > bound or report.argmax_agreement < floor:
        agreement = f" (expected >= {100 * floor:.1f}%)" if floor else ""
        raise ExportError(
            f"{name}: {report.precision} test accuracy {100 * report.accuracy:.2f}% against the "
            f"float model's {100 * report.float_accuracy:.2f}% "
            f"({100 * report.accuracy_change:+.2f} points, expected within "
            f"±{100 * bound:.2f}), argmax agreement {100 * report.argmax_agreement:.2f}%"
            f"{agreement} on {report.images} test images; nothing written"
        )
