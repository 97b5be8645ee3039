"""onnxruntime sessions: execution providers from --device, thread counts."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime as ort

from zoo.errors import FailedPreconditionError, InvalidArgumentError

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def resolve_providers(device: str) -> list[str]:
    """Providers for `device` (cpu|cuda|auto); `cuda` without CUDA support is an error."""
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise FailedPreconditionError(
            f"--device cuda: onnxruntime has no {CUDA} (providers: {', '.join(available)}); "
            "install onnxruntime-gpu on a machine with a GPU, or use --device cpu"
        )
    log.info("--device auto: no %s in this onnxruntime, running on CPU", CUDA)
    return [CPU]


def default_intra_op_threads() -> int:
    """Half the CPUs: the gRPC threads decoding and encoding need the other half (on 2
    CPUs, 1 thread served batch-32 requests ~20% faster than onnxruntime's default 2)."""
    return max(1, (os.cpu_count() or 2) // 2)


def default_infer_threads() -> int:
    """As many inference threads as CPUs (at least 2: one can decode while one computes)."""
    return max(2, os.cpu_count() or 2)


def session_options(
    intra_op_threads: int,
    inter_op_threads: int,
    spin: bool,
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads or default_intra_op_threads()
    options.inter_op_num_threads = inter_op_threads
    spinning = "1" if spin else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    options.graph_optimization_level = level
    return options


def create_session(
    path: Path, providers: list[str], options: ort.SessionOptions, *, require_gpu: bool = False
) -> ort.InferenceSession:
    """One session for one model file; with `require_gpu` a fall-back to CPU is an error."""
    if not path.is_file():
        raise InvalidArgumentError(f"{path}: model file missing")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises its own untyped errors
        raise InvalidArgumentError(f"{path}: onnxruntime cannot load it: {error}") from None
    if providers[0] == CUDA and session.get_providers()[0] != CUDA:
        if require_gpu:
            raise FailedPreconditionError(f"{path}: {CUDA} is installed but found no usable GPU")
        log.info("%s: no usable GPU, running on CPU", path)
    return session
