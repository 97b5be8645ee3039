"""Per model-version statistics, as Triton's ModelStatistics reports them.

Request-level durations are summed per request (a request in a batch of 8 adds the
whole batch's compute time), execution-level ones per session call, as in Triton,
so that perf_analyzer's server-side averages mean the same thing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


class BatchTiming(NamedTuple):
    """The three phases of one session call, in nanoseconds (a tuple: made per call)."""

    compute_input: int
    compute_infer: int
    compute_output: int


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_execution(self, batch_size: int, timing: BatchTiming) -> None:
        with self.lock:
            self.execution_count += 1
            stats = self.batches.setdefault(batch_size, BatchStats())
            stats.compute_input.add(timing.compute_input)
            stats.compute_infer.add(timing.compute_infer)
            stats.compute_output.add(timing.compute_output)

    def record_success(
        self, batch_size: int, total_ns: int, queue_ns: int, timing: BatchTiming
    ) -> None:
        with self.lock:
            self.inference_count += batch_size
            self.last_inference_ms = time.time_ns() // 1_000_000
            self.success.add(total_ns)
            self.queue.add(queue_ns)
            self.compute_input.add(timing.compute_input)
            self.compute_infer.add(timing.compute_infer)
            self.compute_output.add(timing.compute_output)

    def record_failure(self, total_ns: int) -> None:
        with self.lock:
            self.last_inference_ms = time.time_ns() // 1_000_000
            self.fail.add(total_ns)
