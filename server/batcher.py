"""Dynamic batching without a scheduler thread: the caller that finds the model idle runs.

A request that arrives while fewer than `instances` session calls run (Triton's
instance_group count) runs at once, on its own thread: no hand-off to a scheduler and
no waiting (at batch 1 the Python gRPC stack, ~0.4 ms a request, outweighs a ~0.05 ms
model). Requests that arrive while all instances are busy queue; when a call ends, its
runner hands the lead to the oldest queued request, whose thread takes as many queued
requests as fit in `max_batch_size`, waits up to `max_queue_delay` for a preferred batch
size, and runs them as one session call. So batches form exactly when the model is
busy, the only time they help.

Past `max_queue_size` queued requests a request gets RESOURCE_EXHAUSTED; one whose
deadline passes while queued is dropped, not computed; a cancelled one leaves the queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from server.stats import BatchTiming
from zoo.errors import (
    CancelledError,
    DeadlineExceededError,
    ModelExecutionError,
    ResourceExhaustedError,
    ZooError,
)

log = logging.getLogger(__name__)

NO_DEADLINE_S = 86_400.0
# run(feeds, only_call): only_call says no other call of the model is in progress, so
# that the call may take every core (server.model keeps a session for that).
RunFn = Callable[[dict[str, np.ndarray], bool], list[np.ndarray]]


class CallContext(Protocol):
    """What the batcher needs of an RPC (grpc.ServicerContext has it)."""

    def time_remaining(self) -> float | None: ...

    def add_callback(self, callback: Callable[[], None]) -> bool: ...


class BatchResult(NamedTuple):
    outputs: list[np.ndarray]
    queue_ns: int
    timing: BatchTiming
    batch_size: int


@dataclass(eq=False, slots=True)
class _Pending:
    inputs: dict[str, np.ndarray]
    size: int
    deadline: float | None  # time.monotonic()
    arrived_ns: int
    # Only a queued request waits, so only it gets a lock, taken while it is queued: its
    # one wake-up releases it. (A bare lock, not an Event: a wake-up is one futex call,
    # not a Condition's Python, and every queued request pays it under the GIL.)
    done: threading.Lock | None = None
    queued: bool = False
    lead: bool = False
    error: ZooError | None = None
    result: BatchResult | None = None

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def fail(self, error: ZooError) -> None:
        self.error = error
        self.wake()

    def wake(self) -> None:
        if self.done is not None:
            self.done.release()

    def outcome(self) -> BatchResult:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _deadline(ctx: CallContext | None, timeout_s: float | None) -> float | None:
    """The sooner of the call's deadline and the request's own queue timeout."""
    remaining = ctx.time_remaining() if ctx is not None else None
    # grpc reports "no deadline" as centuries, more than a timed wait accepts.
    if remaining is None or remaining > NO_DEADLINE_S:
        remaining = None
    if timeout_s is not None:
        remaining = timeout_s if remaining is None else min(remaining, timeout_s)
    return None if remaining is None else time.monotonic() + remaining


def _execution_failure(error: Exception, size: int) -> ModelExecutionError:
    # onnxruntime's errors are untyped: any is the model's failure, logged with its trace.
    log.error("session call failed for a batch of %d", size, exc_info=error)
    return ModelExecutionError(f"model execution failed: {error}")


def _shape_key(inputs: dict[str, np.ndarray]) -> tuple[tuple[int, ...], ...]:
    # Only requests whose non-batch dimensions agree can be concatenated.
    return tuple(a.shape[1:] for a in inputs.values())


class DynamicBatcher:
    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        batching: bool,
        preferred_batch_sizes: tuple[int, ...] = (),
        max_queue_delay_s: float = 0.0,
        max_queue_size: int = 0,
        instances: int = 1,
        on_execution: Callable[[int, BatchTiming], None] = lambda size, timing: None,
    ) -> None:
        self._run = run
        # A model without a batch dimension (max_batch_size 0) runs one request per call.
        self._batching = batching and max_batch_size > 0
        self._max_batch_size = max(max_batch_size, 1)
        self._preferred = frozenset(preferred_batch_sizes)
        self._max_delay = max_queue_delay_s
        self._max_queue_size = max_queue_size
        self._on_execution = on_execution
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queue: deque[_Pending] = deque()
        self._instances = max(instances, 1)
        self._running = 0  # session calls in progress, at most `instances`
        self._gathering = False

    def submit(
        self,
        inputs: dict[str, np.ndarray],
        size: int,
        ctx: CallContext | None = None,
        timeout_s: float | None = None,
    ) -> BatchResult:
        """Run `inputs` (batch `size`), alone or batched with others; blocks until done.
        `timeout_s`: the longest it may wait in the queue (besides the call's deadline)."""
        arrived_ns = time.perf_counter_ns()
        with self._lock:
            idle = self._running < self._instances
            if idle:
                self._running += 1
                only_call = self._running == 1
            else:
                pending = _Pending(inputs, size, _deadline(ctx, timeout_s), arrived_ns)
                self._enqueue(pending)
        if idle:
            # Nothing is queued while a lane is free (a finishing call hands its lane to
            # the oldest queued request), so this request runs alone, at once.
            try:
                # It may have waited for a thread (server.app's inference pool) until its
                # deadline passed: then it is not worth computing.
                remaining = ctx.time_remaining() if ctx is not None else None
                if remaining is not None and remaining <= 0:
                    raise DeadlineExceededError("deadline exceeded before it ran; not computed")
                return self._run_alone(inputs, size, arrived_ns, only_call)
            finally:
                self._hand_off()
        if ctx is not None:
            ctx.add_callback(lambda: self._withdraw(pending, "cancelled"))
        self._await(pending)
        if pending.lead:
            self._lead(pending)
        return pending.outcome()

    def _enqueue(self, pending: _Pending) -> None:
        if self._max_queue_size and len(self._queue) >= self._max_queue_size:
            raise ResourceExhaustedError(
                f"queue full: {len(self._queue)} requests waiting (max_queue_size "
                f"{self._max_queue_size}); retry later"
            )
        pending.queued = True
        pending.done = threading.Lock()
        pending.done.acquire()
        self._queue.append(pending)
        if self._gathering:
            self._arrived.notify_all()

    def _await(self, pending: _Pending) -> None:
        assert pending.done is not None
        timeout = -1 if pending.deadline is None else max(pending.deadline - time.monotonic(), 0)
        if not pending.done.acquire(timeout=timeout):
            self._withdraw(pending, "deadline")
            pending.done.acquire()  # already taken into a batch: it finishes soon

    def _withdraw(self, pending: _Pending, why: str) -> None:
        with self._lock:
            if not pending.queued:
                return
            self._queue.remove(pending)
            pending.queued = False
        if why == "deadline":
            pending.fail(DeadlineExceededError("deadline exceeded while queued; not computed"))
        else:
            pending.fail(CancelledError("request cancelled while queued; not computed"))

    def _lead(self, first: _Pending) -> None:
        """Run one batch headed by `first`, then hand the lead on (or go idle)."""
        batch: list[_Pending] = []
        if first.expired():
            first.fail(DeadlineExceededError("deadline exceeded while queued; not computed"))
        else:
            batch.append(first)
        with self._lock:
            size = self._fill(batch)
            # A lead handed on means requests are queueing: then a preferred size is
            # worth a wait (an idle model never waits: it runs alone).
            if self._batching and self._max_delay:
                size = self._gather(batch, size)
            only_call = self._running == 1
        try:
            if batch:
                self._execute(batch, size, only_call)
        finally:
            self._hand_off()

    def _fill(self, batch: list[_Pending]) -> int:
        size = sum(p.size for p in batch)
        key = _shape_key(batch[0].inputs) if batch else None
        while self._batching and self._queue:
            head = self._queue[0]
            if size + head.size > self._max_batch_size:
                break
            if key is not None and _shape_key(head.inputs) != key:
                break
            self._queue.popleft()
            head.queued = False
            if head.expired():
                head.fail(DeadlineExceededError("deadline exceeded while queued; not computed"))
                continue
            batch.append(head)
            key = key or _shape_key(head.inputs)
            size += head.size
        return size

    def _enough(self, size: int) -> bool:
        if size >= self._max_batch_size or size in self._preferred:
            return True
        return bool(self._preferred) and size >= max(self._preferred)

    def _gather(self, batch: list[_Pending], size: int) -> int:
        until = time.monotonic() + self._max_delay
        self._gathering = True
        try:
            while not self._enough(size) and (left := until - time.monotonic()) > 0:
                self._arrived.wait(left)
                size = self._fill(batch)
        finally:
            self._gathering = False
        return size

    def _execute(self, batch: list[_Pending], size: int, only_call: bool) -> None:
        t0 = time.perf_counter_ns()
        try:
            if len(batch) == 1:
                feeds = batch[0].inputs
            else:
                feeds = {n: np.concatenate([p.inputs[n] for p in batch]) for n in batch[0].inputs}
            t1 = time.perf_counter_ns()
            outputs = self._run(feeds, only_call)
        except Exception as error:
            failure = _execution_failure(error, size)
            for p in batch:
                p.fail(failure)
            return
        t2 = time.perf_counter_ns()
        # A lone request takes the outputs whole: a model without a batch dimension
        # (max_batch_size 0) has no rows to split, whatever its first dimension holds.
        parts = [outputs] if len(batch) == 1 else self._split(batch, outputs)
        timing = BatchTiming(t1 - t0, t2 - t1, time.perf_counter_ns() - t2)
        self._on_execution(size, timing)
        for p, outs in zip(batch, parts, strict=True):
            p.result = BatchResult(outs, t0 - p.arrived_ns, timing, size)
            p.wake()

    def _run_alone(
        self, inputs: dict[str, np.ndarray], size: int, arrived_ns: int, only_call: bool
    ) -> BatchResult:
        t0 = time.perf_counter_ns()
        try:
            outputs = self._run(inputs, only_call)
        except Exception as error:
            raise _execution_failure(error, size) from None
        timing = BatchTiming(0, time.perf_counter_ns() - t0, 0)
        self._on_execution(size, timing)
        return BatchResult(outputs, t0 - arrived_ns, timing, size)

    @staticmethod
    def _split(batch: list[_Pending], outputs: list[np.ndarray]) -> list[list[np.ndarray]]:
        parts, offset = [], 0
        for p in batch:
            parts.append([o[offset : offset + p.size] for o in outputs])
            offset += p.size
        return parts

    def _hand_off(self) -> None:
        with self._lock:
            if not self._queue:
                self._running -= 1
                return
            successor = self._queue.popleft()
            successor.queued = False
            successor.lead = True
        successor.wake()
