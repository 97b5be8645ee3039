"""Load generators: processes whose threads send prebuilt requests in a closed or an open loop.

Closed loop: `concurrency` threads, each sending its next request as soon as its last reply
arrives. Open loop: requests are due at a fixed rate, evenly spaced or as a Poisson process,
and are sent when due whether or not earlier ones have been answered. The parent starts the
processes together, collects their per-request records (client.stats) and relays their
progress.

Every request is a blocking gRPC call on its own thread, as perf_analyzer sends in its
default (synchronous) mode: the thread that waits for a reply is the one woken by it, with
nothing handed between threads on the way. At one request in flight against bn_cnn on the
2-core machine this measured a median of 0.87 ms against grpc.aio's 0.97-1.05 ms and
perf_analyzer's 0.85-0.87 ms.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from client.channel import Connection
from client.errors import InferenceServerException
from client.stats import OK, Records
from client.sync import ZooClient

PROGRESS_INTERVAL_S = 0.5
# How far ahead of "now" the common start is set, so every process sees it in the future.
START_MARGIN_S = 0.2
# Spawned processes import grpc and numpy before they are ready: allow them this long.
READY_TIMEOUT_S = 60.0
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
# Open-loop senders wake this far ahead of each due time: time.sleep overshoots by ~75 µs
# on an idle machine and more on a busy one (with 0.1 ms, 1% of sends at 1,000 req/s were
# over 0.24 ms late), and a request sent early counts from its send, so being early costs
# nothing while being late would count as latency.
TIMER_LEAD_S = 0.0003
# An open loop starts a thread whenever every other is busy in a call, so that a slow reply
# never holds up a later request; beyond this many per process, sends wait for a free
# thread, and since latency counts from the due time, the wait shows as latency.
MAX_OPEN_LOOP_THREADS = 512
# grpc's EventEngine client (the default in grpcio 1.85) reads replies on poller threads of
# its own and wakes the caller: measured here, 4 context switches per call instead of 1 and
# +0.1 ms per request at one in flight. The generator processes use the classic client path.
GRPC_EXPERIMENTS = "-event_engine_client"

Progress = Callable[[float, int, int], None]  # (seconds since start, successes, errors)
Send = Callable[[int, float], None]  # send(request number, due time)
Clock = Callable[[], float]


@dataclass(frozen=True)
class GeneratorJob:
    """One process's share of a run. `concurrency` > 0 means closed loop, else open loop."""

    index: int
    connection: Connection
    requests: tuple[bytes, ...]  # serialized ModelInferRequest messages, sent in turn
    end_s: float  # warmup + duration: nothing is sent after it
    concurrency: int = 0
    rate: float = 0.0
    offset_s: float = 0.0  # first send time: interleaves evenly spaced processes
    poisson: bool = False
    seed: int = 0


def split_load(
    processes: int, concurrency: int | None, rate: float | None
) -> list[tuple[int, float, float]]:
    """(concurrency, rate, offset) for each process, together making the whole load.

    A closed loop gets no more processes than requests in flight: an idle one would be waste.
    """
    if concurrency is not None:
        processes = min(processes, concurrency)
        return [
            (concurrency // processes + (i < concurrency % processes), 0.0, 0.0)
            for i in range(processes)
        ]
    assert rate is not None
    # With P processes each sending every P/R seconds, offsets i/R make one even stream.
    return [(0, rate / processes, i / rate) for i in range(processes)]


def arrival_times(job: GeneratorJob) -> Iterator[float]:
    """When each request of an open loop is due, in seconds from the start."""
    rng = np.random.default_rng(job.seed + job.index)
    t = job.offset_s
    while t < job.end_s:
        yield t
        t += rng.exponential(1.0 / job.rate) if job.poisson else 1.0 / job.rate


class Recorder:
    """Per-request start, completion and status, in seconds from the run's common start.

    Sender threads append whole rows (one atomic list append each); only the progress
    reporter reads the running counts.
    """

    def __init__(self, start: float) -> None:
        self.start = start
        self.rows: list[tuple[float, float, int, float]] = []
        self._counted = 0
        self._errors = 0

    def now(self) -> float:
        return time.monotonic() - self.start

    def add(self, start: float, code: int, lag: float) -> None:
        self.rows.append((start, self.now(), code, lag))

    def counts(self) -> tuple[int, int]:
        """(successes, errors) so far."""
        new = self.rows[self._counted :]
        self._counted += len(new)
        self._errors += sum(code != OK for _, _, code, _ in new)
        return self._counted - self._errors, self._errors

    def records(self) -> Records:
        rows = np.array(self.rows, dtype=np.float64).reshape(-1, 4)
        return Records(rows[:, 0], rows[:, 1], rows[:, 2].astype(np.int32), rows[:, 3])


def sleep_until(t: float, clock: Clock) -> None:
    delay = t - clock()
    if delay > 0:
        time.sleep(delay)


def closed_loop(send: Send, concurrency: int, end_s: float, clock: Clock) -> None:
    def sender(first: int) -> None:
        n = first
        while (now := clock()) < end_s:
            send(n, now)
            n += concurrency

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def open_loop(
    send: Send, times: Iterator[float], clock: Clock, max_threads: int = MAX_OPEN_LOOP_THREADS
) -> None:
    """Send request n at the n-th of `times`, whether or not earlier replies are in.

    Threads take turns: the one holding the turn sleeps until the next due time, passes the
    turn on and sends, so the thread that woke for a request is the one that sends it. One
    that takes the turn while no other waits for it starts another, so that someone is free
    for the next due time even while every other thread waits for a reply.
    """
    due_times = enumerate(times)
    turn = threading.Lock()
    guard = threading.Lock()  # over `waiting` and `threads`
    waiting = 0
    threads: list[threading.Thread] = []

    def start_sender() -> None:
        thread = threading.Thread(target=sender)
        threads.append(thread)
        thread.start()

    def sender() -> None:
        nonlocal waiting
        while True:
            with guard:
                waiting += 1
            with turn:
                item = next(due_times, None)
                with guard:
                    waiting -= 1
                    if item is None:
                        return
                    if waiting == 0 and len(threads) < max_threads:
                        start_sender()
                n, due = item
                sleep_until(due - TIMER_LEAD_S, clock)
            send(n, due)

    start_sender()
    # Only a thread still running can start another, so once the last listed thread has
    # been joined, the list is complete (the iterator sees items appended meanwhile).
    for thread in threads:
        thread.join()


def make_sender(call: Any, job: GeneratorJob, recorder: Recorder) -> Send:
    """send(n, due): request n (round-robin over the requests), recorded from min(due, now)."""
    metadata, timeout = job.connection.metadata, job.connection.timeout_s

    def send(n: int, due: float) -> None:
        now = recorder.now()
        start, lag = min(due, now), max(0.0, now - due)
        try:
            call(job.requests[n % len(job.requests)], timeout=timeout, metadata=metadata)
            code = OK
        except grpc.RpcError as error:
            code = error.code().value[0]
        recorder.add(start, code, lag)

    return send


def _report(recorder: Recorder, index: int, messages: Any, stop: threading.Event) -> None:
    while not stop.wait(PROGRESS_INTERVAL_S):
        messages.put(("progress", index, recorder.counts()))


def _generate(job: GeneratorJob, messages: Any, go: Any, start_at: Any) -> Records:
    with ZooClient(connection=job.connection) as client:
        client.is_server_live()  # connect now: the first measured request must not pay
        # Requests go out pre-serialized and replies stay bytes (their status says enough): on
        # a machine shared with the server, the generator's CPU per request is taken from the
        # server, and protobuf work was about a fifth of it.
        call = client.channel.unary_unary(
            MODEL_INFER, request_serializer=None, response_deserializer=None
        )
        # Everything that lives through the run exists now: out of the collector's sight, a
        # full collection cannot stall every sender (it took 12-18 ms here, and set p99.9
        # at 1,000 req/s to 17-24 ms; 3.7-4.3 ms with this).
        gc.freeze()
        messages.put(("ready", job.index, None))
        go.wait()
        recorder = Recorder(time.monotonic() + (start_at.value - time.time()))
        send = make_sender(call, job, recorder)
        stop = threading.Event()
        reporter = threading.Thread(target=_report, args=(recorder, job.index, messages, stop))
        reporter.start()
        sleep_until(0.0, recorder.now)
        try:
            if job.concurrency:
                closed_loop(send, job.concurrency, job.end_s, recorder.now)
            else:
                open_loop(send, arrival_times(job), recorder.now)
        finally:
            stop.set()
            reporter.join()
    return recorder.records()


def generator_main(job: GeneratorJob, messages: Any, go: Any, start_at: Any) -> None:
    """A generator process: report ready, wait for the common start, run, send the records."""
    # Ctrl-C goes to the whole process group: the parent decides, and stops its children.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        messages.put(("done", job.index, _generate(job, messages, go, start_at)))
    except InferenceServerException as error:
        messages.put(
            ("server_error", job.index, (error.status_code.name, error.message, error.target))
        )
    except Exception as error:  # reported to the parent, which raises it there
        messages.put(("failed", job.index, f"{type(error).__name__}: {error}"))


@contextmanager
def _generator_environment() -> Iterator[None]:
    """GRPC_EXPERIMENTS for the processes started inside (they copy os.environ at start).

    grpc reads it once, when first imported, so the parent, which has its channels already,
    is not affected; a GRPC_EXPERIMENTS the user set is left as it is.
    """
    if "GRPC_EXPERIMENTS" in os.environ:
        yield
        return
    os.environ["GRPC_EXPERIMENTS"] = GRPC_EXPERIMENTS
    try:
        yield
    finally:
        del os.environ["GRPC_EXPERIMENTS"]


def run_generators(jobs: list[GeneratorJob], progress: Progress | None = None) -> Records:
    """Start one process per job, start them together, and merge their records."""
    ctx = mp.get_context("spawn")  # fork would copy grpc's threads and state: unsafe
    messages, go, start_at = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    processes = [
        ctx.Process(target=generator_main, args=(job, messages, go, start_at), daemon=True)
        for job in jobs
    ]
    with _generator_environment():
        for process in processes:
            process.start()
    try:
        _wait_for(messages, processes, "ready", READY_TIMEOUT_S)
        start_at.value = time.time() + START_MARGIN_S
        go.set()
        budget = START_MARGIN_S + jobs[0].end_s + jobs[0].connection.timeout_s + READY_TIMEOUT_S
        results = _wait_for(messages, processes, "done", budget, progress, start=start_at.value)
        return Records.merge([results[i] for i in sorted(results)])
    finally:
        for process in processes:
            process.join(timeout=2.0)
            if process.is_alive():
                process.terminate()


def _wait_for(
    messages: Any,
    processes: list[Any],
    kind: str,
    timeout_s: float,
    progress: Progress | None = None,
    start: float = 0.0,
) -> dict[int, Any]:
    """Read messages until every process has sent `kind`; relay progress; raise on failure."""
    got: dict[int, Any] = {}
    counts: dict[int, tuple[int, int]] = {}
    give_up = time.monotonic() + timeout_s
    while len(got) < len(processes):
        try:
            what, index, payload = messages.get(timeout=PROGRESS_INTERVAL_S)
        except queue.Empty:
            _check_alive(processes, got, give_up, kind)
            continue
        if what == kind:
            got[index] = payload
        elif what == "progress":
            counts[index] = payload
            if progress is not None:
                progress(
                    time.time() - start,
                    sum(c[0] for c in counts.values()),
                    sum(c[1] for c in counts.values()),
                )
        else:
            _raise_failure(what, index, payload)
    return got


def _check_alive(processes: list[Any], got: dict[int, Any], give_up: float, kind: str) -> None:
    for index, process in enumerate(processes):
        if index not in got and not process.is_alive():
            raise RuntimeError(
                f"load generator {index} exited ({process.exitcode}) before it was {kind}"
            )
    if time.monotonic() > give_up:
        raise RuntimeError(f"load generators not {kind} in time: {len(got)} of {len(processes)}")


def _raise_failure(what: str, index: int, payload: Any) -> None:
    if what == "server_error":
        code, message, target = payload
        raise InferenceServerException(grpc.StatusCode[code], message, target=target)
    raise RuntimeError(f"load generator {index} failed: {payload}")
