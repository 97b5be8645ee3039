"""Our generated stubs are current and wire-compatible with Triton's protocol."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proto import generate

ROOT = Path(__file__).resolve().parents[2]
DUMP = Path(__file__).with_name("dump_descriptors.py")


def test_generated_code_is_current() -> None:
    assert generate.stale_files() == [], "run: python -m proto.generate"


def _layout(which: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(DUMP), which], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def layouts() -> tuple[dict[str, Any], dict[str, Any]]:
    # Only look for it: importing it here would clash with our stubs.
    if importlib.util.find_spec("tritonclient") is None:
        pytest.skip("tritonclient is not installed (pip install -e .[dev])")
    return _layout("ours"), _layout("tritonclient")


def test_every_kept_name_exists_in_triton(layouts: tuple[dict, dict]) -> None:
    ours, triton = layouts
    missing = sorted(set(ours) - set(triton))
    assert missing == [], f"not in Triton's protocol: {missing}"


def test_every_kept_field_has_tritons_number_and_type(layouts: tuple[dict, dict]) -> None:
    ours, triton = layouts
    wrong = [
        (name, member, ours[name][member], triton[name].get(member))
        for name in ours
        if isinstance(ours[name], dict)
        for member in ours[name]
        if ours[name][member] != triton[name].get(member)
    ]
    assert wrong == []


def test_every_kept_rpc_has_tritons_signature(layouts: tuple[dict, dict]) -> None:
    ours, triton = layouts
    rpcs = [name for name in ours if name.startswith("inference.GRPCInferenceService.")]
    assert len(rpcs) == 18
    assert {name: ours[name] for name in rpcs} == {name: triton[name] for name in rpcs}
