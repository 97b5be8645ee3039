"""bench/idle.py on the tiny models: every gap measured in every round, the table whole.
(Timings themselves are the benchmark's business: a busy machine moves them.)"""

from __future__ import annotations

import json
from pathlib import Path

from bench.idle import GAPS, gap_name, main


def test_every_gap_is_measured_and_tabled(tiny_repository: Path, tmp_path: Path) -> None:
    output = tmp_path / "idle.json"
    args = ["--repository", str(tiny_repository), "--models", "tiny_mlp,tiny_cnn"]
    assert main([*args, "--calls", "5", "--rounds", "2", "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    names = [gap_name(*gap) for gap in GAPS]
    assert names[0] == "back-to-back" and "sleep 0.4 ms" in names and "spin 0.4 ms" in names
    for model in ("tiny_mlp", "tiny_cnn"):
        gaps = results["models"][model]
        assert list(gaps) == names
        assert gaps["back-to-back"]["ratio"] == 1.0
        assert all(gap["median_us"] > 0 for gap in gaps.values())
    table = output.with_suffix(".md").read_text()
    assert table.startswith("| model | back-to-back | sleep 0.1 ms |")
    assert "| tiny_cnn | " in table and "over 2 rounds" in table
