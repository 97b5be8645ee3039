"""The server's protocol operations on protobuf messages, free of grpc.

The servicer calls one method per RPC; errors are ZooErrors whose `code` the gRPC
layer maps to a status in its one table.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import onnxruntime as ort
from google.protobuf import json_format

import zoo
from proto.grpc_service_pb2 import (
    CudaSharedMemoryStatusResponse,
    InferBatchStatistics,
    InferStatistics,
    ModelConfigResponse,
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataResponse,
    ModelRepositoryParameter,
    ModelStatistics,
    ModelStatisticsResponse,
    RepositoryIndexResponse,
    ServerMetadataResponse,
    StatisticDuration,
    SystemSharedMemoryStatusResponse,
)
from proto.model_config_pb2 import ModelConfig
from server.batcher import CallContext
from server.config_support import check_supported, graph_optimization_level
from server.manager import ModelManager
from server.metrics import ServerMetrics, TritonCounters
from server.model import LoadedModel
from server.runtime import (
    CPU,
    create_session,
    default_intra_op_threads,
    resolve_providers,
    session_options,
)
from server.settings import ServeSettings
from server.shared_memory import SharedMemoryRegistry
from server.stats import Duration
from zoo.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnimplementedError,
    ZooError,
)
from zoo.repository import model_file

log = logging.getLogger(__name__)

SERVER_NAME = "modelzoo"
# What perf_analyzer and tritonclient look for: "statistics" makes perf_analyzer
# call ModelStatistics.
SYSTEM_SHARED_MEMORY = "system_shared_memory"
EXTENSIONS = ("model_repository", "model_configuration", "statistics", SYSTEM_SHARED_MEMORY)


def _duration(d: Duration) -> StatisticDuration:
    return StatisticDuration(count=d.count, ns=d.ns)


def _statistics(model: LoadedModel) -> ModelStatistics:
    s = model.stats
    with s.lock:
        return ModelStatistics(
            name=model.name,
            version=model.version,
            last_inference=s.last_inference_ms,
            inference_count=s.inference_count,
            execution_count=s.execution_count,
            inference_stats=InferStatistics(
                success=_duration(s.success),
                fail=_duration(s.fail),
                queue=_duration(s.queue),
                compute_input=_duration(s.compute_input),
                compute_infer=_duration(s.compute_infer),
                compute_output=_duration(s.compute_output),
            ),
            batch_stats=[
                InferBatchStatistics(
                    batch_size=size,
                    compute_input=_duration(b.compute_input),
                    compute_infer=_duration(b.compute_infer),
                    compute_output=_duration(b.compute_output),
                )
                for size, b in sorted(s.batches.items())
            ],
        )


def _config_override(
    name: str, parameters: Mapping[str, ModelRepositoryParameter]
) -> ModelConfig | None:
    """The "config" parameter of a load request (Triton's JSON model configuration)."""
    unknown = sorted(set(parameters) - {"config"})
    if unknown:
        # Triton's "file:<path>" parameters carry model files in the request; we load
        # files only from the repository, so they are refused rather than ignored.
        raise InvalidArgumentError(
            f"unsupported load parameters {[p[:100] for p in unknown[:5]]}: only 'config' "
            "(a JSON model configuration) is; put model files in the repository"
        )
    if "config" not in parameters:
        return None
    text = parameters["config"].string_param
    try:
        config = json_format.Parse(text, ModelConfig())
    except json_format.ParseError as error:
        raise InvalidArgumentError(
            f"load parameter 'config': expected a JSON model configuration: {error}"
        ) from None
    if config.name and config.name != name:
        raise InvalidArgumentError(f"load parameter 'config' names {config.name!r}, not {name!r}")
    config.name = name
    check_supported(config)  # refused before it replaces anything
    return config


class InferenceCore:
    def __init__(
        self,
        settings: ServeSettings,
        on_change: Callable[[str, bool], None] = lambda name, ready: None,
    ) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        self.metrics.registry.register(TritonCounters(lambda: self.statistics("", "")))
        self._providers = resolve_providers(settings.device)
        self._options = session_options(
            settings.intra_op_threads, settings.inter_op_threads, settings.spin
        )
        # Threads for each model's wide session (0: none): every CPU, where the thread
        # count is ours to choose (not set by --intra-op-threads) and on the CPU only.
        cpus = os.cpu_count() or 1
        ours = self._providers[0] == CPU and not settings.intra_op_threads
        self._wide_threads = cpus if ours and cpus > default_intra_op_threads() else 0
        self.manager = ModelManager(settings.repository, self._load, on_change)
        self.shared_memory = SharedMemoryRegistry()
        self.ready = False
        extensions = [e for e in EXTENSIONS if settings.shared_memory or e != SYSTEM_SHARED_MEMORY]
        self._metadata = ServerMetadataResponse(
            name=SERVER_NAME, version=zoo.__version__, extensions=extensions
        )

    def _load(self, model_dir: Path, version: int, config: ModelConfig) -> LoadedModel:
        path = model_file(model_dir, version, config)
        session = create_session(
            path,
            self._providers,
            self._session_options(config),
            require_gpu=self.settings.device == "cuda",
        )
        wide = None
        if self._wide_threads:
            wide = create_session(
                path, self._providers, self._session_options(config, self._wide_threads)
            )
        return LoadedModel(
            model_dir,
            version,
            config,
            session,
            self.metrics,
            self.settings.instances,
            self.settings.max_queue_size,
            wide_session=wide,
        )

    def _session_options(self, config: ModelConfig, threads: int = 0) -> ort.SessionOptions:
        """The server's options (`threads` intra-op threads if given), with the graph
        optimisation level the config asks for."""
        level = graph_optimization_level(config)
        if level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL and not threads:
            return self._options
        if level != ort.GraphOptimizationLevel.ORT_ENABLE_ALL:
            log.info("model %s: onnxruntime graph optimisation %s", config.name, level.name)
        s = self.settings
        return session_options(threads or s.intra_op_threads, s.inter_op_threads, s.spin, level)

    def start(self) -> None:
        """Load every model (failures are recorded, not raised), then start polling."""
        self.manager.scan()
        if self.settings.poll_interval > 0:
            self.manager.start_polling(self.settings.poll_interval)
        self.ready = True

    def stop(self) -> None:
        self.ready = False
        self.manager.stop()

    def server_metadata(self) -> ServerMetadataResponse:
        return self._metadata

    def model_ready(self, name: str, version: str) -> bool:
        try:
            self.manager.get(name, version)
        except ZooError:
            return False
        return True

    def model_metadata(self, name: str, version: str) -> ModelMetadataResponse:
        return self.manager.get(name, version).metadata_reply

    def model_config(self, name: str, version: str) -> ModelConfigResponse:
        return self.manager.get(name, version).config_reply

    def infer(self, request: ModelInferRequest, ctx: CallContext | None) -> ModelInferResponse:
        model = self.manager.get(request.model_name, request.model_version)
        return model.infer(request, ctx, self.shared_memory)

    def statistics(self, name: str, version: str) -> ModelStatisticsResponse:
        if not name:
            models = self.manager.loaded()
        elif version:
            models = [self.manager.get(name, version)]
        else:
            models = self.manager.versions_of(name)
        return ModelStatisticsResponse(model_stats=[_statistics(m) for m in models])

    def repository_index(self, ready_only: bool) -> RepositoryIndexResponse:
        entries = [
            RepositoryIndexResponse.ModelIndex(
                name=name, version=version, state=s.state, reason=s.reason
            )
            for name, version, s in self.manager.index()
            if not ready_only or s.state == "READY"
        ]
        return RepositoryIndexResponse(models=entries)

    def _check_model_control(self) -> None:
        if not self.settings.allow_model_control:
            raise FailedPreconditionError(
                "model control is off: start the server with --allow-model-control"
            )

    def load(self, name: str, parameters: Mapping[str, ModelRepositoryParameter]) -> None:
        """Load or reload `name`; a "config" parameter (JSON) replaces its config.pbtxt."""
        self._check_model_control()
        try:
            config = _config_override(name, parameters)
        except InvalidArgumentError as error:
            # Triton's wording first (its clients look for "failed to load"), then why.
            raise InvalidArgumentError(f"failed to load {name!r}: {error}") from None
        self.manager.load(name, config)

    def unload(self, name: str) -> None:
        self._check_model_control()
        self.manager.unload(name)

    # -- shared memory (Triton's extensions) --

    def shared_memory_status(self, name: str) -> SystemSharedMemoryStatusResponse:
        reply = SystemSharedMemoryStatusResponse()
        for r in self.shared_memory.status(name):
            reply.regions[r.name].CopyFrom(
                SystemSharedMemoryStatusResponse.RegionStatus(
                    name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size
                )
            )
        return reply

    def register_shared_memory(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not self.settings.shared_memory:
            raise FailedPreconditionError(
                f"cannot register shared memory region {name!r}: system shared memory is off "
                "on this server (--no-shared-memory); send tensors in the request"
            )
        self.shared_memory.register(name, key, offset, byte_size)
        log.info("registered shared memory region %r (%s, %d bytes)", name, key, byte_size)

    def unregister_shared_memory(self, name: str) -> None:
        self.shared_memory.unregister(name)

    # CUDA shared memory: no region can be registered here, so the status is empty and
    # unregistering one is a no-op (perf_analyzer unregisters all at start).

    def cuda_shared_memory_status(self, name: str) -> CudaSharedMemoryStatusResponse:
        if name:
            raise NotFoundError(
                f"Unable to find cuda shared memory region: {name!r}: this server registers "
                "no CUDA shared memory"
            )
        return CudaSharedMemoryStatusResponse()

    def register_cuda_shared_memory(self, name: str) -> None:
        raise UnimplementedError(
            f"cannot register CUDA shared memory region {name!r}: this server does not "
            "support CUDA shared memory; use system shared memory or send tensors in requests"
        )
