"""`zoo load` against real server processes: short, bounded runs on 127.0.0.1 only."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client import ZooClient
from zoo.repository import read_model_config, write_model_config

ROOT = Path(__file__).resolve().parents[2]
PERCENTILE_KEYS = ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")


def zoo_load(
    address: str, model: str, tmp_path: Path, flags: str
) -> tuple[subprocess.CompletedProcess, dict]:
    """Run `zoo load` with the flags (split on spaces) and return its process and JSON report."""
    out = tmp_path / "run.json"
    command = [sys.executable, "-m", "zoo.cli", "load", "--url", address, "--model", model]
    command += ["--output", str(out), *flags.split()]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return result, json.loads(out.read_text())


@pytest.fixture(scope="module")
def model(zoo_server) -> str:
    with ZooClient(zoo_server.address) as client:
        return client.list_models()[0].name


def test_two_second_closed_loop(zoo_server, model, tmp_path) -> None:
    result, report = zoo_load(
        zoo_server.address,
        model,
        tmp_path,
        "--concurrency 4 --duration 2 --warmup 0.5 --processes 2",
    )
    (run,) = report["runs"]
    assert run["throughput_rps"] > 0 and run["images_per_s"] == run["throughput_rps"]
    assert run["error_count"] == 0 and run["errors"] == {}
    latencies = [run[k] for k in PERCENTILE_KEYS]
    assert latencies == sorted(latencies) and latencies[0] > 0
    assert run["requests"] == run["successes"] > 0
    assert "req/s" in result.stdout and "c=4" in result.stdout  # the table
    assert "req/s" in result.stderr  # live progress


def test_poisson_open_loop_keeps_its_rate(zoo_server, model, tmp_path) -> None:
    _, report = zoo_load(
        zoo_server.address,
        model,
        tmp_path,
        "--rate 100 --poisson --duration 2 --warmup 0.5 --batch 4 --input zeros --no-progress",
    )
    (run,) = report["runs"]
    assert run["mode"] == "poisson" and run["error_count"] == 0
    assert 60 <= run["throughput_rps"] <= 140  # Poisson: ~200 arrivals in 2 s, sd ~14
    assert run["images_per_s"] == pytest.approx(4 * run["throughput_rps"])
    assert 0.0 <= run["send_lag_p99_ms"] <= run["send_lag_max_ms"]
    assert run["send_lag_p99_ms"] < 20.0  # 100 requests/s do not leave the generator behind


def test_sweep_writes_runs_and_a_plot(zoo_server, model, tmp_path) -> None:
    plot = tmp_path / "sweep.png"
    _, report = zoo_load(
        zoo_server.address,
        model,
        tmp_path,
        f"--sweep 1,4 --duration 0.5 --warmup 0.2 --plot {plot} --no-progress",
    )
    assert [run["concurrency"] for run in report["runs"]] == [1, 4]
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_overload_counts_resource_exhausted(start_zoo_server, tiny_repository, tmp_path) -> None:
    # One queued request at most, and a long batching delay so that requests do queue
    # (on more inference threads than the model's two session calls take).
    repository = tmp_path / "repository"
    shutil.copytree(tiny_repository / "tiny_mlp", repository / "tiny_mlp")
    config = read_model_config(repository / "tiny_mlp")
    config.dynamic_batching.default_queue_policy.max_queue_size = 1
    config.dynamic_batching.max_queue_delay_microseconds = 50_000
    write_model_config(repository / "tiny_mlp", config)
    server = start_zoo_server(repository, "--infer-threads", "8")
    _, report = zoo_load(
        server.address,
        "tiny_mlp",
        tmp_path,
        "--concurrency 8 --duration 1.5 --warmup 0.2 --processes 1 --no-progress",
    )
    (run,) = report["runs"]
    assert run["errors"].get("RESOURCE_EXHAUSTED", 0) > 0
    assert set(run["errors"]) == {"RESOURCE_EXHAUSTED"} and run["successes"] > 0


def test_load_usage_and_server_errors_are_one_line(tmp_path) -> None:
    command = [sys.executable, "-m", "zoo.cli", "load", "--model", "m"]
    both = subprocess.run(
        [*command, "--concurrency", "2", "--rate", "5"], capture_output=True, text=True
    )
    assert (
        both.returncode == 2 and both.stderr.strip().count("\n") == 0 and "not both" in both.stderr
    )
    down = subprocess.run(
        [*command, "--url", "127.0.0.1:1", "--timeout", "2"], capture_output=True, text=True
    )
    assert down.returncode == 3 and "UNAVAILABLE" in down.stderr and "Traceback" not in down.stderr


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.mark.slow
def test_soak_a_minute_of_load_without_errors_or_growth(
    start_zoo_server, served_repository: Path, model: str, tmp_path: Path
) -> None:
    """A minute at 16 in flight, batch 4: no error, and the server's memory stays put."""
    server = start_zoo_server(served_repository)
    steady = "--concurrency 16 --batch 4 --duration"
    zoo_load(server.address, model, tmp_path, f"{steady} 5")  # warm-up: arenas and caches fill
    settled = _rss_mb(server.process.pid)
    _, report = zoo_load(server.address, model, tmp_path, f"{steady} 60")
    (run,) = report["runs"]
    assert run["error_count"] == 0 and run["successes"] > 1000
    assert _rss_mb(server.process.pid) - settled < 50, "server memory grew under steady load"
    with ZooClient(server.address) as client:
        assert client.is_server_ready()


def _served(address: str, model: str) -> int:
    with ZooClient(address) as client:
        stats = client.get_inference_statistics(model).model_stats
    return sum(s.inference_stats.success.count for s in stats)


def test_a_replica_killed_mid_run_costs_no_request(start_zoo_server, tiny_repository, tmp_path):
    """Three servers behind one `zoo load --retry`: one is killed while the load runs.
    grpc's health checking stops sending to it and its retry policy resends what it had
    in flight, so no request fails; the other two go on serving, and the report counts
    each address's requests (the killed one's: unknown)."""
    servers = [start_zoo_server(tiny_repository) for _ in range(3)]
    victim = servers[1]
    out = tmp_path / "run.json"
    command = [sys.executable, "-m", "zoo.cli", "load", "--model", "tiny_mlp", "--retry"]
    command += ["--url", ",".join(s.address for s in servers), "--concurrency", "8"]
    command += ["--duration", "6", "--warmup", "0", "--output", str(out), "--no-progress"]
    load = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Kill it once it has served a share of the load, so that it has calls in flight.
        deadline = time.monotonic() + 120
        while _served(victim.address, "tiny_mlp") < 200:
            assert load.poll() is None and time.monotonic() < deadline, "the load never reached it"
        victim.process.send_signal(signal.SIGKILL)
        at_kill = [_served(s.address, "tiny_mlp") for s in (servers[0], servers[2])]
        stdout, stderr = load.communicate(timeout=180)
    finally:
        if load.poll() is None:
            load.kill()
    assert load.returncode == 0, stderr
    (run,) = json.loads(out.read_text())["runs"]
    assert run["errors"] == {}
    by_endpoint = run["requests_by_endpoint"]
    assert list(by_endpoint) == [s.address for s in servers]
    assert by_endpoint[victim.address] is None
    after = [_served(s.address, "tiny_mlp") for s in (servers[0], servers[2])]
    assert all(a > k for a, k in zip(after, at_kill, strict=True))  # served on after the kill
    assert "requests by address" in stdout.decode() and "unknown" in stdout.decode()
