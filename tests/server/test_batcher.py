"""The dynamic batcher in-process, with a real (slow) run function and real threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from server.batcher import BatchResult, DynamicBatcher
from zoo.errors import (
    CancelledError,
    DeadlineExceededError,
    ModelExecutionError,
    ResourceExhaustedError,
)


class Recorder:
    """A run function: doubles its input; the first call blocks until released."""

    def __init__(self, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.threads: list[str] = []
        self.only_calls: list[bool] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.fail = fail

    def __call__(self, feeds: dict[str, np.ndarray], only_call: bool) -> list[np.ndarray]:
        self.only_calls.append(only_call)
        self.threads.append(threading.current_thread().name)
        self.sizes.append(len(feeds["x"]))
        self.entered.set()
        self.release.wait(5)
        if self.fail:
            raise RuntimeError("boom")
        return [feeds["x"] * 2]


class Context:
    """The part of grpc.ServicerContext the batcher uses."""

    def __init__(self, remaining: float | None = None) -> None:
        self.remaining = remaining
        self.callbacks: list[Callable[[], None]] = []

    def time_remaining(self) -> float | None:
        return self.remaining

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self.callbacks.append(callback)
        return True


def _batcher(run: Recorder, **kwargs: object) -> DynamicBatcher:
    options: dict = {"max_batch_size": 8, "batching": True, **kwargs}
    return DynamicBatcher(run, **options)


def _x(value: float, size: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((size, 3), value, np.float32)}


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.001)


def _wait_queued(batcher: DynamicBatcher, count: int) -> None:
    _wait_until(lambda: len(batcher._queue) >= count)


def test_an_idle_model_runs_the_request_at_once_on_the_callers_thread() -> None:
    run = Recorder()
    run.release.set()
    result = _batcher(run, max_queue_delay_s=1.0).submit(_x(1.5), 1)
    assert run.threads == [threading.current_thread().name]
    np.testing.assert_array_equal(result.outputs[0], np.full((1, 3), 3.0))
    assert result.batch_size == 1


def test_a_call_is_the_only_call_exactly_when_no_other_is_in_progress() -> None:
    """What lets the model take every core for a call (its wide session) while idle."""
    run = Recorder()
    batcher = _batcher(run, instances=2)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.submit, _x(0), 1)
        run.entered.wait(5)
        second = pool.submit(batcher.submit, _x(1), 1)  # the second lane, beside the first
        _wait_until(lambda: len(run.only_calls) == 2)
        queued = pool.submit(batcher.submit, _x(2), 1)
        _wait_queued(batcher, 1)
        run.release.set()
        for future in (first, second, queued):
            future.result(5)
    assert run.only_calls[:2] == [True, False]
    assert len(run.only_calls) == 3  # the queued one ran beside, or after, the others
    run.only_calls.clear()
    batcher.submit(_x(3), 1)  # idle again
    assert run.only_calls == [True]


def test_requests_arriving_while_busy_run_as_one_batch_and_are_split_back() -> None:
    run = Recorder()
    batcher = _batcher(run)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.submit, _x(0), 1)
        run.entered.wait(5)
        rest = [pool.submit(batcher.submit, _x(i, size=i), i) for i in (1, 2, 3)]
        _wait_queued(batcher, 3)
        run.release.set()
        results: list[BatchResult] = [f.result(5) for f in rest]
        first.result(5)
    assert run.sizes == [1, 6]
    for i, result in zip((1, 2, 3), results, strict=True):
        np.testing.assert_array_equal(result.outputs[0], np.full((i, 3), 2.0 * i))
        assert result.batch_size == 6


def test_a_batch_never_exceeds_max_batch_size() -> None:
    run = Recorder()
    batcher = _batcher(run, max_batch_size=4)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.submit, _x(0), 1)
        run.entered.wait(5)
        rest = [pool.submit(batcher.submit, _x(1, size=3), 3) for _ in range(3)]
        _wait_queued(batcher, 3)
        run.release.set()
        for f in [first, *rest]:
            f.result(5)
    assert run.sizes == [1, 3, 3, 3]


def test_past_the_queue_limit_a_request_is_refused() -> None:
    run = Recorder()
    batcher = _batcher(run, max_queue_size=1)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.submit, _x(0), 1)
        run.entered.wait(5)
        queued = pool.submit(batcher.submit, _x(1), 1)
        _wait_queued(batcher, 1)
        with pytest.raises(ResourceExhaustedError, match="queue full: 1 requests waiting"):
            batcher.submit(_x(2), 1)
        run.release.set()
        first.result(5)
        queued.result(5)


def test_a_request_whose_deadline_passes_in_the_queue_is_dropped_not_computed() -> None:
    run = Recorder()
    batcher = _batcher(run)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.submit, _x(0), 1)
        run.entered.wait(5)
        late = pool.submit(batcher.submit, _x(1, size=5), 5, Context(remaining=0.05))
        with pytest.raises(DeadlineExceededError, match="while queued; not computed"):
            late.result(5)
        run.release.set()
        first.result(5)
    assert run.sizes == [1]
    assert batcher._running == 0


def test_a_request_past_its_deadline_on_arrival_is_not_computed_and_frees_its_lane() -> None:
    """A request that waited for an inference thread until its deadline passed."""
    run = Recorder()
    run.release.set()
    batcher = _batcher(run)
    with pytest.raises(DeadlineExceededError, match="not computed"):
        batcher.submit(_x(1), 1, Context(remaining=-0.5))
    assert run.sizes == []
    assert batcher._running == 0
    batcher.submit(_x(1), 1, Context(remaining=5.0))
    assert run.sizes == [1]


def test_a_requests_own_timeout_bounds_its_wait_in_the_queue() -> None:
    """The request parameter "timeout" (Triton's, in microseconds) as a queue deadline,
    without any call deadline; the sooner of the two applies when both are given."""
    run = Recorder()
    batcher = _batcher(run)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.submit, _x(0), 1)
        run.entered.wait(5)
        timed = pool.submit(batcher.submit, _x(1), 1, None, 0.05)
        with pytest.raises(DeadlineExceededError, match="while queued; not computed"):
            timed.result(5)
        both = pool.submit(batcher.submit, _x(1), 1, Context(remaining=600.0), 0.05)
        with pytest.raises(DeadlineExceededError):
            both.result(5)
        run.release.set()
        first.result(5)
    assert run.sizes == [1]


def test_a_cancelled_request_leaves_the_queue() -> None:
    run = Recorder()
    batcher = _batcher(run)
    ctx = Context()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.submit, _x(0), 1)
        run.entered.wait(5)
        cancelled = pool.submit(batcher.submit, _x(1, size=5), 5, ctx)
        _wait_queued(batcher, 1)
        ctx.callbacks[0]()  # what grpc does when the client cancels
        with pytest.raises(CancelledError):
            cancelled.result(5)
        assert len(batcher._queue) == 0
        run.release.set()
        first.result(5)
    assert run.sizes == [1]


def test_a_failed_session_call_fails_its_batch_and_the_batcher_goes_on() -> None:
    run = Recorder(fail=True)
    run.release.set()
    batcher = _batcher(run)
    with pytest.raises(ModelExecutionError, match="model execution failed: boom"):
        batcher.submit(_x(0), 1)
    run.fail = False
    assert batcher.submit(_x(1), 1).batch_size == 1


def test_the_leader_waits_for_a_preferred_size_only_when_requests_are_queueing() -> None:
    run = Recorder()
    # A long delay: the leader stops waiting as soon as the preferred size is reached, so
    # the delay only keeps a busy machine's stalls from ending the wait early.
    batcher = _batcher(run, preferred_batch_sizes=(4,), max_queue_delay_s=30)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.submit, _x(0), 1)
        run.entered.wait(5)
        early = [pool.submit(batcher.submit, _x(1), 1) for _ in range(2)]
        _wait_queued(batcher, 2)
        run.release.set()
        _wait_until(lambda: batcher._gathering)  # the new leader holds 2 and waits for 4
        late = [pool.submit(batcher.submit, _x(2), 1) for _ in range(2)]
        for f in [first, *early, *late]:
            f.result(5)
    assert run.sizes == [1, 4]


def test_grpcs_no_deadline_of_centuries_is_no_deadline() -> None:
    run = Recorder()
    batcher = _batcher(run)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(batcher.submit, _x(0), 1)
        run.entered.wait(5)
        queued = pool.submit(batcher.submit, _x(1), 1, Context(remaining=3e9))
        _wait_queued(batcher, 1)
        run.release.set()
        assert queued.result(5).batch_size == 1
        first.result(5)
