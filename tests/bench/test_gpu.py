"""bench/gpu.sh and bench/gpu.py in their CPU fallback: every step end to end on the
shipped bn_cnn with tiny windows, and the FP16 part against stand-ins for `zoo`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "model_repository"
PERF_ANALYZER = ROOT / ".venv" / "bin" / "perf_analyzer"
STEPS = ["perf_analyzer", "check", "pytest", "inprocess", "served", "fp16", "report"]

# A stand-in for `zoo`: its export has --quantize and "exports" NAME as NAME_fp16 by
# copying the shipped model; any name but bn_cnn fails, as a failed export would.
FAKE_ZOO = """
import shutil, sys
from pathlib import Path
args = sys.argv[1:]
if "--help" in args:
    print("usage: zoo export [--quantize {fp16}] [--repository DIR]")
    sys.exit(0)
name, repository = args[1], Path(args[args.index("--repository") + 1])
if name != "bn_cnn":
    sys.exit(f"zoo export: error: no checkpoint for {name}")
variant = repository / f"{name}_fp16"
shutil.copytree(Path(sys.argv[0]).parent / "source", variant)
config = variant / "config.pbtxt"
config.write_text(config.read_text().replace(f'name: "{name}"', f'name: "{variant.name}"'))
"""


@pytest.fixture(scope="module")
def gpu() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def perf_analyzer_runs() -> bool:
    """Whether perf_analyzer is installed here (tools/install-perf-analyzer.sh)."""
    if not PERF_ANALYZER.exists():
        return False
    return subprocess.run([PERF_ANALYZER, "--version"], capture_output=True).returncode == 0


@pytest.fixture(autouse=True)
def shipped_bn_cnn() -> None:
    if not (REPOSITORY / "bn_cnn" / "config.pbtxt").exists():
        pytest.skip("model_repository/ has no bn_cnn")


def test_cpu_fallback_runs_every_step_and_writes_the_results(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ZOO_GPU_DEVICE": "cpu",
        "ZOO_GPU_RESULTS": str(tmp_path),
        "ZOO_GPU_ARGS": "--models bn_cnn --batches 1,8 --seconds 0.05",
        # Installing perf_analyzer may call apt-get: scripts/test.sh does it before the suite.
        "ZOO_GPU_SKIP": "perf_analyzer",
        # `zoo export --quantize` verifies each variant on MNIST: a few images do here.
        "ZOO_VERIFY_IMAGES": "64",
        "ZOO_PROGRESS": "false",
    }
    served = perf_analyzer_runs()  # else the served part fails, and only that is checked
    done = subprocess.run(
        ["bash", "bench/gpu.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    results = json.loads((tmp_path / "gpu.json").read_text())
    steps = {step["name"]: step["status"] for step in results["steps"]}
    assert list(steps) == STEPS[:-1], done.stderr  # the report lists the steps before it
    assert steps["perf_analyzer"] == "skipped"
    assert steps["check"] == steps["pytest"] == steps["inprocess"] == "ok", done.stdout
    env_ = results["environment"]
    assert env_["device"] == "cpu" and env_["onnxruntime"] == ort.__version__
    assert env_["session_providers"][0] == "CPUExecutionProvider" and "date" in env_
    fp32 = [r for r in results["rows"] if r["precision"] == "fp32"]
    assert [(r["model"], r["batch"]) for r in fp32] == [("bn_cnn", 1), ("bn_cnn", 8)]
    for row in results["rows"]:
        for kind in ("plain", "iobinding"):
            assert row[kind]["images_per_s"] > 0 and row[kind]["p50_ms"] > 0, row
    for row in fp32:
        if served:
            assert row["served"]["images_per_s"] > 0 and row["served"]["concurrency"] > 0, row
    assert steps["served"] == ("ok" if served else "failed (exit 1)")
    fp16 = results["fp16"]
    if fp16["available"]:  # the variant of the shipped float model, measured like it
        assert fp16["exported"] == ["bn_cnn"] and not fp16["errors"], fp16
        assert sum(r["precision"] == "fp16" for r in results["rows"]) == 2
    else:
        assert "FP16 variants skipped" in fp16["note"]
    assert steps["fp16"] == "ok", done.stdout
    table = (tmp_path / "gpu.md").read_text()
    assert "| bn_cnn | 8 | fp32 |" in table and "with IO binding" in table
    assert table in done.stdout  # printed too
    assert f"results: {tmp_path}/gpu.json" in done.stderr
    assert done.returncode == (0 if all(s in ("ok", "skipped") for s in steps.values()) else 1)


def test_fp16_is_skipped_with_a_note_when_zoo_export_cannot_quantize(gpu: ModuleType) -> None:
    args = gpu.parse_args(["fp16", "--device", "cpu", "--models", "bn_cnn"])
    no_quantize = [sys.executable, "-c", "print('usage: zoo export [--repository DIR]')"]
    rows, fp16 = gpu.fp16(args, zoo=no_quantize)
    assert rows == [] and fp16 == {
        "available": False,
        "note": "zoo export has no --quantize option yet: FP16 variants skipped",
    }


def test_fp16_variants_are_measured_and_failed_exports_recorded(
    gpu: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "zoo.py").write_text(FAKE_ZOO)
    (tmp_path / "source").symlink_to(REPOSITORY / "bn_cnn", target_is_directory=True)
    argv = ["fp16", "--device", "cpu", "--models", "bn_cnn,resnet", "--batches", "1,8"]
    args = gpu.parse_args([*argv, "--seconds", "0.02"])
    rows, fp16 = gpu.fp16(args, zoo=[sys.executable, str(tmp_path / "zoo.py")])
    assert fp16 == {
        "available": True,
        "exported": ["bn_cnn"],
        "errors": {"resnet": "zoo export: error: no checkpoint for resnet"},
    }
    assert [(r["model"], r["precision"], r["batch"], r["variant"]) for r in rows] == [
        ("bn_cnn", "fp16", 1, "bn_cnn_fp16"),
        ("bn_cnn", "fp16", 8, "bn_cnn_fp16"),
    ]
    assert all(r["plain"]["images_per_s"] > 0 and r["iobinding"]["p50_ms"] > 0 for r in rows)
