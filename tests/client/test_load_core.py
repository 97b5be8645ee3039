"""The load tester's pure parts: splitting, arrivals, loops, statistics, report."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from client.channel import Connection
from client.load import LoadSettings, make_payloads, plan_loads
from client.loadgen import (
    TIMER_LEAD_S,
    GeneratorJob,
    arrival_times,
    closed_loop,
    open_loop,
    split_load,
)
from client.protocol import ModelMetadata
from client.report import format_table, write_plot
from client.stats import Records, latency_summary, summarise
from zoo.card import TensorSpec
from zoo.errors import InvalidArgumentError

JOB = GeneratorJob(index=0, connection=Connection(("127.0.0.1:1",)), requests=(), end_s=10.0)


def test_concurrency_is_split_whole_and_rates_interleave() -> None:
    assert [c for c, _, _ in split_load(3, 8, None)] == [3, 3, 2]
    assert [c for c, _, _ in split_load(4, 2, None)] == [1, 1]
    shares = split_load(4, None, 100.0)
    assert [r for _, r, _ in shares] == [25.0] * 4
    assert [o for _, _, o in shares] == pytest.approx([0.0, 0.01, 0.02, 0.03])


def test_fixed_arrivals_are_even_and_poisson_ones_have_the_rate() -> None:
    fixed = list(arrival_times(GeneratorJob(**{**JOB.__dict__, "rate": 50.0, "offset_s": 0.005})))
    assert len(fixed) == 500 and np.allclose(np.diff(fixed), 0.02)
    poisson = np.array(
        list(arrival_times(GeneratorJob(**{**JOB.__dict__, "rate": 200.0, "poisson": True})))
    )
    gaps = np.diff(poisson)
    assert abs(len(poisson) - 2000) < 200  # Poisson count: sd ~45
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.1)  # exponential: cv = 1


def test_closed_loop_keeps_concurrency_in_flight() -> None:
    """Every send waits until four are in flight at once: a loop that kept fewer would
    never complete a round (the barrier breaks after 30 s and the test fails)."""
    rounds, sent = 0, []

    def next_round() -> None:  # run once per round, while all four sends wait
        nonlocal rounds
        rounds += 1

    barrier = threading.Barrier(4, action=next_round)

    def send(n: int, due: float) -> None:
        sent.append(n)
        barrier.wait(timeout=30)

    # The clock counts rounds: every sender sees the same value after each round.
    closed_loop(send, 4, 10, lambda: rounds)
    assert rounds == 10 and sorted(sent) == list(range(40))


def test_open_loop_does_not_wait_for_slow_replies() -> None:
    """No reply comes back before the last request has gone out, so a loop that waited for
    one before sending the next would send one request and stall."""
    schedule = list(np.arange(0.0, 0.2, 0.01))
    lock, all_sent = threading.Lock(), threading.Event()
    sent: list[tuple[int, float, float]] = []  # (request, due time, clock when sent)
    pending_when_sent: list[int] = []  # requests still awaiting their reply at each send
    replied = 0
    start = time.monotonic()
    clock = lambda: time.monotonic() - start  # noqa: E731

    def send(n: int, due: float) -> None:
        nonlocal replied
        with lock:
            sent.append((n, due, clock()))
            pending_when_sent.append(len(sent) - 1 - replied)
            if len(sent) == len(schedule):
                all_sent.set()
        # The bound only turns a loop that waits for replies into a failure, not a hang.
        all_sent.wait(timeout=30)
        with lock:
            replied += 1

    open_loop(send, iter(schedule), clock)
    assert all_sent.is_set() and replied == len(schedule)
    assert sorted((n, due) for n, due, _ in sent) == list(enumerate(schedule))
    # Every earlier request was still awaiting its reply whenever the next went out ...
    assert pending_when_sent == list(range(len(schedule)))
    # ... and none went out before its time: the schedule, not the replies, paced them.
    assert all(at >= due - TIMER_LEAD_S for _, due, at in sent)


def test_open_loop_caps_its_threads_and_the_wait_shows_as_lateness() -> None:
    sent: list[tuple[float, float]] = []
    start = time.monotonic()

    def send(n: int, due: float) -> None:
        sent.append((due, time.monotonic() - start))
        time.sleep(0.1)

    clock = lambda: time.monotonic() - start  # noqa: E731
    open_loop(send, iter(np.arange(0.0, 0.1, 0.01)), clock, max_threads=2)
    assert len(sent) == 10
    # Two threads, each busy 0.1 s per request: the tenth goes out ~0.4 s after it was due.
    assert max(at - due for due, at in sent) > 0.3


def test_summary_counts_the_window_and_measures_from_schedule() -> None:
    # Requests due every 0.1 s for 3 s, each taking 0.05 s, except errors at 1.5 and 2.5 s;
    # warm-up 1 s, window 1..3 s.
    scheduled = np.arange(0.0, 3.0, 0.1)
    done = scheduled + 0.05
    codes = np.zeros(len(scheduled), np.int32)
    codes[[15, 25]] = 8  # RESOURCE_EXHAUSTED
    lag = np.zeros(len(scheduled))
    lag[20] = 0.004  # one request sent 4 ms late
    summary = summarise(Records(scheduled, done, codes, lag), warmup_s=1.0, duration_s=2.0, batch=4)
    assert summary["requests"] == 20 and summary["successes"] == 18
    assert summary["errors"] == {"RESOURCE_EXHAUSTED": 2} and summary["error_count"] == 2
    assert summary["throughput_rps"] == pytest.approx(9.0, abs=0.5)
    assert summary["images_per_s"] == pytest.approx(4 * summary["throughput_rps"])
    assert summary["p50_ms"] == pytest.approx(50.0) and summary["max_ms"] == pytest.approx(50.0)
    assert summary["send_lag_max_ms"] == pytest.approx(4.0) and summary["send_lag_p99_ms"] > 0


def test_percentiles_are_ordered_and_observed() -> None:
    latencies = np.random.default_rng(0).lognormal(0.0, 1.0, 10_000)
    summary = latency_summary(latencies)
    order = [summary[k] for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")]
    assert order == sorted(order) and all(v in latencies for v in order)
    assert latency_summary(np.array([]))["p99_ms"] is None


def settings(**fields: object) -> LoadSettings:
    return LoadSettings(model="m", **fields)


def test_plan_loads() -> None:
    assert plan_loads(settings()) == [(1, None)]
    assert plan_loads(settings(rate=50.0, poisson=True)) == [(None, 50.0)]
    assert plan_loads(settings(sweep=[1, 8, 32])) == [(1, None), (8, None), (32, None)]
    assert plan_loads(settings(rate=1, sweep=[100, 200])) == [(None, 100.0), (None, 200.0)]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"concurrency": 2, "rate": 5.0}, "not both"),
        ({"poisson": True}, "--poisson needs --rate"),
        ({"sweep": [1, 2.5]}, "whole concurrencies"),
    ],
)
def test_plan_loads_refuses_contradictions(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        plan_loads(settings(**fields))


RUN = {
    "mode": "closed",
    "concurrency": 8,
    "rate": None,
    "throughput_rps": 1234.5,
    "images_per_s": 1234.5,
    "p50_ms": 1.0,
    "p90_ms": 2.0,
    "p99_ms": 3.0,
    "p999_ms": 4.0,
    "max_ms": 5.0,
    "errors": {"UNAVAILABLE": 2},
}


def test_table_and_plot(tmp_path) -> None:
    table = format_table(
        [RUN, {**RUN, "concurrency": None, "mode": "poisson", "rate": 100.0, "errors": {}}]
    )
    assert (
        "c=8" in table
        and "1,234.5" in table
        and "UNAVAILABLE 2" in table
        and "poisson 100/s" in table
    )
    write_plot(
        [RUN, {**RUN, "concurrency": 16, "throughput_rps": 2000.0}], tmp_path / "sweep.png", "m"
    )
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_payloads_follow_the_model_inputs() -> None:
    images = TensorSpec(name="images", datatype="FP32", shape=(-1, 1, 28, 28))
    meta = ModelMetadata("m", ("1",), "onnxruntime_onnx", (images,), ())
    (zeros,) = make_payloads(meta, "zeros", 4, seed=0)
    assert zeros["images"].shape == (4, 1, 28, 28) and not zeros["images"].any()
    randoms = make_payloads(meta, "random", 2, seed=0)
    assert len(randoms) == 16 and not np.array_equal(randoms[0]["images"], randoms[1]["images"])
    assert all(p["images"].min() >= 0.0 and p["images"].max() < 1.0 for p in randoms)
    flat = ModelMetadata(
        "m", ("1",), "", (TensorSpec(name="x", datatype="FP32", shape=(-1, 3, 5)),), ()
    )
    with pytest.raises(InvalidArgumentError, match=r"cannot hold 28 x 28 images"):
        make_payloads(flat, "mnist", 1, seed=0)
    fixed = ModelMetadata(
        "m", ("1",), "", (TensorSpec(name="x", datatype="FP32", shape=(1, 784)),), ()
    )
    with pytest.raises(InvalidArgumentError, match=r"expected -1 \(batch\) first"):
        make_payloads(fixed, "zeros", 1, seed=0)
