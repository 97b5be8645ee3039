"""Load generators: processes that send prebuilt requests in a closed or an open loop.

Closed loop: `concurrency` requests always in flight; each worker sends its next request
as soon as its last reply arrives. Open loop: requests are due at a fixed rate, evenly
spaced or as a Poisson process, and are sent when due whether or not earlier ones have
been answered. Each process runs one asyncio loop over one grpc.aio client; the parent
starts them together, collects their per-request records (client.stats) and relays
their progress.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import selectors
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from client.aio import AsyncZooClient
from client.channel import Connection
from client.errors import InferenceServerException
from client.stats import OK, Records

PROGRESS_INTERVAL_S = 0.5
# How far ahead of "now" the common start is set, so every process sees it in the future.
START_MARGIN_S = 0.2
# Spawned processes import grpc and numpy before they are ready: allow them this long.
READY_TIMEOUT_S = 60.0
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
# Open-loop timers are set this far ahead of each due time: waking takes ~0.15 ms here even
# with select (client.loadgen.precise_event_loop), and a request sent early counts from its
# send, so being early costs nothing while being late would count as latency.
TIMER_LEAD_S = 0.0002

Progress = Callable[[float, int, int], None]  # (seconds since start, successes, errors)


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
    """Per-request start, completion and status, in seconds from the run's common start."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.start_times: list[float] = []
        self.done: list[float] = []
        self.codes: list[int] = []
        self.errors = 0

    def now(self) -> float:
        return time.monotonic() - self.start

    def add(self, start: float, code: int) -> None:
        self.start_times.append(start)
        self.done.append(self.now())
        self.codes.append(code)
        self.errors += code != OK

    def records(self) -> Records:
        return Records(
            np.array(self.start_times), np.array(self.done), np.array(self.codes, dtype=np.int32)
        )


Send = Callable[[int, float], Awaitable[None]]


async def closed_loop(
    send: Send, concurrency: int, end_s: float, clock: Callable[[], float]
) -> None:
    async def worker(first: int) -> None:
        n = first
        while (now := clock()) < end_s:
            await send(n, now)
            n += concurrency

    await asyncio.gather(*(worker(i) for i in range(concurrency)))


async def open_loop(send: Send, times: Iterator[float], clock: Callable[[], float]) -> None:
    pending: set[asyncio.Task[None]] = set()
    for n, due in enumerate(times):
        delay = due - TIMER_LEAD_S - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send(n, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)


async def _report(recorder: Recorder, index: int, messages: Any) -> None:
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL_S)
        ok = len(recorder.codes) - recorder.errors
        messages.put(("progress", index, (ok, recorder.errors)))


def make_sender(calls: list[Any], job: GeneratorJob, recorder: Recorder) -> Send:
    """send(n, due): request n on address n (both round-robin), recorded from min(due, now)."""
    metadata, timeout = job.connection.metadata, job.connection.timeout_s

    async def send(n: int, due: float) -> None:
        start = min(due, recorder.now())
        try:
            await calls[n % len(calls)](
                job.requests[n % len(job.requests)], timeout=timeout, metadata=metadata
            )
            code = OK
        except grpc.RpcError as error:
            code = error.code().value[0]
        recorder.add(start, code)

    return send


async def _generate(job: GeneratorJob, messages: Any, go: Any, start_at: Any) -> Records:
    async with AsyncZooClient(connection=job.connection) as client:
        await client.is_server_live()  # connect now: the first measured request must not pay
        # Requests go out pre-serialized and replies stay bytes (their status says enough): on
        # a machine shared with the server, the generator's CPU per request is taken from the
        # server, and protobuf work was about a fifth of it.
        calls = [
            channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
            for channel in client.channels
        ]
        messages.put(("ready", job.index, None))
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        recorder = Recorder(time.monotonic() + (start_at.value - time.time()))
        send = make_sender(calls, job, recorder)
        reporter = asyncio.create_task(_report(recorder, job.index, messages))
        await asyncio.sleep(max(0.0, -recorder.now()))
        if job.concurrency:
            await closed_loop(send, job.concurrency, job.end_s, recorder.now)
        else:
            await open_loop(send, arrival_times(job), recorder.now)
        reporter.cancel()
    return recorder.records()


def precise_event_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose timers wake within microseconds, not a millisecond late.

    The default epoll selector rounds every wait up to whole milliseconds; in an open loop
    that lateness would count as latency (measured here: median 0.9 ms late with epoll,
    0.15 ms with select). select() handles few descriptors, and a generator has few.
    """
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


def generator_main(job: GeneratorJob, messages: Any, go: Any, start_at: Any) -> None:
    """A generator process: report ready, wait for the common start, run, send the records."""
    # Ctrl-C goes to the whole process group: the parent decides, and stops its children.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        loop = precise_event_loop()
        try:
            records = loop.run_until_complete(_generate(job, messages, go, start_at))
        finally:
            loop.close()
        messages.put(("done", job.index, records))
    except InferenceServerException as error:
        messages.put(
            ("server_error", job.index, (error.status_code.name, error.message, error.target))
        )
    except Exception as error:  # reported to the parent, which raises it there
        messages.put(("failed", job.index, f"{type(error).__name__}: {error}"))


def run_generators(jobs: list[GeneratorJob], progress: Progress | None = None) -> Records:
    """Start one process per job, start them together, and merge their records."""
    ctx = mp.get_context("spawn")  # fork would copy grpc's threads and state: unsafe
    messages, go, start_at = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    processes = [
        ctx.Process(target=generator_main, args=(job, messages, go, start_at), daemon=True)
        for job in jobs
    ]
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
