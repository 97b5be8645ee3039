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
# Triton added these after the tritonclient release the dev extras pin (2.51), so its
# stubs cannot vouch for them; their names and numbers follow Triton's current
# published ModelConfig schema (ModelConfig.model_metrics = 26, ModelEnsembling's
# max_inflight_requests = 2).
NEWER_THAN_TRITONCLIENT = {
    "inference.ModelMetrics": None,
    "inference.ModelMetrics.MetricControl": None,
    "inference.ModelMetrics.MetricControl.HistogramOptions": None,
    "inference.ModelMetrics.MetricControl.MetricIdentifier": None,
    "inference.ModelConfig": "model_metrics",
    "inference.ModelEnsembling": "max_inflight_requests",
}


def test_generated_code_is_current() -> None:
    assert generate.stale_files() == [], "run: python -m proto.generate"


def _layout(which: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(DUMP), which], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def _without_newer(layout: dict[str, Any]) -> dict[str, Any]:
    """Our layout less what NEWER_THAN_TRITONCLIENT names (each must still be there)."""
    kept = dict(layout)
    for name, member in NEWER_THAN_TRITONCLIENT.items():
        if member is None:
            del kept[name]
        else:
            kept[name] = {k: v for k, v in kept[name].items() if k != member}
            assert member in layout[name], f"{name}.{member} is gone from our protos"
    return kept


@pytest.fixture(scope="module")
def layouts() -> tuple[dict[str, Any], dict[str, Any]]:
    # Only look for it: importing it here would clash with our stubs.
    if importlib.util.find_spec("tritonclient") is None:
        pytest.skip("tritonclient is not installed (pip install -e .[dev])")
    return _without_newer(_layout("ours")), _layout("tritonclient")


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


def test_model_config_has_every_triton_message_and_field(layouts: tuple[dict, dict]) -> None:
    """The whole of Triton's ModelConfig, not a subset: any config.pbtxt written for
    Triton parses here (what the server does not do is refused at load, by name)."""
    ours, triton = layouts
    reachable, todo = set(), ["inference.ModelConfig"]
    while todo:
        name = todo.pop()
        if name in reachable:
            continue
        reachable.add(name)
        todo += [field[3] for field in triton[name].values() if field[3] is not None]
    wanted = {
        name
        for name in triton
        if name == "inference.DataType" or any(name.startswith(r) for r in reachable)
    }
    assert len(wanted) > 40
    assert {n: ours.get(n) for n in sorted(wanted)} == {n: triton[n] for n in sorted(wanted)}


def test_every_kept_rpc_has_tritons_signature(layouts: tuple[dict, dict]) -> None:
    ours, triton = layouts
    rpcs = [name for name in ours if name.startswith("inference.GRPCInferenceService.")]
    assert len(rpcs) == 18
    assert {name: ours[name] for name in rpcs} == {name: triton[name] for name in rpcs}
