"""Which parts of Triton's model configuration this server does, ignores or refuses.

proto/model_config.proto holds all of Triton's ModelConfig, so every config.pbtxt
written for Triton parses. Parsing is not serving: a model whose config asks for
something we do not do is refused at load, with the field's name, rather than served
differently from what its config says. What is done elsewhere:

    reshape (input and output)            server/reshape.py
    model_warmup                          server/warmup.py
    optimization.graph.level              onnxruntime's graph optimisation level
    dynamic_batching (with default_queue_policy's timeout: QueueTimeout below),
    instance_group.count, version_policy, label_filename, ...

Ignored, because they change nothing a client can observe (neither which requests
succeed nor the values computed, only speed or placement):

    optimization.priority, .cuda, .input_pinned_memory, .output_pinned_memory,
        .gather_kernel_buffer_threshold, .eager_batching   (scheduling and memory
        tuning; Triton's onnxruntime backend reads none of .cuda either)
    instance_group.rate_limiter    (Triton applies it only under --rate-limit)
    instance_group.host_policy     (NUMA placement)
    input.format                   (a label for image clients; Triton checks only
                                    that NCHW/NHWC inputs have 3 dims)
    dynamic_batching.preserve_ordering   (each request has its own reply)

Everything else that is set and not implemented is refused (UNSUPPORTED).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnxruntime as ort

from proto.model_config_pb2 import ModelConfig, ModelQueuePolicy
from zoo.errors import InvalidArgumentError

# Triton's onnxruntime backend reads optimization.graph.level so (its own mapping,
# not the numbers' order): -1 basic, 1 extended, 2 none, anything else all.
GRAPH_LEVELS_ONNXRUNTIME_BACKEND = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    2: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
# The library Triton's onnxruntime backend is: naming it as `runtime` changes nothing.
ONNXRUNTIME_BACKEND_LIBRARY = "libtriton_onnxruntime.so"


def graph_optimization_level(config: ModelConfig) -> ort.GraphOptimizationLevel:
    """The session's graph optimisation level, as Triton's onnxruntime backend sets it."""
    return GRAPH_LEVELS_ONNXRUNTIME_BACKEND.get(
        config.optimization.graph.level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )


@dataclass(frozen=True)
class QueueTimeout:
    """dynamic_batching.default_queue_policy's timeout (timeout_action REJECT: a request
    still queued when it passes is refused, DEADLINE_EXCEEDED), as Triton's queue sets
    it: the default, or a request's own "timeout" when allow_timeout_override is on and
    it is shorter. Without a default, the request's own timeout is honoured still (the
    server did so before it read queue policies; Triton would ignore it)."""

    default_s: float | None
    allow_override: bool

    @classmethod
    def of(cls, config: ModelConfig) -> QueueTimeout:
        policy = config.dynamic_batching.default_queue_policy
        default_us = policy.default_timeout_microseconds
        return cls(default_us / 1e6 if default_us else None, policy.allow_timeout_override)

    def __call__(self, requested_s: float | None) -> float | None:
        if self.default_s is None:
            return requested_s
        if self.allow_override and requested_s is not None and requested_s < self.default_s:
            return requested_s
        return self.default_s


def unsupported_fields(config: ModelConfig) -> list[str]:
    """The config's fields, as dotted paths, that ask for what we do not implement."""
    found = [
        name
        for name in (
            "sequence_batching",
            "ensemble_scheduling",
            "batch_input",
            "batch_output",
            "cc_model_filenames",
            "metric_tags",
        )
        if _set(config, name)
    ]
    if config.runtime not in ("", ONNXRUNTIME_BACKEND_LIBRARY):
        found.append(f"runtime ({config.runtime!r})")
    if config.model_transaction_policy.decoupled:
        found.append("model_transaction_policy.decoupled")
    if config.response_cache.enable:
        found.append("response_cache.enable")
    if config.model_operations.op_library_filename:
        found.append("model_operations.op_library_filename")
    if config.model_repository_agents.agents:
        found.append("model_repository_agents")
    if config.model_metrics.metric_control:
        found.append("model_metrics")
    accelerators = config.optimization.execution_accelerators
    for kind in ("gpu_execution_accelerator", "cpu_execution_accelerator"):
        if getattr(accelerators, kind):
            # Another execution provider (TensorRT, OpenVINO) computes other values.
            found.append(f"optimization.execution_accelerators.{kind}")
    found += _batching(config) + _tensors(config) + _instances(config)
    return found


def _set(message: object, name: str) -> bool:
    value = getattr(message, name)
    return bool(value) if not hasattr(value, "ListFields") else message.HasField(name)


def _batching(config: ModelConfig) -> list[str]:
    batching, found = config.dynamic_batching, []
    for name in ("priority_levels", "default_priority_level", "priority_queue_policy"):
        if _set(batching, name):
            found.append(f"dynamic_batching.{name}")
    if batching.default_queue_policy.timeout_action == ModelQueuePolicy.DELAY:
        found.append("dynamic_batching.default_queue_policy.timeout_action (DELAY)")
    return found


def _tensors(config: ModelConfig) -> list[str]:
    found = []
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            flags = ["is_shape_tensor", "is_non_linear_format_io"]
            # An optional input would still be demanded of every request.
            flags += ["allow_ragged_batch", "optional"] if kind == "input" else []
            found += [f"{kind}[{tensor.name!r}].{f}" for f in flags if getattr(tensor, f)]
    return found


def _instances(config: ModelConfig) -> list[str]:
    # profile and secondary_devices are TensorRT's (Triton refuses them for other
    # backends too); passive instances take no requests.
    flags = ("profile", "secondary_devices", "passive")
    return [
        f"instance_group[{group.name or i}].{flag}"
        for i, group in enumerate(config.instance_group)
        for flag in flags
        if _set(group, flag)
    ]


def check_supported(config: ModelConfig) -> None:
    """Refuse a config that uses a field we parse but do not implement, naming each."""
    found = unsupported_fields(config)
    if found:
        raise InvalidArgumentError(
            f"model configuration uses what this server does not implement: "
            f"{', '.join(found)}; remove {'it' if len(found) == 1 else 'them'} "
            "or serve the model with Triton"
        )
