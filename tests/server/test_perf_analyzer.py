"""Triton's perf_analyzer (-i grpc, server statistics on) against our server."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest


@pytest.mark.parametrize("batch", [1, 8])
def test_perf_analyzer_measures_our_server(
    perf_analyzer: Path, zoo_server, model_names: list[str], batch: int, tmp_path: Path
) -> None:
    report = tmp_path / "report.csv"
    # Random input bytes (perf_analyzer's default) include NaN and Inf: served all the same.
    command = [str(perf_analyzer), "-m", model_names[0], "-u", zoo_server.address, "-i", "grpc"]
    command += ["-b", str(batch), "--concurrency-range", "2", "-f", str(report)]
    command += ["--measurement-mode", "count_windows", "--measurement-request-count", "100"]
    # A shared 2-core machine is noisy: this test proves the protocol works, not stability.
    command += ["-s", "100", "--max-trials", "10"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Server: " in done.stdout and "Execution count" in done.stdout
    (row,) = list(csv.DictReader(report.open()))
    assert float(row["Inferences/Second"]) > 0
    assert int(row["Server Compute Infer"]) > 0  # from our ModelStatistics
