"""bench/serve.py --peers: the roofline, the per-round ratios and the tables, on made-up runs
(the benchmark itself needs the peers' environments and minutes of load)."""

from __future__ import annotations

import math

import pytest

from bench.serve import median_ratio, peers_table, roofline, summarise_peers


def test_roofline_adds_the_model_call_to_the_noop_cost() -> None:
    # 0.5 ms a no-op round trip + 0.5 ms a call: 1,000 req/s
    assert roofline(2000.0, 2000.0) == pytest.approx(1000.0)
    assert roofline(2000.0, math.inf) == pytest.approx(2000.0)


def test_median_ratio_pairs_rounds() -> None:
    # Load drifts between rounds; each round's ratio is 2, whatever the medians are.
    assert median_ratio([100.0, 400.0, 50.0], [50.0, 200.0, 25.0]) == 2.0
    assert math.isnan(median_ratio([1.0], [0.0]))


def _run(rps: float, foreign: float = 0.1) -> dict:
    return {
        "requests_per_s": rps,
        "images_per_s": rps,
        "p50_ms": 1000 / rps,
        "p99_ms": 2000 / rps,
        "foreign_cpus": foreign,
        "load_before": 1.0,
        "load_after": 1.5,
    }


def test_summary_and_table() -> None:
    rps = {"zoo": [900, 1100, 1000], "noop": [2000] * 3, "kserve": [500] * 3}
    rps["onnxruntime"] = [2000] * 3
    runs = {kind: {"bn_mlp b1 c1": [_run(v) for v in values]} for kind, values in rps.items()}
    runs["kserve"]["bn_mlp b1 c1"][0]["foreign_cpus"] = 0.7
    (point,) = summarise_peers(runs)
    assert (point["model"], point["batch"], point["concurrency"]) == ("bn_mlp", 1, 1)
    assert point["medians"]["zoo"]["requests_per_s"] == 1000
    assert point["roofline_rps"] == pytest.approx(1000.0)
    assert point["ratios"] == pytest.approx(
        {"zoo/noop": 0.5, "zoo/kserve": 2.0, "zoo/roofline": 1.0}
    )
    assert point["other_work_cpus"] == {"median": 0.1, "max": 0.7}
    results = {
        "servers": {
            kind: {"ready_s": 1.0, "rss_mb": 100.0, "versions": {"onnxruntime": "1"}}
            for kind in ("zoo", "noop", "kserve")
        },
        "points": [point],
        "rounds": 3,
        "seconds": 2.0,
        "load_generator": "zoo load",
        "cpus": 2,
        "date": "today",
        "skipped": {"mlserver": "did not start"},
    }
    table = peers_table(results)
    assert "| bn_mlp | 1 × 1 | 1,000 | 2,000 | 500 | 2,000 | 1,000 | 0.50 | 2.00 | 1.00 |" in table
    assert "0.10 (max 0.70) | 1.0–1.5 |" in table
    assert "Skipped: mlserver did not start." in table
