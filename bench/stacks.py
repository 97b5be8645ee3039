"""Which Python gRPC stack is the ceiling: no-op servers built three ways, and ours.

    python bench/stacks.py [--models bn_mlp,bn_cnn] [--seconds 2] [--rounds 3]

A roofline (bench/serve.py) adds the model's own call to what a server that computes
nothing answers; which no-op server sets it matters. Three answer the same canned
ModelInfer replies (bench/serve.py's `canned_replies`) and our ModelMetadata/ModelConfig:

    sync-64     grpcio's thread-pool server on 64 threads (bench/serve.py's no-op)
    sync-ours   the stack our server builds: registered methods, tolerant deserializers,
                ModelInfer on an inference pool of one thread per CPU (bench/ablation.py's
                "noop" rung)
    aio         grpcio's asyncio server (grpc.aio), replies made on the event loop

and `zoo` is our server. One more server computes, to measure what a different front end
would gain before anyone builds it:

    aio-batched grpc.aio with every request decoded and encoded on the event loop and
                computed by one session thread, which takes everything queued as one
                batch (up to max_batch_size): a session call and its return into the
                interpreter lock per batch, not per request; no statistics, metrics,
                deadlines or error translation (a sketch, not a server)
 The load is Triton's perf_analyzer, servers interleaved within
each round (the order rotating), then in-process onnxruntime with one thread calling. The
table gives median req/s and, per no-op stack, our server's share of the roofline that
stack sets (median of per-round ratios). Writes bench/results/stacks.{json,md}.
`--serve-aio` runs the asyncio no-op server itself.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from bench.serve import (  # noqa: E402
    PERF_ANALYZER,
    RESULTS,
    ServerProcess,
    canned_replies,
    measure_peers,
    median_ratio,
    noop_command,
    perf_analyzer,
    roofline,
    write_results,
    zoo_command,
)
from proto import grpc_service_pb2 as pb  # noqa: E402

NOOPS = ("sync-64", "sync-ours", "aio")


Infer = Callable[[pb.ModelInferRequest], Awaitable[pb.ModelInferResponse]]


def serve_aio(repository: Path, kind: str, infer_on: Callable[[Any], Infer]) -> int:
    """An asyncio server answering the metadata and config RPCs from our core's loaded
    models (as perf_analyzer needs) and ModelInfer with `infer_on(core)`, made on the
    running event loop."""
    import grpc

    from proto.grpc_service_pb2_grpc import (
        GRPCInferenceServiceServicer,
        add_GRPCInferenceServiceServicer_to_server,
    )
    from server.core import InferenceCore
    from server.settings import ServeSettings

    core = InferenceCore(ServeSettings(repository=repository, device="cpu"))
    core.start()

    async def serve() -> None:
        infer = infer_on(core)

        class Servicer(GRPCInferenceServiceServicer):
            async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
                return pb.ServerLiveResponse(live=True)

            async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
                return pb.ServerMetadataResponse(name=kind, version="0")  # no statistics

            async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
                return core.model_metadata(request.name, request.version)

            async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
                return core.model_config(request.name, request.version)

            async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
                return await infer(request)

        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"{kind}: ready on 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())
    return 0


def canned_infer(core: Any) -> Infer:
    """The no-op: canned replies, made on the event loop."""
    reply = canned_replies(core)

    async def infer(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        return reply(request)

    return infer


class BatchingSessionThread:
    """One thread that runs a model's calls: each turn takes every queued request (up to
    the model's max_batch_size images) as one batch, then resolves each request's future
    on the event loop with its rows of the outputs."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        import queue

        self._loop = loop
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._held: tuple | None = None  # a request that did not fit the last batch
        threading.Thread(target=self._work, daemon=True).start()

    def submit(self, model: Any, arrays: dict, size: int) -> asyncio.Future:
        future = self._loop.create_future()
        self._queue.put((model, arrays, size, future))
        return future

    def _take(self) -> list[tuple]:
        import queue

        batch = [self._held or self._queue.get()]
        self._held = None
        model, total = batch[0][0], batch[0][2]
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch
            if item[0] is not model or total + item[2] > max(model.max_batch_size, 1):
                self._held = item
                return batch
            batch.append(item)
            total += item[2]

    def _work(self) -> None:
        import numpy as np

        while True:
            batch = self._take()
            model = batch[0][0]
            try:
                feeds = {
                    name: np.concatenate([item[1][name] for item in batch]) for name in batch[0][1]
                }
                outputs = model._run(feeds, len(batch) == 1)
                offset, parts = 0, []
                for item in batch:
                    parts.append([o[offset : offset + item[2]] for o in outputs])
                    offset += item[2]
            except Exception as error:  # every request of the batch hears of it
                for item in batch:
                    self._loop.call_soon_threadsafe(item[3].set_exception, error)
                continue
            for item, part in zip(batch, parts, strict=True):
                self._loop.call_soon_threadsafe(item[3].set_result, part)


def batched_infer(core: Any) -> Infer:
    """Decode and encode on the event loop; compute on a BatchingSessionThread."""
    from server.codec import decode_inputs, encode_outputs

    sessions = BatchingSessionThread(asyncio.get_running_loop())

    async def infer(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        model = core.manager.get(request.model_name, request.model_version)
        arrays, size = decode_inputs(request, model.inputs, model.max_batch_size)
        outputs = await sessions.submit(model, arrays, size)
        response = pb.ModelInferResponse(
            model_name=model.name, model_version=model.version, id=request.id
        )
        encode_outputs(response, model.outputs, outputs)
        return response

    return infer


def commands(repository: Path) -> dict[str, list[str]]:
    python, repo, ablation = sys.executable, str(repository), str(ROOT / "bench/ablation.py")
    return {
        "sync-64": noop_command(repository),
        "sync-ours": [python, ablation, "--serve", "noop", "--repository", repo],
        "aio": [python, str(Path(__file__).resolve()), "--serve-aio", "--repository", repo],
        "aio-batched": [python, str(Path(__file__).resolve()), "--serve-aio-batched",
                        "--repository", repo],
        "zoo": zoo_command(repository),
    }  # fmt: skip


def measure(
    repository: Path, models: list[str], seconds: float, rounds: int
) -> dict[str, dict[str, list[dict]]]:
    with tempfile.TemporaryDirectory() as logs:
        servers = {
            kind: ServerProcess(command, Path(logs) / f"{kind}.log")
            for kind, command in commands(repository).items()
        }
        try:
            return measure_peers(servers, repository, models, seconds, rounds, perf_analyzer)
        finally:
            for server in servers.values():
                server.stop()


def summarise(runs: dict[str, dict[str, list[dict]]]) -> list[dict[str, Any]]:
    points = []
    for key in runs["zoo"]:
        rps = {kind: [r["requests_per_s"] for r in runs[kind][key]] for kind in runs}
        everything = [r for kind in runs for r in runs[kind][key]]
        share = {}
        for noop in NOOPS:
            roof = [roofline(n, c) for n, c in zip(rps[noop], rps["onnxruntime"], strict=True)]
            share[noop] = median_ratio(rps["zoo"], roof)
        points.append(
            {
                "point": key,
                "requests_per_s": {kind: statistics.median(values) for kind, values in rps.items()},
                "zoo_share_of_roofline": share,
                "batched_over_zoo": median_ratio(rps["aio-batched"], rps["zoo"]),
                "other_work_cpus_max": max(r["foreign_cpus"] for r in everything),
            }
        )
    return points


def table(results: dict[str, Any]) -> str:
    kinds = ("zoo", "aio-batched", *NOOPS, "onnxruntime")
    lines = [
        "| load | "
        + " | ".join(f"{k} req/s" for k in kinds)
        + " | aio-batched / zoo | "
        + " | ".join(f"zoo / roofline of {n}" for n in NOOPS)
        + " |",
        "|---|" + "---:|" * (len(kinds) + 1 + len(NOOPS)),
    ]
    for p in results["points"]:
        cells = [f"{p['requests_per_s'][k]:,.0f}" for k in kinds]
        cells.append(f"{p['batched_over_zoo']:.2f}")
        cells += [f"{p['zoo_share_of_roofline'][n]:.2f}" for n in NOOPS]
        lines.append(f"| {p['point']} | " + " | ".join(cells) + " |")
    foreign = max(p["other_work_cpus_max"] for p in results["points"])
    lines += [
        "",
        f"Medians of {results['rounds']} interleaved rounds of {results['seconds']:g} s "
        f"(perf_analyzer; onnxruntime: in process, one thread calling); shares are medians "
        f"of per-round ratios. {results['date']}, {results['cpus']} CPUs, "
        f"{results['machine']}; other work at most {foreign:.2f} CPUs; load average "
        f"{results['load_average'][0]} before, {results['load_average'][1]} after.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--models", default="bn_mlp,bn_cnn")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "stacks.json")
    parser.add_argument("--serve-aio", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-aio-batched", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_aio:
        return serve_aio(args.repository, "aio", canned_infer)
    if args.serve_aio_batched:
        return serve_aio(args.repository, "aio-batched", batched_infer)
    if not PERF_ANALYZER.exists():
        raise SystemExit(f"{PERF_ANALYZER} missing: run bash tools/install-perf-analyzer.sh")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # progress
    before = os.getloadavg()[0]
    runs = measure(args.repository, args.models.split(","), args.seconds, args.rounds)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "load_average": [round(before, 2), round(os.getloadavg()[0], 2)],
        "points": summarise(runs),
        "runs": runs,
    }
    return write_results(results, table, args.output)


if __name__ == "__main__":
    sys.exit(main())
