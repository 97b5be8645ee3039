"""`zoo serve --processes N`: N server processes on the one gRPC port, and a supervisor.

Each worker is a whole server (server.app) started with the spawn method, binding the
port with SO_REUSEPORT so that the kernel spreads connections over the workers; what
they share with each other is in server.workers. The supervisor:

- reserves the ports first (gRPC, and HTTP unless it is off: bound sockets that never
  listen, so they take no connections), which turns port 0 into one port that every
  worker then binds;
- serves /metrics for all workers on the one metrics port: prometheus_client's
  multiprocess mode (every worker writes its values to files in a shared folder,
  summed at each scrape), Triton's counters from every worker's ModelStatistics
  (summed), and each worker's resident memory and restarts;
- restarts a worker that dies, with a back-off that doubles while restarts keep
  failing (a worker that ran a minute is a success), and logs each;
- on SIGTERM or SIGINT stops every worker (each drains as `zoo serve` does) and exits 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path

import grpc

from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from server.app import STOP_MARGIN_S, serve, serve_metrics
from server.metrics import TritonCounters
from server.settings import ServeSettings
from server.workers import SOCKETS, Peers, WorkerRole, merge_statistics
from zoo.errors import FailedPreconditionError, ZooError

log = logging.getLogger(__name__)

METRICS_DIR = "metrics"
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0  # a worker that lived this long resets the back-off
START_TIMEOUT_S = 600.0  # loading a large repository takes a while


def _worker_main(settings: ServeSettings, role: WorkerRole) -> None:
    """A worker process: `zoo serve` on the shared port, with its role."""
    from server.cli import configure_logging

    configure_logging(settings.log_format, settings.log_level, worker=role.index)
    try:
        code = serve(settings, role=role)
    except ZooError as error:
        print(f"zoo serve: worker {role.index}: error: {error}", file=sys.stderr, flush=True)
        code = error.exit_code
    sys.exit(code)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT, never listening: the port stays
    ours for the workers (port 0 becomes a fixed free one) and takes no connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as error:
        sock.close()
        raise FailedPreconditionError(
            f"cannot listen on {host}:{port} ({error.strerror})"
        ) from None
    return sock


def resident_bytes(pid: int) -> int | None:
    """The resident memory of process `pid` (Linux /proc), or None where unknown."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Worker:
    role: WorkerRole
    process: BaseProcess
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0
    failures_in_a_row: int = 0


class Supervisor:
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.count = settings.processes
        self.runtime = Path(tempfile.mkdtemp(prefix="zoo-serve-"))  # 0700
        (self.runtime / SOCKETS).mkdir()
        (self.runtime / METRICS_DIR).mkdir()
        # Read by prometheus_client when a worker imports it (the spawned workers inherit
        # the environment): their values go to files here.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.runtime / METRICS_DIR)
        self._reserved = [reserve_port(settings.host, settings.port)]
        self.port = self._reserved[0].getsockname()[1]
        self.http_port: int | None = None
        if settings.http_port >= 0:
            self._reserved.append(reserve_port(settings.host, settings.http_port))
            self.http_port = self._reserved[-1].getsockname()[1]
        self._worker_settings = settings.model_copy(
            update={
                "port": self.port,
                "http_port": -1 if self.http_port is None else self.http_port,
                "metrics_port": -1,
                "processes": 1,
            }
        )
        self._spawn = multiprocessing.get_context("spawn")
        self.workers: list[Worker] = []
        self.stopping = threading.Event()
        self.metrics_port: int | None = None

    # --- workers ------------------------------------------------------------------

    def _start_process(self, role: WorkerRole) -> BaseProcess:
        role.socket.unlink(missing_ok=True)  # a dead worker's socket
        process = self._spawn.Process(
            target=_worker_main,
            args=(self._worker_settings, role),
            name=f"zoo-serve-worker-{role.index}",
        )
        process.start()
        return process

    def _wait_ready(self, worker: Worker) -> bool:
        """Until the worker answers ServerReady on its socket (True) or exits (False)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        with grpc.insecure_channel(worker.role.address) as channel:
            stub = GRPCInferenceServiceStub(channel)
            while time.monotonic() < deadline and not self.stopping.is_set():
                if not worker.process.is_alive():
                    return False
                try:
                    if stub.ServerReady(pb.ServerReadyRequest(), timeout=1.0).ready:
                        return True
                except grpc.RpcError:
                    # Not listening yet: its socket appears when it starts serving.
                    worker.process.join(0.1)
        return False

    def start(self) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.runtime / METRICS_DIR))
        registry.register(WorkerCollector(self))
        token = self.settings.auth_token
        workers = Peers.all_workers(self.runtime, token.get_secret_value() if token else None)
        everything = pb.ModelStatisticsRequest()
        registry.register(TritonCounters(lambda: merge_statistics(workers.statistics(everything))))
        self._metrics = serve_metrics(self.settings, registry)
        self.metrics_port = self._metrics.server_port if self._metrics is not None else None
        log.info("workers share %s", self.runtime)
        for index in range(self.count):
            role = WorkerRole(index, self.runtime)
            self.workers.append(Worker(role, self._start_process(role)))
        for worker in self.workers:
            if not self._wait_ready(worker):
                if self.stopping.is_set():  # asked to stop while starting
                    return
                self.stop()
                raise FailedPreconditionError(
                    f"worker {worker.role.index} did not start (exit status "
                    f"{worker.process.exitcode}); its error is above"
                )
        log.info(
            "%d workers ready on port %d: %s",
            self.count,
            self.port,
            ", ".join(
                f"pid {w.process.pid} {_mib(resident_bytes(w.process.pid or 0))}"
                for w in self.workers
            ),
        )

    def watch(self) -> None:
        """Restart workers that die, until stop() is asked for."""
        while not self.stopping.is_set():
            sentinels = {w.process.sentinel: w for w in self.workers}
            ready = multiprocessing.connection.wait(list(sentinels), timeout=1.0)
            for sentinel in ready:
                if self.stopping.is_set():
                    return
                self._restart(sentinels[sentinel])  # type: ignore[index]

    def _restart(self, worker: Worker) -> None:
        # The sentinel closes as the process dies, a moment before it can be reaped:
        # join it, for its exit status.
        worker.process.join(5.0)
        lived = time.monotonic() - worker.started
        worker.failures_in_a_row = 0 if lived >= HEALTHY_AFTER_S else worker.failures_in_a_row + 1
        delay = min(FIRST_BACKOFF_S * 2 ** max(worker.failures_in_a_row - 1, 0), MAX_BACKOFF_S)
        log.warning(
            "worker %d (pid %s) exited with status %s after %.1f s; restarting in %.1f s",
            worker.role.index,
            worker.process.pid,
            worker.process.exitcode,
            lived,
            delay,
        )
        if self.stopping.wait(delay):
            return
        worker.process = self._start_process(worker.role)
        worker.started = time.monotonic()
        worker.restarts += 1
        if self._wait_ready(worker):
            log.info("worker %d restarted (pid %s)", worker.role.index, worker.process.pid)

    def stop(self) -> None:
        """SIGTERM to every worker (each drains within --grace), then wait for them."""
        from prometheus_client import multiprocess

        self.stopping.set()
        for worker in self.workers:
            if worker.process.is_alive():
                os.kill(worker.process.pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace + STOP_MARGIN_S + 5.0
        for worker in self.workers:
            worker.process.join(max(deadline - time.monotonic(), 0))
            if worker.process.is_alive():
                log.warning("worker %d did not stop; killing it", worker.role.index)
                worker.process.kill()
                worker.process.join()
            multiprocess.mark_process_dead(worker.process.pid, str(self.runtime / METRICS_DIR))
        if self._metrics is not None:
            self._metrics.shutdown()
        for reserved in self._reserved:
            reserved.close()
        shutil.rmtree(self.runtime, ignore_errors=True)


class WorkerCollector:
    """Each worker's resident memory and restarts, read at scrape time."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        memory = GaugeMetricFamily(
            "zoo_worker_resident_memory_bytes",
            "Resident memory of each server process",
            labels=["worker"],
        )
        restarts = CounterMetricFamily(
            "zoo_worker_restarts", "Times each server process was restarted", labels=["worker"]
        )
        for worker in self._supervisor.workers:
            rss = resident_bytes(worker.process.pid or 0) if worker.process.is_alive() else None
            if rss is not None:
                memory.add_metric([str(worker.role.index)], rss)
            restarts.add_metric([str(worker.role.index)], worker.restarts)
        yield memory
        yield restarts


def _mib(value: int | None) -> str:
    return "RSS unknown" if value is None else f"RSS {value / 2**20:.0f} MiB"


def supervise(settings: ServeSettings, on_ready: Callable[[Supervisor], None]) -> int:
    """Run the workers until SIGTERM or SIGINT, then stop them; the exit status is 0."""
    supervisor = Supervisor(settings)

    def request_stop(signum: int, frame: object) -> None:
        log.info("%s: stopping %d workers", signal.Signals(signum).name, supervisor.count)
        supervisor.stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    supervisor.start()
    total = sum(resident_bytes(w.process.pid or 0) or 0 for w in supervisor.workers)
    log.info("workers' resident memory in total: %s", _mib(total))
    on_ready(supervisor)
    supervisor.watch()
    supervisor.stop()
    log.info("stopped")
    return 0
