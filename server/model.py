"""One loaded model version: its onnxruntime session, batcher, statistics and the
metadata/config replies, built at load (metadata again when the ready versions change),
never per request."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from proto.grpc_service_pb2 import (
    ModelConfigResponse,
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataResponse,
)
from proto.model_config_pb2 import ModelConfig, ModelInput, ModelOutput
from server.batcher import CallContext, DynamicBatcher
from server.codec import (
    Requested,
    TensorSpec,
    classify,
    decode_inputs,
    encode_outputs,
    request_timeout_s,
    requested_outputs,
)
from server.config_support import QueueTimeout
from server.metrics import ServerMetrics
from server.reshape import Reshapes, model_dims
from server.shared_memory import SharedMemoryRegistry
from server.stats import BatchTiming, ModelStats
from server.warmup import warm_up, warmup_samples, zeros
from zoo.card import CARD_METADATA_KEY, ModelCard
from zoo.datatypes import BYTES, DATATYPES
from zoo.errors import InvalidArgumentError, ZooError
from zoo.repository import PLATFORM_ONNX, datatype_from_kserve, kserve_datatype, read_card

log = logging.getLogger(__name__)

# onnxruntime's type strings -> KServe v2 datatypes.
ORT_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
PLATFORMS = (PLATFORM_ONNX, "")
# A model's wide session serves lone calls when they take under WIDE_GAIN of the time
# on its share of the cores, median of WIDE_TIMING_CALLS. On 2 cores bn_cnn's took
# ~0.85 of it (and served batch 1 x 1 ~14% faster); the MLPs' took longer.
WIDE_GAIN = 0.9
WIDE_TIMING_CALLS = 15


def _lone_call_feeds(
    specs: dict[str, TensorSpec], reshapes: Reshapes
) -> dict[str, np.ndarray] | None:
    """One batch-1 item of zeros per input, as the model takes it; None when an input
    has no fixed shape besides the batch, or is text (empty strings may be no valid
    input: a model that parses numbers from its text fails on them)."""
    feeds = {}
    for spec in specs.values():
        shape = tuple(1 if i == 0 and d == -1 else d for i, d in enumerate(spec.shape))
        if -1 in shape or spec.datatype == BYTES:
            return None
        feeds[spec.name] = zeros(spec, shape)
    return reshapes.feeds(feeds)


BACKENDS = ("onnxruntime", "")


def _ort_spec(arg: ort.NodeArg) -> TensorSpec:
    datatype = ORT_DATATYPES.get(arg.type)
    if datatype is None:
        raise InvalidArgumentError(f"{arg.name!r} has type {arg.type}, which we cannot serve")
    # Symbolic ('batch') or unknown dimensions are variable: -1.
    return TensorSpec(arg.name, datatype, tuple(d if isinstance(d, int) else -1 for d in arg.shape))


def _config_spec(
    tensor: ModelInput | ModelOutput, max_batch_size: int, model_side: bool = False
) -> TensorSpec:
    """The tensor as clients see it (dims), or as the model has it (its reshape)."""
    datatype = kserve_datatype(tensor.data_type)
    if datatype not in DATATYPES:
        raise InvalidArgumentError(f"{tensor.name!r}: data type {datatype} is not supported")
    batch = (-1,) if max_batch_size > 0 else ()
    return TensorSpec(
        tensor.name, datatype, batch + tuple(model_dims(tensor) if model_side else tensor.dims)
    )


def _matching(config: list[TensorSpec], graph: list[TensorSpec], kind: str) -> None:
    """Each configured tensor must exist in the graph with the same type and a compatible shape."""
    by_name = {s.name: s for s in graph}
    for spec in config:
        have = by_name.get(spec.name)
        if have is None:
            raise InvalidArgumentError(
                f"config {kind} {spec.name!r} is not in the model (it has {sorted(by_name)})"
            )
        compatible = len(have.shape) == len(spec.shape) and all(
            -1 in (a, b) or a == b for a, b in zip(have.shape, spec.shape, strict=True)
        )
        if have.datatype != spec.datatype or not compatible:
            raise InvalidArgumentError(
                f"config {kind} {spec.name!r}: config says {spec.datatype} {list(spec.shape)}, "
                f"the model has {have.datatype} {list(have.shape)}"
            )


def complete_config(config: ModelConfig, session: ort.InferenceSession) -> None:
    """Fill inputs/outputs the config leaves out from the graph, as Triton's auto-complete."""
    drop = 1 if config.max_batch_size > 0 else 0
    pairs = ((config.input, session.get_inputs()), (config.output, session.get_outputs()))
    for target, args in pairs:
        if len(target) == 0:
            for spec in map(_ort_spec, args):
                target.add(
                    name=spec.name,
                    data_type=datatype_from_kserve(spec.datatype),
                    dims=list(spec.shape[drop:]),
                )


def _card_json(model_dir: Path, session: ort.InferenceSession) -> str | None:
    card = read_card(model_dir)
    if card is not None:
        return card.to_json()
    return session.get_modelmeta().custom_metadata_map.get(CARD_METADATA_KEY)


def _labels(model_dir: Path, config: ModelConfig, card_json: str | None) -> list[list[str]]:
    """Per output, the class labels for classification: the config's label_filename (one
    label per line, as Triton reads it), else the model card's labels, else none."""
    card_labels = list(ModelCard.from_json(card_json).labels) if card_json else []
    labels = []
    for output in config.output:
        if output.label_filename:
            path = model_dir / output.label_filename
            try:
                labels.append(path.read_text().splitlines())
            except OSError as error:
                raise InvalidArgumentError(
                    f"output {output.name!r}: label_filename {output.label_filename!r}: "
                    f"{error.strerror}"
                ) from None
        else:
            labels.append(card_labels)
    return labels


def _checked_specs(
    config: ModelConfig, session: ort.InferenceSession
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The config's inputs and outputs (completed from the graph), checked against it."""
    if config.platform not in PLATFORMS or config.backend not in BACKENDS:
        raise InvalidArgumentError(
            f"platform {config.platform!r} / backend {config.backend!r}: we serve only "
            f"{PLATFORM_ONNX}"
        )
    complete_config(config, session)
    Reshapes.of(config)  # Triton's reshape rules, before the graph is held to the reshapes
    inputs = [_config_spec(t, config.max_batch_size) for t in config.input]
    outputs = [_config_spec(t, config.max_batch_size) for t in config.output]
    graph_inputs = [_ort_spec(a) for a in session.get_inputs()]
    # The graph has the model's shapes: the reshape where the config gives one.
    _matching(
        [_config_spec(t, config.max_batch_size, model_side=True) for t in config.input],
        graph_inputs,
        "input",
    )
    _matching(
        [_config_spec(t, config.max_batch_size, model_side=True) for t in config.output],
        [_ort_spec(a) for a in session.get_outputs()],
        "output",
    )
    # The other way too: an input the graph needs but the config leaves out would fail
    # every request. (A config may list a subset of the outputs: the rest are not served.)
    unlisted = sorted({s.name for s in graph_inputs} - {s.name for s in inputs})
    if unlisted:
        raise InvalidArgumentError(
            f"the model needs inputs {unlisted} that the config does not list "
            f"(it lists {[s.name for s in inputs]})"
        )
    return inputs, outputs


class LoadedModel:
    """A ready model version. Immutable once built, except `metadata_reply`'s versions."""

    def __init__(
        self,
        model_dir: Path,
        version: int,
        config: ModelConfig,
        session: ort.InferenceSession,
        metrics: ServerMetrics,
        instances: int = 1,
        max_queue_size: int = 0,
        wide_session: ort.InferenceSession | None = None,
    ) -> None:
        """`wide_session`: the same model on every core, for a call made while no other
        of this model is in progress (`session` has a share of the cores, so that
        concurrent calls run side by side)."""
        inputs, outputs = _checked_specs(config, session)
        self.name = config.name
        self.version = str(version)
        self.max_batch_size = config.max_batch_size
        self.session = session
        self._wide_session = wide_session or session
        self.inputs = {s.name: s for s in inputs}
        self.outputs = outputs
        self.output_index = {s.name: i for i, s in enumerate(outputs)}
        self._output_names = [s.name for s in outputs]
        self.reshapes = Reshapes.of(config)
        self.stats = ModelStats()
        self.metrics = metrics.for_model(self.name, self.version)
        # Triton's instance_group count: how many session calls may run at once.
        instances = sum(g.count for g in config.instance_group) or instances
        self.batcher = self._batcher(config, instances, max_queue_size)
        self.queue_timeout = QueueTimeout.of(config)
        card_json = _card_json(model_dir, session)
        self.config_reply = self._config_reply(config, card_json)
        self.labels = _labels(model_dir, config, card_json)
        self.metadata_reply = self.metadata_for([self.version])
        # READY only once warmed up: the loader returns after this.
        samples = warmup_samples(config, model_dir, self.inputs)
        label = f"model {self.name} version {self.version}"
        warm_up(samples, lambda feeds: self._run(feeds, False), label)
        if wide_session is not None:
            if self._wide_pays(wide_session):
                warm_up(samples, lambda feeds: self._run(feeds, True), f"{label} (every core)")
            else:
                self._wide_session = session

    def _batcher(self, config: ModelConfig, instances: int, max_queue_size: int) -> DynamicBatcher:
        batching = config.dynamic_batching
        return DynamicBatcher(
            self._run,
            max_batch_size=config.max_batch_size,
            batching=config.HasField("dynamic_batching"),
            preferred_batch_sizes=tuple(batching.preferred_batch_size),
            max_queue_delay_s=batching.max_queue_delay_microseconds / 1e6,
            max_queue_size=batching.default_queue_policy.max_queue_size or max_queue_size,
            instances=instances,
            on_execution=self._executed,
        )

    def _executed(self, size: int, timing: BatchTiming) -> None:
        self.stats.record_execution(size, timing)
        self.metrics.batch_size.observe(size)

    @staticmethod
    def _config_reply(config: ModelConfig, card_json: str | None) -> ModelConfigResponse:
        reply = ModelConfigResponse(config=config)
        if card_json is not None:
            # Clients read the card here (parameters is Triton's free-form map).
            reply.config.parameters[CARD_METADATA_KEY].string_value = card_json
        return reply

    def metadata_for(self, versions: list[str]) -> ModelMetadataResponse:
        def tensor(s: TensorSpec) -> ModelMetadataResponse.TensorMetadata:
            return ModelMetadataResponse.TensorMetadata(
                name=s.name, datatype=s.datatype, shape=s.shape
            )

        return ModelMetadataResponse(
            name=self.name,
            versions=versions,
            platform=PLATFORM_ONNX,
            inputs=[tensor(s) for s in self.inputs.values()],
            outputs=[tensor(s) for s in self.outputs],
        )

    def _wide_pays(self, wide: ort.InferenceSession) -> bool:
        """Whether every core makes a lone batch-1 call much faster, timed at load: a
        small model (an MLP's ~0.03 ms call) only pays for the threads' hand-over."""
        feeds = _lone_call_feeds(self.inputs, self.reshapes)
        if feeds is None:
            return False  # no fixed shape to time with: one session for every call
        timings = {}
        for name, candidate in (("narrow", self.session), ("wide", wide)):
            for _ in range(WIDE_TIMING_CALLS // 3):  # its first calls allocate
                candidate.run(self._output_names, feeds)
            seconds = []
            for _ in range(WIDE_TIMING_CALLS):
                t0 = time.perf_counter()
                candidate.run(self._output_names, feeds)
                seconds.append(time.perf_counter() - t0)
            timings[name] = float(np.median(seconds))
        pays = timings["wide"] < WIDE_GAIN * timings["narrow"]
        log.info(
            "model %s version %s: a lone call takes %.3f ms on every core, %.3f ms on its "
            "share: %s",
            self.name,
            self.version,
            timings["wide"] * 1e3,
            timings["narrow"] * 1e3,
            "every core" if pays else "its share",
        )
        return pays

    def _labels_of(self, index: int) -> list[str]:
        return self.labels[index] if index < len(self.labels) else []

    def _run(self, feeds: dict[str, np.ndarray], only_call: bool) -> list[np.ndarray]:
        # Config dims -> the model's reshapes -> config dims (server/reshape.py).
        session = self._wide_session if only_call else self.session
        outputs = session.run(self._output_names, self.reshapes.feeds(feeds))
        return self.reshapes.results(outputs)

    def _encode_requested(
        self, response: ModelInferResponse, wanted: list[Requested], outputs: list[np.ndarray]
    ) -> None:
        encode_outputs(
            response,
            [self.outputs[w.index] for w in wanted],
            [
                classify(
                    outputs[w.index], w.class_count, self._labels_of(w.index),
                    batched=self.max_batch_size > 0,
                )
                if w.class_count
                else outputs[w.index]
                for w in wanted
            ],
            [w.target for w in wanted],
        )  # fmt: skip

    def infer(
        self,
        request: ModelInferRequest,
        ctx: CallContext | None,
        memory: SharedMemoryRegistry | None = None,
    ) -> ModelInferResponse:
        """Decode, run (batched with others), encode; statistics on the way. Tensors may
        lie in regions of `memory` (system shared memory)."""
        start = time.perf_counter_ns()
        self.metrics.in_flight.inc()
        try:
            arrays, size = decode_inputs(request, self.inputs, self.max_batch_size, memory)
            wanted = requested_outputs(request, self.output_index, memory, self.outputs)
            timeout_s = self.queue_timeout(request_timeout_s(request, self.name))
            result = self.batcher.submit(arrays, size, ctx, timeout_s)
        except ZooError as error:
            self.stats.record_failure(time.perf_counter_ns() - start)
            self.metrics.failed(error.code)
            raise
        finally:
            self.metrics.in_flight.dec()
        response = ModelInferResponse(
            model_name=self.name, model_version=self.version, id=request.id
        )
        try:
            if wanted is None:
                encode_outputs(response, self.outputs, result.outputs)
            else:
                self._encode_requested(response, wanted, result.outputs)
        except ZooError as error:  # an output larger than its slot of shared memory
            self.stats.record_failure(time.perf_counter_ns() - start)
            self.metrics.failed(error.code)
            raise
        elapsed = time.perf_counter_ns() - start
        self.stats.record_success(size, elapsed, result.queue_ns, result.timing)
        self.metrics.ok.inc()
        self.metrics.latency.observe(elapsed / 1e9)
        self.metrics.queue.observe(result.queue_ns / 1e9)
        return response
