"""The server through the reference client, tritonclient.grpc, in its own process."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("tritonclient_check.py")


@pytest.fixture(scope="module")
def seen(zoo_server, served_repository: Path) -> dict:
    if importlib.util.find_spec("tritonclient") is None:
        pytest.skip("tritonclient is not installed (pip install -e .[dev])")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), zoo_server.address, str(served_repository)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_server_calls(seen: dict, served_repository: Path) -> None:
    assert seen["live"] and seen["ready"]
    assert "statistics" in seen["extensions"]
    assert seen["index"] == sorted(seen["models"])
    assert seen["models"], f"no models in {served_repository}"


def test_every_model_through_tritonclient_equals_onnxruntime(seen: dict) -> None:
    for name, model in seen["models"].items():
        assert model["ready"], name
        assert model["input_shape"] == ["-1", "1", "28", "28"], name
        assert int(model["max_batch_size"]) > 0, name
        assert model["id"] == "tc-1", name
        assert model["max_diff"] <= 1e-5, name
        assert model["async_error"] is None and model["async_max_diff"] <= 1e-5, name
        assert int(model["success_count"]) >= 2 and model["stats_version"].isdigit(), name
