"""Summaries of a load run: throughput and latency percentiles from per-request records.

Each generator process returns, per request, when it started (`start`) and when its reply
arrived (`done`), both in seconds from the run's common start, and its gRPC status code
(0 = OK). A request's latency is `done - start`, where `start` is the earlier of when it was
due and when it was sent: in an open loop a request sent late still counts from its due
time, so a server that falls behind cannot hide its queueing (coordinated omission, Gil
Tene, 2013), and one sent a little early (timers wake ahead, see client.loadgen) counts
from its send. How late each was sent (`lag`) is kept too: it tells when the generator,
not the server, fell behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p999_ms": 99.9}
STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
OK = 0


@dataclass
class Records:
    """One generator's per-request record, as parallel arrays."""

    start: np.ndarray  # float64 seconds from the run's start: min(due, sent)
    done: np.ndarray  # float64 seconds from the run's start
    codes: np.ndarray  # int32 gRPC status codes, 0 = OK
    lag: np.ndarray  # float64 seconds the generator sent it after it was due (>= 0)

    @classmethod
    def merge(cls, parts: Sequence[Records]) -> Records:
        return cls(
            np.concatenate([p.start for p in parts]),
            np.concatenate([p.done for p in parts]),
            np.concatenate([p.codes for p in parts]),
            np.concatenate([p.lag for p in parts]),
        )


def summarise(
    records: Records, *, warmup_s: float, duration_s: float, batch: int
) -> dict[str, object]:
    """The run's figures over the measurement window [warmup, warmup + duration).

    Throughput counts the successful replies that arrived inside the window: what the
    server delivered. Latency and errors cover every request due inside the window,
    including those that were still in flight when it closed.
    """
    end = warmup_s + duration_s
    due = (records.start >= warmup_s) & (records.start < end)
    ok = records.codes == OK
    delivered = int(np.count_nonzero(ok & (records.done >= warmup_s) & (records.done < end)))
    latencies_ms = (records.done - records.start)[due & ok] * 1e3
    codes, counts = np.unique(records.codes[due & ~ok], return_counts=True)
    errors = {
        STATUS_NAMES.get(int(c), str(int(c))): int(n) for c, n in zip(codes, counts, strict=True)
    }
    lag_ms = records.lag[due] * 1e3
    return {
        "requests": int(np.count_nonzero(due)),
        "successes": int(latencies_ms.size),
        "error_count": sum(errors.values()),
        "errors": errors,
        "throughput_rps": delivered / duration_s,
        "images_per_s": delivered * batch / duration_s,
        **latency_summary(latencies_ms),
        # How late the generator itself sent: in an open loop, when this grows the client,
        # not the server, is falling behind (~0 in a closed loop, which sends at once).
        "send_lag_p99_ms": float(np.percentile(lag_ms, 99)) if lag_ms.size else None,
        "send_lag_max_ms": float(lag_ms.max()) if lag_ms.size else None,
    }


def latency_summary(latencies_ms: np.ndarray) -> dict[str, float | None]:
    """Mean, p50/p90/p99/p99.9 and max in milliseconds (None when nothing succeeded)."""
    if latencies_ms.size == 0:
        return {"mean_ms": None, **dict.fromkeys(PERCENTILES), "max_ms": None}
    # "higher" picks an observed latency, never an interpolation between two.
    values = np.percentile(latencies_ms, list(PERCENTILES.values()), method="higher")
    return {
        "mean_ms": float(latencies_ms.mean()),
        **{key: float(v) for key, v in zip(PERCENTILES, values, strict=True)},
        "max_ms": float(latencies_ms.max()),
    }
