"""Reliability benchmark: the fault suite (tests/reliability) at full size, as figures.

    python bench/reliability.py [--repository model_repository] [--model bn_cnn] [--other bn_mlp]
    python bench/reliability.py --quick     # smoke-sized: proves the script runs, in ~1 min

Each part runs against its own fresh server process (`python -m server`, as the tests
start it), with the tests' own generator, load and faults:

- fuzz: 10,000 malformed ModelInfer calls and 2,000 stream messages from the seeded
  generator: counts by status code, INTERNAL/UNKNOWN, hangs (no reply within 30 s),
  answers other than the contract's, server RSS before and after.
- overload: capacity measured in a closed loop, then 3x that offered in an open loop for
  20 s (client.loadgen, latency from each request's due time): shed (RESOURCE_EXHAUSTED)
  and other errors, admitted p50/p99, RSS before/during/after, and how soon after the
  load ends a closed loop gets full throughput again.
- faults: each repository fault under load, the server rescanning every 0.2 s: failed
  requests for the other model and for the damaged one (and answers from another
  version than the last good one), seconds until the server shows the fault and until
  it serves exactly again once undone.
- sigterm: SIGTERM under load with open streams and health watches (failed in-flight
  requests, exit status, seconds to exit), and after streams of unparseable bytes,
  repeated.

Other work on the machine changes every figure: /proc/loadavg is recorded before and
after. Writes bench/results/reliability.json and .md (the README tables) and prints the
tables; --quick writes to the temporary directory unless --output is given.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from client.base import make_connection  # noqa: E402
from client.channel import NO_RETRIES  # noqa: E402
from client.loadgen import (  # noqa: E402
    GeneratorJob,
    Recorder,
    arrival_times,
    closed_loop,
    make_sender,
    open_loop,
    sleep_until,
)
from client.stats import STATUS_NAMES, Records, latency_summary, summarise  # noqa: E402
from proto import grpc_service_pb2 as pb  # noqa: E402
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub  # noqa: E402
from zoo.repository import list_versions, read_model_config  # noqa: E402

log = logging.getLogger("bench.reliability")

RESULTS = ROOT / "bench" / "results"
RECOVERY_WINDOW_S = 0.5  # throughput is judged over windows this long, stepped by 0.1 s
RECOVERED = 0.9  # "full throughput": this share of the measured capacity


def _load(name: str, path: Path) -> ModuleType:
    """A test file as a module: the tests' generator, load, faults and server launcher."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


suite = _load("reliability_suite", ROOT / "tests" / "reliability" / "conftest.py")
servers = _load("zoo_test_servers", ROOT / "tests" / "conftest.py")


@dataclass(frozen=True)
class Sizes:
    fuzz_warmup: int  # messages sent before RSS is first measured
    fuzz_unary: int
    fuzz_stream: int
    capacity_s: float
    overload_s: float
    probe_s: float  # how long the closed loop after the overload runs
    fault_s: float  # under load after the server showed each fault
    sigterm_load_s: float  # under load before the signal
    race_repeats: int  # SIGTERM right after unparseable streams


FULL = Sizes(500, 10_000, 2_000, 5.0, 20.0, 10.0, 5.0, 3.0, 5)
QUICK = Sizes(100, 400, 100, 1.0, 3.0, 3.0, 1.0, 1.0, 2)


@contextlib.contextmanager
def running(repository: Path, *flags: str, logs: Path, name: str) -> Iterator[Any]:
    server = servers.launch_server(
        repository, "--device", "cpu", *flags, log_path=logs / f"{name}.log"
    )
    try:
        yield server
    finally:
        server.stop()


def rss_mb(server: Any) -> float:
    return suite.rss_kb(server.process.pid) / 1024


def served_version(repository: Path, model: str) -> int:
    config = read_model_config(repository / model)
    return list_versions(repository / model, config.version_policy)[-1]


# -- fuzz ------------------------------------------------------------------------------


def _fuzz_summary(outcomes: list[Any], off_contract: list[Any], seconds: float) -> dict:
    by_code = Counter(o.code for o in outcomes)
    forbidden = [o for o in outcomes if o.forbidden]
    return {
        "messages": len(outcomes),
        "seconds": seconds,
        "by_code": dict(by_code.most_common()),
        "internal_or_unknown": sum(by_code[c] for c in suite.SERVER_FAULTS),
        "hangs": by_code[suite.HANG],
        "off_contract": len(off_contract),
        "off_contract_by_kind": dict(Counter(f"{o.kind} -> {o.code}" for o in off_contract)),
        "examples": list(dict.fromkeys(map(str, forbidden + off_contract)))[:20],
    }


def fuzz_part(repository: Path, model: str, sizes: Sizes, logs: Path) -> dict:
    version = served_version(repository, model)
    config = read_model_config(repository / model)
    target = suite.FuzzTarget(model, config.max_batch_size, str(version))
    with running(repository, logs=logs, name="fuzz") as server:
        with grpc.insecure_channel(server.address) as channel:
            suite.fuzz_unary(channel, suite.malformed_requests(1, sizes.fuzz_warmup, target))
            before = rss_mb(server)
            t0 = time.perf_counter()
            unary = suite.fuzz_unary(channel, suite.malformed_requests(0, sizes.fuzz_unary, target))
            t1 = time.perf_counter()
            cases = suite.malformed_requests(2, sizes.fuzz_stream, target)
            stream, broken = suite.fuzz_stream(channel, cases)
            t2 = time.perf_counter()
            after = rss_mb(server)
        exact = suite.exact_problems(server.address, repository / model, version=version)
        alive = server.process.poll() is None
    off_unary = [o for o in unary if o.code not in o.allowed and not o.forbidden]
    off_stream = [o for o in suite.stream_problems(stream) if not o.forbidden]
    return {
        "model": model,
        "unary": _fuzz_summary(unary, off_unary, t1 - t0),
        "stream": {**_fuzz_summary(stream, off_stream, t2 - t1), "stream_problems": broken},
        "rss_before_mb": before,
        "rss_after_mb": after,
        "exact_after": not exact,
        "exact_problems": exact,
        "server_alive": alive,
    }


# -- overload --------------------------------------------------------------------------


def _windows(probe: Records, start_s: float) -> list[tuple[float, float, int]]:
    """(window start, successes/s, errors) of the probe over RECOVERY_WINDOW_S windows,
    stepped by 0.1 s from `start_s`."""
    ok = probe.codes == 0
    rows = []
    for t in np.arange(start_s, probe.done.max(initial=start_s) - RECOVERY_WINDOW_S, 0.1):
        inside = (probe.done >= t) & (probe.done < t + RECOVERY_WINDOW_S)
        rows.append(
            (
                round(float(t - start_s), 2),
                np.count_nonzero(inside & ok) / RECOVERY_WINDOW_S,
                int(np.count_nonzero(inside & ~ok)),
            )
        )
    return rows


def _recovery_s(windows: list[tuple[float, float, int]], capacity: float) -> float | None:
    """Seconds from the load's end to the end of the first window in which the probe got
    full throughput (RECOVERED x capacity) and no error; None if it never did."""
    for t, rate, errors in windows:
        if rate >= RECOVERED * capacity and errors == 0:
            return t + RECOVERY_WINDOW_S
    return None


def _capacity(
    calls: list[Any],
    connection: Any,
    requests: tuple[bytes, ...],
    args: argparse.Namespace,
    seconds: float,
) -> dict:
    """A closed loop at --concurrency: what the server delivers when it is never idle."""
    warmup = 1.0
    job = GeneratorJob(0, connection, requests, warmup + seconds, concurrency=args.concurrency)
    recorder = Recorder(time.monotonic())
    closed_loop(make_sender(calls, job, recorder), args.concurrency, job.end_s, recorder.now)
    return summarise(recorder.records(), warmup_s=warmup, duration_s=seconds, batch=args.batch)


def _offer(
    server: Any,
    calls: list[Any],
    connection: Any,
    requests: tuple[bytes, ...],
    rate: float,
    args: argparse.Namespace,
    sizes: Sizes,
) -> tuple[Records, Records, list[float]]:
    """An open loop at `rate` for sizes.overload_s, then a closed loop at --concurrency
    (the probe) for sizes.probe_s, RSS sampled meanwhile: (open, probe, RSS samples)."""
    start = time.monotonic()
    load_recorder, probe_recorder = Recorder(start), Recorder(start)
    offered = GeneratorJob(0, connection, requests, sizes.overload_s, rate=rate)
    end_s = sizes.overload_s + sizes.probe_s
    probe = GeneratorJob(1, connection, requests, end_s, concurrency=args.concurrency)
    samples: list[float] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.25):
            samples.append(rss_mb(server))

    def run_probe() -> None:
        # It starts when the open loop is due to send its last request: the load's end.
        sleep_until(sizes.overload_s, probe_recorder.now)
        send = make_sender(calls, probe, probe_recorder)
        closed_loop(send, args.concurrency, probe.end_s, probe_recorder.now)

    helpers = [threading.Thread(target=f, daemon=True) for f in (sample, run_probe)]
    for thread in helpers:
        thread.start()
    send = make_sender(calls, offered, load_recorder)
    open_loop(send, arrival_times(offered), load_recorder.now)
    sampling.set()
    for thread in helpers:
        thread.join()
    return load_recorder.records(), probe_recorder.records(), samples


def overload_part(
    repository: Path, model: str, args: argparse.Namespace, sizes: Sizes, logs: Path
) -> dict:
    requests = tuple(suite.valid_request(model, args.batch, seed=n) for n in range(16))
    with running(repository, logs=logs, name="overload") as server:
        connection = make_connection(server.address, timeout=suite.CALL_TIMEOUT_S, retry=NO_RETRIES)
        with grpc.insecure_channel(server.address) as channel:
            calls = [channel.unary_unary(suite.MODEL_INFER)]
            capacity_run = _capacity(calls, connection, requests, args, sizes.capacity_s)
            capacity = capacity_run["throughput_rps"]
            before = rss_mb(server)
            rate = args.factor * capacity
            log.info("overload: capacity %.1f req/s; offering %.1f req/s", capacity, rate)
            records, probe, samples = _offer(server, calls, connection, requests, rate, args, sizes)
            after = rss_mb(server)
    ok = records.codes == 0
    codes = Counter(STATUS_NAMES.get(int(c), str(int(c))) for c in records.codes)
    delivered = np.count_nonzero(ok & (records.done < sizes.overload_s))
    windows = _windows(probe, sizes.overload_s)
    return {
        "model": model,
        "batch": args.batch,
        "concurrency": args.concurrency,
        "capacity_rps": capacity,
        "capacity_p99_ms": capacity_run["p99_ms"],
        "factor": args.factor,
        "offered_rps": rate,
        "seconds": sizes.overload_s,
        "sent": len(records.codes),
        "by_code": dict(codes.most_common()),
        "shed": codes["RESOURCE_EXHAUSTED"],
        "other_errors": sum(n for c, n in codes.items() if c not in ("OK", "RESOURCE_EXHAUSTED")),
        "admitted_rps": int(delivered) / sizes.overload_s,
        "admitted_latency_ms": latency_summary((records.done - records.start)[ok] * 1e3),
        # How late the generator itself sent: when this grows, the client fell behind.
        "send_lag_p99_ms": float(np.percentile(records.lag, 99) * 1e3) if ok.size else None,
        "rss_before_mb": before,
        "rss_during_peak_mb": max(samples, default=before),
        "rss_after_mb": after,
        "recovery_s": _recovery_s(windows, capacity),
        "probe_errors": int(np.count_nonzero(probe.codes != 0)),
        "probe_windows": windows,
    }


# -- faults ----------------------------------------------------------------------------


def _fault_row(server: Any, work: Path, model: str, other: str, fault: str, seconds: float) -> dict:
    address = server.address
    with grpc.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        config = stub.ModelConfig(pb.ModelConfigRequest(name=model), timeout=30)
        served = stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=30).versions[-1]
    targets = {other: (suite.valid_request(other), 2), model: (suite.valid_request(model), 2)}
    seen_s = recovered_s = None
    with suite.Load(address, targets, threads=2) as load:
        load.wait_for_more(5)
        damaged_at = time.monotonic()
        restore = suite.FAULTS[fault](work / model, np.random.default_rng(0))
        with contextlib.suppress(AssertionError):  # never seen: recorded as None
            suite.wait_until(
                lambda: suite.fault_seen(address, model, fault, served, config.SerializeToString())
            )
            seen_s = time.monotonic() - damaged_at
        time.sleep(seconds)  # the measured window: under load with the fault in place
        states = {f"{m} {v}": s for (m, v), s in suite.index_states(address).items() if m == model}
        restored_at = time.monotonic()
        restore()
        with contextlib.suppress(AssertionError):
            suite.wait_until(
                lambda: not suite.exact_problems(address, work / model, version=int(served))
            )
            recovered_s = time.monotonic() - restored_at
    other_codes = load.codes(other)
    damaged = load.codes(model, since=damaged_at)
    others = load.versions(model, since=damaged_at)
    return {
        "fault": fault,
        "seen_s": seen_s,
        "other_requests": sum(other_codes.values()),
        "other_failed": sum(n for c, n in other_codes.items() if c != suite.OK),
        "other_codes": dict(other_codes),
        "damaged_requests": sum(damaged.values()),
        "damaged_failed": sum(n for c, n in damaged.items() if c != suite.OK),
        "damaged_codes": dict(damaged),
        "answered_by_another_version": sum(n for v, n in others.items() if v != served),
        "index": states,
        "recovered_s": recovered_s,
    }


def faults_part(repository: Path, model: str, other: str, sizes: Sizes, logs: Path) -> list[dict]:
    rows = []
    for n, fault in enumerate(suite.FAULTS):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for name in (model, other):
                shutil.copytree(repository / name, work / name)
            with running(work, "--poll-interval", "0.2", logs=logs, name=f"fault-{n}") as server:
                rows.append(_fault_row(server, work, model, other, fault, sizes.fault_s))
        log.info("fault %r: %s", fault, rows[-1])
    return rows


# -- sigterm ---------------------------------------------------------------------------


def _wait_for_exit(server: Any, signalled: float, limit_s: float) -> tuple[int | None, float]:
    try:
        status = server.process.wait(max(signalled + limit_s - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        status = None  # hung: killed when `running` stops it
    return status, time.monotonic() - signalled


def _open_stream(channel: grpc.Channel, message: bytes) -> tuple[queue.Queue, Any]:
    """A stream that has had one request answered and stays open: its client never ends it."""
    requests: queue.Queue = queue.Queue()
    replies = channel.stream_stream(suite.MODEL_STREAM_INFER)(iter(requests.get, None), timeout=600)
    requests.put(message)
    next(replies)
    return requests, replies


def _under_load(
    repository: Path, model: str, args: argparse.Namespace, sizes: Sizes, logs: Path
) -> dict:
    with running(repository, "--grace", str(args.grace), logs=logs, name="sigterm") as server:
        channel = grpc.insecure_channel(server.address)
        health = health_pb2_grpc.HealthStub(channel)
        watches = [
            health.Watch(health_pb2.HealthCheckRequest(service=s), timeout=600) for s in ("", model)
        ]
        for watch in watches:
            next(watch)
        streams = [_open_stream(channel, suite.valid_request(model, 1, n)) for n in range(2)]
        targets = {model: (suite.valid_request(model, args.batch), args.batch)}
        with suite.Load(server.address, targets, threads=4) as load:
            time.sleep(sizes.sigterm_load_s)  # under load for a while before the signal
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
        status, took = _wait_for_exit(server, signalled, args.grace + 30)
        channel.close()
        del streams, watches
    replies = load.replies[model]
    in_flight = [r for r in replies if r.start < signalled <= r.end]
    after = [r for r in replies if r.start >= signalled]
    return {
        "case": "under load, 2 open streams, 2 health watches",
        "grace_s": args.grace,
        "in_flight_at_signal": len(in_flight),
        "failed_in_flight": sum(r.code != suite.OK for r in in_flight),
        "failed_in_flight_codes": dict(Counter(r.code for r in in_flight if r.code != suite.OK)),
        "sent_after_signal": len(after),
        "after_signal_codes": dict(Counter(r.code for r in after)),
        "exit_status": status,
        "exit_s": took,
    }


def _after_unparseable_streams(
    repository: Path, attempt: int, args: argparse.Namespace, logs: Path
) -> dict:
    flags = ("--grace", str(args.grace))
    with running(repository, *flags, logs=logs, name=f"race-{attempt}") as server:
        channel = grpc.insecure_channel(server.address)
        call = channel.stream_stream(suite.MODEL_STREAM_INFER)
        streams = [call(iter([b"\xff\xff\xff"]), timeout=60) for _ in range(3)]
        if attempt % 2:  # every other attempt lets the streams end first
            for stream in streams:
                with contextlib.suppress(grpc.RpcError):
                    list(stream)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        status, took = _wait_for_exit(server, signalled, args.grace + 30)
        channel.close()
    return {
        "case": f"3 streams of unparseable bytes, {'ended' if attempt % 2 else 'racing'}",
        "grace_s": args.grace,
        "exit_status": status,
        "exit_s": took,
    }


def sigterm_part(
    repository: Path, model: str, args: argparse.Namespace, sizes: Sizes, logs: Path
) -> list[dict]:
    rows = [_under_load(repository, model, args, sizes, logs)]
    rows += [
        _after_unparseable_streams(repository, n, args, logs) for n in range(sizes.race_repeats)
    ]
    return rows


# -- reporting -------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


def tables(results: dict) -> str:
    lines = []
    if fuzz := results.get("fuzz"):
        lines += [
            f"Fuzz ({fuzz['model']}): RSS {fuzz['rss_before_mb']:.0f} -> "
            f"{fuzz['rss_after_mb']:.0f} MB; exact afterwards: {fuzz['exact_after']}",
            "",
            "| sent as | messages | codes | INTERNAL/UNKNOWN | hangs | off contract |",
            "|---|---|---|---|---|---|",
        ]
        for part in ("unary", "stream"):
            f = fuzz[part]
            codes = ", ".join(f"{c} {n:,}" for c, n in f["by_code"].items())
            lines.append(
                f"| {part} | {f['messages']:,} | {codes} | {f['internal_or_unknown']} "
                f"| {f['hangs']} | {f['off_contract']} |"
            )
        lines.append("")
    if over := results.get("overload"):
        lat = over["admitted_latency_ms"]
        lines += [
            f"Overload ({over['model']}, batch {over['batch']}): capacity "
            f"{over['capacity_rps']:.1f} req/s (closed loop, {over['concurrency']} in flight), "
            f"offered {over['offered_rps']:.1f} req/s for {over['seconds']:.0f} s",
            "",
            "| sent | admitted req/s | shed | other errors | admitted p50 ms | p99 ms "
            "| RSS before / peak / after MB | full throughput again after s |",
            "|---|---|---|---|---|---|---|---|",
            f"| {over['sent']:,} | {over['admitted_rps']:.1f} | {over['shed']:,} "
            f"| {over['other_errors']} | {_ms(lat['p50_ms'])} | {_ms(lat['p99_ms'])} "
            f"| {over['rss_before_mb']:.0f} / {over['rss_during_peak_mb']:.0f} / "
            f"{over['rss_after_mb']:.0f} | {_s(over['recovery_s'])} |",
            "",
        ]
    if faults := results.get("faults"):
        lines += [
            "| fault | seen after s | other model failed | damaged model failed "
            "| answered by another version | served exactly again after s |",
            "|---|---|---|---|---|---|",
        ]
        for row in faults:
            damaged = ", ".join(f"{c} {n}" for c, n in row["damaged_codes"].items())
            lines.append(
                f"| {row['fault']} | {_s(row['seen_s'])} "
                f"| {row['other_failed']} of {row['other_requests']:,} "
                f"| {row['damaged_failed']} of {row['damaged_requests']:,} ({damaged}) "
                f"| {row['answered_by_another_version']} | {_s(row['recovered_s'])} |"
            )
        lines.append("")
    if sigterm := results.get("sigterm"):
        lines += [
            "| SIGTERM | in flight | failed in flight | exit status | seconds to exit (grace) |",
            "|---|---|---|---|---|",
        ]
        for row in sigterm:
            lines.append(
                f"| {row['case']} | {row.get('in_flight_at_signal', '-')} "
                f"| {row.get('failed_in_flight', '-')} | {row['exit_status']} "
                f"| {row['exit_s']:.2f} ({row['grace_s']:g}) |"
            )
        lines.append("")
    meta = results["machine"]
    lines.append(
        f"{meta['cpus']} CPUs; load average before {meta['loadavg_before']}, after "
        f"{meta['loadavg_after']}; commit {meta['commit']}{' (quick)' if results['quick'] else ''}."
    )
    return "\n".join(lines)


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


PARTS = ("fuzz", "overload", "faults", "sigterm")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--model", default="bn_cnn", help="the model every part aims at")
    parser.add_argument("--other", default="bn_mlp", help="the undamaged model in the faults")
    parser.add_argument("--batch", type=int, default=32, help="images per overload request")
    parser.add_argument("--concurrency", type=int, default=8, help="closed loop's in flight")
    parser.add_argument("--factor", type=float, default=3.0, help="overload: x capacity")
    parser.add_argument("--grace", type=float, default=10.0, help="the server's --grace")
    parser.add_argument("--parts", type=lambda s: s.split(","), default=list(PARTS))
    parser.add_argument("--quick", action="store_true", help="smoke-sized: proves it runs")
    parser.add_argument("--output", type=Path, help="default bench/results/reliability.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"--parts: unknown {sorted(unknown)}; expected some of {PARTS}")
    sizes = QUICK if args.quick else FULL
    output = args.output or (
        Path(tempfile.gettempdir()) / "reliability-quick.json"
        if args.quick
        else RESULTS / "reliability.json"
    )
    results: dict[str, Any] = {
        "quick": args.quick,
        "sizes": asdict(sizes),
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "grpc": grpc.__version__,
            "commit": _commit(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "loadavg_before": _loadavg(),
        },
    }
    with tempfile.TemporaryDirectory() as logs_dir:
        logs = Path(logs_dir)
        if "fuzz" in args.parts:
            results["fuzz"] = fuzz_part(args.repository, args.model, sizes, logs)
        if "overload" in args.parts:
            results["overload"] = overload_part(args.repository, args.model, args, sizes, logs)
        if "faults" in args.parts:
            results["faults"] = faults_part(args.repository, args.model, args.other, sizes, logs)
        if "sigterm" in args.parts:
            results["sigterm"] = sigterm_part(args.repository, args.model, args, sizes, logs)
    results["machine"]["loadavg_after"] = _loadavg()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    markdown = tables(results)
    output.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)
    print(f"\nwritten: {output} and {output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
