"""The settings of one server process (`zoo serve`): env prefix ZOO_, flags override."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator

from zoo.settings import ZooSettings


class ServeSettings(ZooSettings):
    repository: Path = Field(description="model repository in Triton's layout")
    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(8001, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    http_port: int = Field(
        8000,
        ge=-1,
        le=65535,
        description="KServe v2 REST API and the web page; 0 picks a free one, -1 is off",
    )
    http_cors_origin: str | None = Field(
        None,
        description="let browser pages from this origin call the REST API (CORS), e.g. "
        "https://example.org or *; unset: no CORS headers",
    )
    metrics_port: int = Field(
        8002, ge=-1, le=65535, description="Prometheus /metrics port; 0 picks a free one, -1 is off"
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        "auto", description="onnxruntime execution provider; auto prefers CUDA, else CPU"
    )
    intra_op_threads: int = Field(
        0, ge=0, description="onnxruntime threads per session call; 0 is half the CPUs"
    )
    inter_op_threads: int = Field(1, ge=0, description="onnxruntime inter-op threads")
    spin: bool = Field(
        False,
        description="let onnxruntime's threads spin-wait for work (faster alone, but they "
        "take CPU from the gRPC threads on a small machine)",
    )
    # Two calls of half the CPUs each keep every core computing while the queue is busy:
    # on 2 cores, bn_cnn under perf_analyzer gave +59% images/s at batch 32 x 4 and
    # +6% to +30% requests/s at batch 1 x 4..32 over one instance (README, serving).
    instances: int = Field(
        2,
        ge=1,
        description="session calls one model version may run at once, unless its "
        "config.pbtxt sets instance_group count",
    )
    workers: int = Field(
        64,
        ge=1,
        description="threads for every RPC but inference: streams, health watches, "
        "metadata, statistics, model control (each open stream holds one)",
    )
    # Python runs one thread at a time (the GIL): every thread that waits for it makes
    # each hand-over slower, the session call's return included. On 2 cores, 2-4
    # inference threads served bn_mlp batch 1 x 32 ~15-25% faster than 64 (README,
    # serving). Requests beyond them wait, admitted (--max-in-flight bounds them all),
    # for a thread; only requests on one reach a model's queue and can share a batch.
    infer_threads: int = Field(
        0,
        ge=0,
        description="threads that run inference requests (gRPC and HTTP together); 0 is "
        "the number of CPUs, at least 2. A model's queue (batches, max_queue_size) holds "
        "only requests on these threads: raise it for deeper batches (e.g. on a GPU)",
    )
    # Admission before queueing: past these bounds a request is refused at once with
    # RESOURCE_EXHAUSTED, so that under overload admitted requests keep a bounded
    # latency and memory stays flat, instead of every request waiting ever longer.
    # As many as there are worker threads: an RPC admitted beyond them would only wait
    # for a thread, adding to the latency of every admitted request under overload.
    max_in_flight: int = Field(
        64,
        ge=1,
        description="RPCs in progress at once (streams and health watches included); "
        "more are refused with RESOURCE_EXHAUSTED",
    )
    max_queue_size: int = Field(
        64,
        ge=1,
        description="requests one model version may queue while its session calls are busy, "
        "unless its config.pbtxt sets dynamic_batching.default_queue_policy.max_queue_size",
    )
    poll_interval: float = Field(
        0.0, ge=0, description="seconds between repository rescans; 0 scans only at start"
    )
    allow_model_control: bool = Field(
        False, description="accept RepositoryModelLoad/Unload requests"
    )
    # A region is any POSIX shared memory object the server's user may open: a client that
    # can reach the server can make it read and write such objects, which only a client
    # on the same host has any use for.
    shared_memory: bool = Field(
        True,
        description="accept system shared memory regions (Triton's extension); "
        "--no-shared-memory where no client runs on this host",
    )
    tls_cert: FilePath | None = Field(
        None, description="PEM certificate chain: serve TLS (needs --tls-key)"
    )
    tls_key: FilePath | None = Field(None, description="PEM private key of --tls-cert")
    tls_client_ca: FilePath | None = Field(
        None,
        description="PEM certificate authority: require every client to present a certificate "
        "it signed (mutual TLS; needs --tls-cert)",
    )
    auth_token: SecretStr | None = Field(
        None,
        min_length=1,
        description="require 'authorization: Bearer TOKEN' on every RPC but health checks "
        "(prefer env ZOO_AUTH_TOKEN: flags show in ps)",
    )
    processes: int = Field(
        1,
        ge=1,
        description="server processes sharing the ports with SO_REUSEPORT, each with its "
        "own sessions; auto is one per CPU",
    )
    grace: float = Field(10.0, ge=0, description="seconds in-flight requests get on SIGTERM")
    max_message_mb: int = Field(64, ge=1, description="largest gRPC message, in MiB, each way")
    log_format: Literal["text", "json"] = Field("text", description="log line format")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")

    @field_validator("processes", mode="before")
    @classmethod
    def _auto_processes(cls, value: object) -> object:
        return (os.cpu_count() or 1) if value == "auto" else value

    @field_validator("tls_cert", "tls_key", "tls_client_ca")
    @classmethod
    def _pem_file(cls, path: Path | None) -> Path | None:
        # Checked here, so that a wrong file fails before anything loads, in one line.
        try:
            if path is not None and b"-----BEGIN " not in path.read_bytes():
                raise ValueError("not a PEM file")
        except OSError as error:
            raise ValueError(error.strerror) from None
        return path

    @model_validator(mode="after")
    def _tls_pair(self) -> ServeSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return self
