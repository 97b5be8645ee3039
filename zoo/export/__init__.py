"""Fold BatchNorm, export to ONNX, verify with onnxruntime, write a Triton-layout repository.

    from zoo.export import fold_model, export_onnx, verify, export_model

`zoo export` (zoo.export.cli) drives `export_model` once per model, and `export_variant`
once per reduced-precision variant (`--quantize int8|fp16`, zoo.export.precision).
"""

from zoo.export.fold import (
    bn_scale_shift,
    fold_into_next,
    fold_into_previous,
    fold_model,
    remove_parametrizations,
)
from zoo.export.onnx_export import DEFAULT_OPSET, MIN_OPSET, check_graph, export_onnx, trace_onnx
from zoo.export.pipeline import (
    ExportResult,
    ExportSettings,
    VariantResult,
    export_model,
    export_variant,
)
from zoo.export.verify import Verification, read_test_data_set, verify, write_test_data_set

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "ExportResult",
    "ExportSettings",
    "VariantResult",
    "Verification",
    "bn_scale_shift",
    "check_graph",
    "export_model",
    "export_onnx",
    "export_variant",
    "fold_into_next",
    "fold_into_previous",
    "fold_model",
    "read_test_data_set",
    "remove_parametrizations",
    "trace_onnx",
    "verify",
    "write_test_data_set",
]
