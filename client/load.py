"""`zoo load`: load-test a served model, closed or open loop, and report like perf_analyzer.

    zoo load --model bn_cnn --concurrency 8 --duration 10
    zoo load --model bn_cnn --rate 500 --poisson --output run.json
    zoo load --model bn_cnn --sweep 1,8,32 --plot sweep.png

Prints one table row per run (requests/s, images/s, latency percentiles, errors by gRPC
code), live progress on stderr while running, and writes JSON with `--output`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field
from tqdm import tqdm

from client.channel import NO_RETRIES, Connection
from client.cli import OneLineParser
from client.errors import InferenceServerException
from client.loadgen import GeneratorJob, Progress, run_generators, split_load
from client.protocol import ModelMetadata, build_infer_request, dtype_of
from client.report import format_endpoints, format_table, write_plot
from client.settings import ClientSettings
from client.stats import summarise
from client.sync import ZooClient
from zoo.card import TensorSpec
from zoo.errors import InvalidArgumentError
from zoo.settings import add_settings_arguments, settings_from_args

log = logging.getLogger(__name__)

# Distinct request payloads cycled through for mnist/random input, so that a server cannot
# answer from a cache, while building them costs nothing during the run.
REQUEST_POOL = 16
RATE_WINDOW_S = 1.0
CONCURRENCY_PER_PROCESS = 64
RATE_PER_PROCESS = 2500.0
# Above this p99 of send lag (ms) a run says that its generator fell behind.
LAG_WARNING_MS = 1.0


class LoadSettings(ClientSettings):
    model: str = Field(description="the served model to load-test")
    version: str | None = Field(None, description="model version (unset: the server's choice)")
    concurrency: int | None = Field(None, ge=1, description="closed loop: requests kept in flight")
    rate: float | None = Field(None, gt=0, description="open loop: requests sent per second")
    poisson: bool = Field(
        False, description="open loop with Poisson (exponential) inter-arrival times"
    )
    batch: int = Field(1, ge=1, description="images per request")
    duration: float = Field(10.0, gt=0, description="measured seconds per run")
    warmup: float = Field(2.0, ge=0, description="seconds sent before measuring, not counted")
    processes: int | None = Field(
        None,
        ge=1,
        description="generator processes (unset: 1 per 64 in flight or 2,500 req/s, <= CPUs)",
    )
    input: Literal["mnist", "zeros", "random"] = Field("random", description="request payload")
    sweep: list[float] | None = Field(
        None, description="one run per value: concurrencies, or rates in req/s when --rate is given"
    )
    output: Path | None = Field(None, description="write the runs as JSON here")
    plot: Path | None = Field(None, description="write a latency-against-throughput PNG here")
    progress: bool = Field(True, description="show live progress on stderr")
    seed: int = Field(0, description="seed of the random payloads and Poisson arrivals")
    retry: bool = Field(
        False,
        description="let grpc retry UNAVAILABLE (a replica down or draining) as clients do; "
        "off, each counts as an error",
    )


def plan_loads(settings: LoadSettings) -> list[tuple[int | None, float | None]]:
    """(concurrency, rate) of each run: exactly one of the two is set per run."""
    if settings.concurrency is not None and settings.rate is not None:
        raise InvalidArgumentError(
            "give --concurrency (closed loop) or --rate (open loop), not both"
        )
    if settings.poisson and settings.rate is None:
        raise InvalidArgumentError("--poisson needs --rate: it shapes open-loop arrivals")
    if settings.sweep is None:
        return [(settings.concurrency or (None if settings.rate else 1), settings.rate)]
    if settings.rate is not None:
        return [(None, float(v)) for v in settings.sweep]
    if any(v < 1 or v != int(v) for v in settings.sweep):
        raise InvalidArgumentError(
            f"--sweep: expected whole concurrencies >= 1, got {settings.sweep}"
        )
    return [(int(v), None) for v in settings.sweep]


def make_payloads(
    metadata: ModelMetadata, kind: str, batch: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """Input arrays for each request: the model's inputs with the batch dimension set."""
    rng = np.random.default_rng(seed) if kind == "random" else None
    count = 1 if kind == "zeros" else REQUEST_POOL
    images = _mnist_images(count * batch) if kind == "mnist" else None
    return [
        {
            spec.name: _fill(
                spec, batch, rng, None if images is None else images[n * batch : (n + 1) * batch]
            )
            for spec in metadata.inputs
        }
        for n in range(count)
    ]


def _fill(
    spec: TensorSpec, batch: int, rng: np.random.Generator | None, images: np.ndarray | None
) -> np.ndarray:
    """MNIST images if given, else random values in [0, 1) if `rng`, else zeros."""
    shape = _batched_shape(spec.name, spec.shape, batch)
    dtype = dtype_of(spec.datatype)
    if images is not None:
        if images.size != math.prod(shape):
            raise InvalidArgumentError(
                f"--input mnist: input {spec.name!r} of shape {list(spec.shape)} "
                "cannot hold 28 x 28 images"
            )
        return images.reshape(shape).astype(dtype)
    return rng.random(shape).astype(dtype) if rng is not None else np.zeros(shape, dtype)


def _batched_shape(name: str, shape: tuple[int, ...], batch: int) -> tuple[int, ...]:
    if not shape or shape[0] != -1 or -1 in shape[1:]:
        raise InvalidArgumentError(
            f"input {name!r} has shape {list(shape)}: expected -1 (batch) first, fixed dims after"
        )
    return (batch, *shape[1:])


def _mnist_images(count: int) -> np.ndarray:
    from zoo.data import load_mnist  # imports torch: only when MNIST input is asked for

    test = load_mnist("test")
    index = np.arange(count) % len(test)
    return test.images[index].astype(np.float32) / 255.0


def build_requests(settings: LoadSettings, metadata: ModelMetadata) -> tuple[bytes, ...]:
    payloads = make_payloads(metadata, settings.input, settings.batch, settings.seed)
    return tuple(
        build_infer_request(settings.model, arrays, settings.version).SerializeToString()
        for arrays in payloads
    )


def default_processes(concurrency: int | None, rate: float | None) -> int:
    """Enough generator processes for the load, never more than the CPUs.

    Every process costs CPU that, on a machine shared with the server, the server loses.
    One process spends ~0.17 ms of CPU per request, so it can send ~5,000 requests/s,
    more than a Python server answers on the 2-core dev machine; there, at 16 in flight,
    two processes measured 10-35% less throughput than one (and than perf_analyzer), one
    process agreed with perf_analyzer within 2%.
    """
    wanted = (
        concurrency / CONCURRENCY_PER_PROCESS if concurrency else (rate or 0.0) / RATE_PER_PROCESS
    )
    return max(1, min(os.cpu_count() or 1, math.ceil(wanted)))


def run_one(
    settings: LoadSettings, requests: tuple[bytes, ...], concurrency: int | None, rate: float | None
) -> dict[str, Any]:
    processes = settings.processes or default_processes(concurrency, rate)
    # By default a load test counts failures: retrying would hide them.
    connection = settings.connection(retry=None if settings.retry else NO_RETRIES)
    before = served_requests(connection, settings.model)
    end_s = settings.warmup + settings.duration
    jobs = [
        GeneratorJob(i, connection, requests, end_s, c, r, offset, settings.poisson, settings.seed)
        for i, (c, r, offset) in enumerate(split_load(processes, concurrency, rate))
    ]
    label = f"concurrency {concurrency}" if concurrency else f"rate {rate:g}/s"
    with LiveProgress(settings, label) as progress:
        records = run_generators(jobs, progress)
    after = served_requests(connection, settings.model)
    summary = summarise(
        records, warmup_s=settings.warmup, duration_s=settings.duration, batch=settings.batch
    )
    lag = summary["send_lag_p99_ms"]
    if lag is not None and lag > LAG_WARNING_MS:
        log.warning(
            "%s: 1%% of requests went out over %.1f ms after they were due: the load "
            "generator, not only the server, fell behind (more --processes, or more CPUs)",
            label,
            lag,
        )
    mode = "closed" if concurrency else ("poisson" if settings.poisson else "open")
    return {
        "mode": mode,
        "concurrency": concurrency,
        "rate": rate,
        "batch": settings.batch,
        "processes": len(jobs),
        "duration_s": settings.duration,
        **summary,
        # Warm-up included; None for an address that could not say (down at an end).
        "requests_by_endpoint": {e: _difference(after[e], before[e]) for e in after},
    }


def _difference(after: int | None, before: int | None) -> int | None:
    return None if after is None or before is None else after - before


def served_requests(connection: Connection, model: str) -> dict[str, int | None]:
    """Requests each of several addresses has answered for `model`, from its statistics
    (grpc does not tell which address served a call); None where it cannot answer. Empty
    for one address."""
    if len(connection.endpoints) < 2:
        return {}
    counts: dict[str, int | None] = {}
    host = connection.server_name or connection.targets[0].rpartition(":")[0].strip("[]")
    for endpoint in connection.endpoints:
        alone = dataclasses.replace(
            connection,
            targets=(endpoint,),
            endpoints=(endpoint,),
            server_name=host,  # the name TLS checks: the one the user gave
            retry=NO_RETRIES,
        )
        try:
            with ZooClient(connection=alone) as client:
                stats = client.get_inference_statistics(model).model_stats
        except InferenceServerException:
            counts[endpoint] = None
            continue
        counts[endpoint] = sum(
            s.inference_stats.success.count + s.inference_stats.fail.count for s in stats
        )
    return counts


class LiveProgress:
    """A tqdm bar over the run's seconds, with live requests/s and errors, on stderr."""

    def __init__(self, settings: LoadSettings, label: str) -> None:
        total = settings.warmup + settings.duration
        self.bar = tqdm(
            total=round(total, 1),
            desc=label,
            unit="s",
            file=sys.stderr,
            disable=not settings.progress,
            bar_format="{desc}: {bar} {n:.1f}/{total:.1f} s {postfix}",
        )
        self.last = (0.0, 0)

    def __enter__(self) -> Progress:
        return self.update

    def update(self, elapsed: float, ok: int, errors: int) -> None:
        # Each process reports on its own; a rate over one second spans all of their reports.
        if elapsed - self.last[0] >= RATE_WINDOW_S:
            rate = (ok - self.last[1]) / (elapsed - self.last[0])
            self.last = (elapsed, ok)
            self.bar.set_postfix_str(f"{rate:,.0f} req/s, {errors} errors", refresh=False)
        self.bar.n = round(min(max(elapsed, 0.0), self.bar.total), 1)
        self.bar.refresh()

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def main(argv: list[str]) -> int:
    parser = OneLineParser(prog="zoo load", description=__doc__.split("\n\n")[0])
    add_settings_arguments(parser, LoadSettings)
    settings = settings_from_args(LoadSettings, parser.parse_args(argv))
    loads = plan_loads(settings)
    with ZooClient(connection=settings.connection()) as client:
        metadata = client.metadata(settings.model, settings.version)
    requests = build_requests(settings, metadata)
    runs = [run_one(settings, requests, concurrency, rate) for concurrency, rate in loads]
    print(format_table(runs))
    for run in runs:
        if run["requests_by_endpoint"]:
            print(format_endpoints(run))
    report = {
        "model": settings.model,
        "version": settings.version,
        "url": settings.url,
        "input": settings.input,
        "runs": runs,
    }
    if settings.output is not None:
        settings.output.parent.mkdir(parents=True, exist_ok=True)
        settings.output.write_text(json.dumps(report, indent=2) + "\n")
        log.info("wrote %s", settings.output)
    if settings.plot is not None:
        write_plot(runs, settings.plot, f"{settings.model}, batch {settings.batch}")
        log.info("wrote %s", settings.plot)
    return 0
