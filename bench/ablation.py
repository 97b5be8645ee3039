"""The serving stack taken apart: where a request's time goes, layer by layer.

    python bench/ablation.py [--models bn_mlp,bn_cnn] [--seconds 3] [--rounds 3]

Each rung is a server on the same gRPC stack as ours (server.app's thread pools, the
inference one included, and tolerant deserializers), answering ModelInfer with one more
layer of our work than the rung before, on the model's own LoadedModel:

    noop     canned replies: the Python gRPC stack alone
    decode   + the request decoded and checked (server.codec)
    inline   + the session called on the handler's thread, outputs encoded
    batcher  + the call through the model's dynamic batcher
    model    + statistics, metrics, deadlines (LoadedModel.infer, what the server runs)
    full     our server itself (python -m server: + health, reflection, error translation)

The load is Triton's perf_analyzer, rungs interleaved within each round; the report is the
median req/s per rung and the cost each layer adds per request (difference of 1/req/s),
written to bench/results/ablation.{json,md}. `--serve RUNG` runs one rung's server.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from bench.serve import (  # noqa: E402
    LOADS,
    PERF_ANALYZER,
    RESULTS,
    ServerProcess,
    canned_replies,
    perf_analyzer,
)
from proto import grpc_service_pb2 as pb  # noqa: E402

log = logging.getLogger("bench.ablation")

RUNGS = ("noop", "decode", "inline", "batcher", "model", "full")
Handler = Callable[[pb.ModelInferRequest, Any], pb.ModelInferResponse]


def _handlers(core: Any) -> dict[str, Handler]:
    """ModelInfer for each rung below "full", on `core`'s loaded models."""
    from server.codec import decode_inputs, encode_outputs, requested_outputs

    reply = canned_replies(core)

    def model_of(request: pb.ModelInferRequest) -> Any:
        return core.manager.get(request.model_name, request.model_version)

    def noop(request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return reply(request)

    def decode(request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        model = model_of(request)
        decode_inputs(request, model.inputs, model.max_batch_size)
        requested_outputs(request, model.output_index)
        return reply(request)

    def answer(request: pb.ModelInferRequest, model: Any, outputs: list) -> pb.ModelInferResponse:
        response = pb.ModelInferResponse(
            model_name=model.name, model_version=model.version, id=request.id
        )
        encode_outputs(response, model.outputs, outputs)
        return response

    def inline(request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        model = model_of(request)
        arrays, _ = decode_inputs(request, model.inputs, model.max_batch_size)
        requested_outputs(request, model.output_index)
        return answer(request, model, model._run(arrays, False))

    def batcher(request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        model = model_of(request)
        arrays, size = decode_inputs(request, model.inputs, model.max_batch_size)
        requested_outputs(request, model.output_index)
        return answer(request, model, model.batcher.submit(arrays, size, context).outputs)

    def full_model(request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return model_of(request).infer(request, context)

    return {
        "noop": noop,
        "decode": decode,
        "inline": inline,
        "batcher": batcher,
        "model": full_model,
    }


def run_rung(rung: str, repository: Path) -> int:
    """Serve one rung (below "full") on the gRPC stack our server builds."""
    import grpc

    from proto.grpc_service_pb2_grpc import GRPCInferenceServiceServicer
    from server.core import InferenceCore
    from server.runtime import default_infer_threads
    from server.servicer import add_to_server
    from server.settings import ServeSettings

    settings = ServeSettings(repository=repository, device="cpu")
    core = InferenceCore(settings)
    core.start()
    infer = _handlers(core)[rung]

    class Rung(GRPCInferenceServiceServicer):
        def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(name=rung, version="0")  # no statistics

        def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
            return core.model_metadata(request.name, request.version)

        def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
            return core.model_config(request.name, request.version)

        def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
            return infer(request, context)

    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.workers),
        options=[("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=settings.max_in_flight,
    )
    add_to_server(Rung(), server, ThreadPoolExecutor(max_workers=default_infer_threads()))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"{rung}: ready on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()
    return 0


def start(rung: str, repository: Path, logs: Path) -> ServerProcess:
    python, repo = sys.executable, str(repository)
    if rung == "full":
        command = [python, "-m", "server", "--repository", repo, "--host", "127.0.0.1"]
        command += ["--port", "0", "--metrics-port", "-1", "--http-port", "-1", "--device", "cpu"]
    else:
        command = [python, str(Path(__file__).resolve()), "--serve", rung, "--repository", repo]
    return ServerProcess(command, logs / f"{rung}.log")


def measure(
    repository: Path, models: list[str], rungs: list[str], seconds: float, rounds: int
) -> dict[str, Any]:
    """req/s per rung and load point, rungs interleaved in every round."""
    samples: dict[str, dict[str, list[float]]] = {rung: {} for rung in rungs}
    with tempfile.TemporaryDirectory() as logs:
        servers = {rung: start(rung, repository, Path(logs)) for rung in rungs}
        try:
            for model in models:
                for batch, concurrency in LOADS:
                    key = f"{model} b{batch} c{concurrency}"
                    for _ in range(rounds):
                        for rung, server in servers.items():
                            row = perf_analyzer(server.address, model, batch, concurrency, seconds)
                            samples[rung].setdefault(key, []).append(row["requests_per_s"])
                    log.info(
                        "%s: %s",
                        key,
                        ", ".join(f"{r} {statistics.median(samples[r][key]):.0f}" for r in rungs),
                    )
        finally:
            for server in servers.values():
                server.stop()
    return samples


def table(samples: dict[str, dict[str, list[float]]], rungs: list[str]) -> str:
    """Median req/s per rung, and the µs each layer adds per request."""
    keys = list(samples[rungs[0]])
    header = " | ".join(rungs)
    lines = [
        f"| load | {header} | " + " | ".join(f"+{r} µs" for r in rungs[1:]) + " |",
        "|---" * (1 + 2 * len(rungs) - 1) + "|",
    ]
    for key in keys:
        medians = [statistics.median(samples[r][key]) for r in rungs]
        steps = [1e6 / b - 1e6 / a for a, b in itertools.pairwise(medians)]
        lines.append(
            f"| {key} | "
            + " | ".join(f"{m:.0f}" for m in medians)
            + " | "
            + " | ".join(f"{s:+.0f}" for s in steps)
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--models", type=lambda s: s.split(","), default=["bn_mlp", "bn_cnn"])
    parser.add_argument("--rungs", type=lambda s: s.split(","), default=list(RUNGS))
    parser.add_argument("--seconds", type=float, default=3.0, help="measurement window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "ablation.json")
    parser.add_argument("--serve", choices=RUNGS[:-1], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.serve:
        return run_rung(args.serve, args.repository)
    if not PERF_ANALYZER.exists():
        raise SystemExit(f"{PERF_ANALYZER} missing: run bash tools/install-perf-analyzer.sh")
    unknown = sorted(set(args.rungs) - set(RUNGS))
    if unknown:
        raise SystemExit(f"unknown rungs {unknown}: choose from {list(RUNGS)}")
    load_before = os.getloadavg()
    started = time.time()
    samples = measure(args.repository, args.models, args.rungs, args.seconds, args.rounds)
    results = {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "wall_time_s": round(time.time() - started, 1),
        "rungs": args.rungs,
        "requests_per_s": samples,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    markdown = table(samples, args.rungs)
    args.output.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
