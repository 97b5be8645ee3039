"""GPU benchmark: bn_cnn, resnet and grid_lstm on onnxruntime's CUDA execution provider,
in process (plain session.run, and IO binding with inputs and outputs on the device) and
served by our server (`--device cuda`, perf_analyzer load), FP32 and FP16 variants.

    python bench/gpu.py [all|check|inprocess|served|fp16|report] [--device cuda|cpu]
                        [--models a,b] [--batches 1,8] [--seconds S] [--output FILE]

`bash bench/gpu.sh` installs onnxruntime-gpu and runs each part as its own timed step;
every part merges its rows into the JSON (bench/results/gpu.json), so one that fails or
runs out of time leaves the others' results, and `report` writes the table beside it
(gpu.md). `--device cpu` runs the same parts on the CPU provider with tiny windows: how
this script is tested on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from bench.serve import PERF_ANALYZER, ServerProcess, in_process, perf_analyzer, served_file  # noqa: E402
from zoo.repository import list_models  # noqa: E402

log = logging.getLogger("bench.gpu")

MODELS = ("bn_cnn", "resnet", "grid_lstm")
BATCHES = (1, 8, 32, 128)
PRECISIONS = ("fp32", "fp16")
PARTS = ("check", "inprocess", "served", "fp16", "report")
# Windows long enough on a GPU for thousands of calls; on the CPU fallback only enough to
# prove every part runs.
DEFAULT_SECONDS = {"cuda": 1.0, "cpu": 0.1}
# cuDNN tries its convolution algorithms on the first calls of each input shape.
WARMUP_CALLS = 5
# Requests in flight against the server: enough for its dynamic batcher to merge
# requests and keep the device busy while the Python gRPC layer is the bottleneck.
SERVED_CONCURRENCY = 8
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
ZOO = (sys.executable, "-m", "zoo.cli")  # the `zoo` command of this interpreter
RESULTS = ROOT / "bench" / "results"


# -- environment ---------------------------------------------------------------------


def nvidia_smi() -> dict | None:
    """The first GPU's name, driver and memory, or None where nvidia-smi is missing."""
    query = "--query-gpu=name,driver_version,memory.total"
    try:
        done = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        return None
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip()}
    name, driver, memory = (field.strip() for field in done.stdout.splitlines()[0].split(","))
    return {"name": name, "driver": driver, "memory_mib": int(memory)}


def environment(device: str) -> dict:
    import onnxruntime as ort

    try:  # a copied working tree may come without git or its history
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except FileNotFoundError:
        commit = ""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "gpu": nvidia_smi(),
        "onnxruntime": ort.__version__,
        "providers_available": ort.get_available_providers(),
        "python": platform.python_version(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "commit": commit,
    }


def open_session(path: Path, device: str) -> Any:
    """A session as the server makes one (its providers and options); on `cuda` a session
    that fell back to the CPU is an error, as with `--device cuda`."""
    from server.runtime import create_session, resolve_providers, session_options

    options = session_options(intra_op_threads=0, inter_op_threads=1, spin=False)
    providers = resolve_providers(device)
    return create_session(path, providers, options, require_gpu=device == "cuda")


def check_session(args: argparse.Namespace) -> list[str]:
    """Create a session on the device and run it once: its providers."""
    session = open_session(served_file(args.repository, args.models[0]), args.device)
    session.run(None, {"images": np.zeros((1, 1, 28, 28), np.float32)})
    return session.get_providers()


def check(args: argparse.Namespace, results: dict) -> None:
    """Name the GPU, then prove a session runs on the device (the environment is recorded
    first, so a failed check still says what was there)."""
    results["environment"] = env = environment(args.device)
    gpu = env["gpu"] or {"name": "none (nvidia-smi not found)"}
    print(f"GPU: {gpu.get('name', gpu.get('error'))}, driver {gpu.get('driver', '-')}")
    env["session_providers"] = check_session(args)
    print(f"onnxruntime {env['onnxruntime']}: {args.models[0]} runs on {env['session_providers']}")


# -- measuring -----------------------------------------------------------------------


def bound_loop(session: Any, batch: int, seconds: float, device: str) -> dict:
    """A closed loop of run_with_iobinding with the input and every output preallocated on
    `device`: what the model costs without host copies."""
    import onnxruntime as ort

    def on_device(shape: list[int], dtype: type) -> Any:
        return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, device, 0)

    binding = session.io_binding()
    images = np.zeros((batch, 1, 28, 28), np.float32)
    binding.bind_ortvalue_input(
        session.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(images, device, 0)
    )
    for output in session.get_outputs():
        shape = [d if isinstance(d, int) else batch for d in output.shape]
        binding.bind_ortvalue_output(output.name, on_device(shape, ORT_DTYPES[output.type]))
    for _ in range(WARMUP_CALLS):
        session.run_with_iobinding(binding)
    latencies = []
    end = time.perf_counter() + seconds
    while (t0 := time.perf_counter()) < end:
        session.run_with_iobinding(binding)
        latencies.append(time.perf_counter() - t0)
    return _summary(np.array(latencies), batch, seconds)


def plain_loop(session: Any, batch: int, seconds: float) -> dict:
    """bench/serve.py's in-process loop, one caller, after the same warm-up."""
    images = {"images": np.zeros((batch, 1, 28, 28), np.float32)}
    for _ in range(WARMUP_CALLS):
        session.run(None, images)
    return in_process(session, batch, 1, seconds)


def _summary(latencies: np.ndarray, batch: int, seconds: float) -> dict:
    return {
        "requests_per_s": len(latencies) / seconds,
        "images_per_s": len(latencies) * batch / seconds,
        "p50_ms": float(np.percentile(latencies, 50) * 1000),
        "p99_ms": float(np.percentile(latencies, 99) * 1000),
    }


def _guarded(measure: Callable[..., dict], *args: Any) -> dict:
    """One measurement; a failure is recorded in its cell and the others go on."""
    try:
        return measure(*args)
    except Exception as error:
        log.exception("measurement failed")
        return {"error": f"{type(error).__name__}: {error}"}


def measure_files(
    files: dict[str, Path], precision: str, batches: list[int], seconds: float, device: str
) -> list[dict]:
    """In-process rows (plain and IO binding) for each model's file at each batch size."""
    rows = []
    for model, path in files.items():
        session = open_session(path, device)
        for batch in batches:
            row = {"model": model, "precision": precision, "batch": batch}
            row["variant"] = path.parents[1].name  # the model's folder in its repository
            row["plain"] = _guarded(plain_loop, session, batch, seconds)
            row["iobinding"] = _guarded(bound_loop, session, batch, seconds, device)
            log.info("%s %s b%d: %s", model, precision, batch, _brief(row, "plain", "iobinding"))
            rows.append(row)
    return rows


def inprocess(args: argparse.Namespace) -> list[dict]:
    files = {model: served_file(args.repository, model) for model in args.models}
    return measure_files(files, "fp32", args.batches, args.seconds, args.device)


def served(args: argparse.Namespace) -> list[dict]:
    """Our server on the device, driven by perf_analyzer at each batch size."""
    if not PERF_ANALYZER.exists():
        raise RuntimeError(f"{PERF_ANALYZER} missing: run bash tools/install-perf-analyzer.sh")
    command = [sys.executable, "-m", "server", "--repository", str(args.repository)]
    command += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1"]
    command += ["--http-port", "-1", "--device", args.device]
    rows = []
    with tempfile.TemporaryDirectory() as logs:
        server = ServerProcess(command, Path(logs) / "server.log")
        try:
            for model in args.models:
                for batch in args.batches:
                    row = {"model": model, "precision": "fp32", "batch": batch}
                    row["served"] = _guarded(
                        perf_analyzer,
                        server.address,
                        model,
                        batch,
                        SERVED_CONCURRENCY,
                        args.seconds,
                    )
                    row["served"]["concurrency"] = SERVED_CONCURRENCY
                    log.info("%s fp32 b%d: %s", model, batch, _brief(row, "served"))
                    rows.append(row)
        finally:
            server.stop()
    return rows


def quantize_supported(zoo: Sequence[str]) -> bool:
    """Whether `zoo export` has its --quantize option (FP16 variants)."""
    done = subprocess.run([*zoo, "export", "--help"], capture_output=True, text=True, cwd=ROOT)
    return "--quantize" in done.stdout


def export_fp16(models: list[str], repository: Path, zoo: Sequence[str]) -> tuple[dict, dict]:
    """`zoo export NAME --quantize fp16` for each model into `repository`: the files of the
    variants it wrote (whatever it names them), and the last line of each failure."""
    files, errors = {}, {}
    for model in models:
        before = set(list_models(repository))
        command = [*zoo, "export", model, "--quantize", "fp16", "--repository", str(repository)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        written = sorted(set(list_models(repository)) - before)
        if done.returncode != 0 or len(written) != 1:
            lines = (done.stderr or done.stdout or f"wrote {written}").strip().splitlines()
            errors[model] = lines[-1]
            log.warning("fp16 export of %s failed: %s", model, errors[model])
            continue
        files[model] = served_file(repository, written[0])
    return files, errors


def fp16(args: argparse.Namespace, zoo: Sequence[str] = ZOO) -> tuple[list[dict], dict]:
    """FP16 variants exported into a temporary repository, measured in process."""
    if not quantize_supported(zoo):
        note = "zoo export has no --quantize option yet: FP16 variants skipped"
        print(note)
        return [], {"available": False, "note": note}
    with tempfile.TemporaryDirectory() as repository:
        files, errors = export_fp16(args.models, Path(repository), zoo)
        rows = measure_files(files, "fp16", args.batches, args.seconds, args.device)
    return rows, {"available": True, "exported": sorted(files), "errors": errors}


def _brief(row: dict, *kinds: str) -> str:
    cells = [
        f"{kind} {row[kind]['images_per_s']:,.0f} img/s p50 {row[kind]['p50_ms']:.2f} ms"
        if "error" not in row[kind]
        else f"{kind} failed"
        for kind in kinds
    ]
    return ", ".join(cells)


# -- results -------------------------------------------------------------------------


def load(output: Path) -> dict:
    return json.loads(output.read_text()) if output.exists() else {"rows": []}


def merge_rows(results: dict, rows: list[dict]) -> None:
    """Add each row's cells to the row of the same model, precision and batch."""
    index = {(r["model"], r["precision"], r["batch"]): r for r in results["rows"]}
    for row in rows:
        key = (row["model"], row["precision"], row["batch"])
        if key in index:
            index[key].update(row)
        else:
            index[key] = row
            results["rows"].append(row)
    models = {model: i for i, model in enumerate(results["models"])}
    results["rows"].sort(
        key=lambda r: (
            models.get(r["model"], len(models)),
            PRECISIONS.index(r["precision"]),
            r["batch"],
        )
    )


def read_steps(path: Path | None) -> list[dict]:
    """bench/gpu.sh's steps file: one `name<TAB>status<TAB>seconds` line a step."""
    if path is None or not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        name, status, seconds = line.split("\t")
        steps.append({"name": name, "status": status, "seconds": float(seconds)})
    return steps


def _cell(row: dict, kind: str, field: str = "images_per_s", digits: int = 0) -> str:
    value = row.get(kind, {})
    if "error" in value:
        return "failed"
    return f"{value[field]:,.{digits}f}" if field in value else "-"


def table(results: dict) -> str:
    env = results.get("environment", {})
    gpu = env.get("gpu") or {}
    lines = [
        "| model | batch | precision | in-process img/s | with IO binding | served img/s "
        "| p50 ms (IO binding / served) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        p50 = f"{_cell(row, 'iobinding', 'p50_ms', 3)} / {_cell(row, 'served', 'p50_ms', 2)}"
        lines.append(
            f"| {row['model']} | {row['batch']} | {row['precision']} | {_cell(row, 'plain')} "
            f"| {_cell(row, 'iobinding')} | {_cell(row, 'served')} | {p50} |"
        )
    lines += [
        "",
        f"{env.get('date', '?')}: {gpu.get('name', 'no GPU')} (driver {gpu.get('driver', '-')}), "
        f"onnxruntime {env.get('onnxruntime', '?')} on {env.get('device', '?')}, "
        f"{env.get('cpus', '?')} CPUs; in process: one caller, {results.get('seconds')} s "
        f"windows; served: perf_analyzer -i grpc, {SERVED_CONCURRENCY} requests in flight.",
    ]
    if note := results.get("fp16", {}).get("note"):
        lines.append(f"FP16: {note}.")
    for model, error in results.get("fp16", {}).get("errors", {}).items():
        lines.append(f"FP16 export of {model} failed: {error}")
    if steps := results.get("steps"):
        lines.append(
            "Steps: "
            + ", ".join(f"{s['name']} {s['status']} ({s['seconds']:.0f} s)" for s in steps)
            + "."
        )
    return "\n".join(lines)


def run_part(part: str, args: argparse.Namespace, results: dict) -> None:
    """One part, its results merged into `results`."""
    if part == "check":
        check(args, results)
    elif part == "inprocess":
        merge_rows(results, inprocess(args))
        _raise_for_failed_cells(results, "plain", "iobinding")
    elif part == "served":
        merge_rows(results, served(args))
        _raise_for_failed_cells(results, "served")
    elif part == "fp16":
        rows, results["fp16"] = fp16(args)
        merge_rows(results, rows)
        if errors := results["fp16"].get("errors"):
            raise RuntimeError(f"FP16 export failed for {', '.join(errors)}")
    elif part == "report":
        results["steps"] = read_steps(args.steps) or results.get("steps", [])
        markdown = table(results)
        args.output.with_suffix(".md").write_text(markdown + "\n")
        print(markdown)


def _raise_for_failed_cells(results: dict, *kinds: str) -> None:
    """A part whose cells failed fails, once its rows are kept."""
    failed = [r for r in results["rows"] for kind in kinds if "error" in r.get(kind, {})]
    if failed:
        raise RuntimeError(f"{len(failed)} {'/'.join(kinds)} measurements failed")


def run_all(args: argparse.Namespace, results: dict) -> int:
    """Every part in order, each timed; a failed part does not stop the next."""
    results["steps"], failed = [], 0
    for part in PARTS:
        start = time.perf_counter()
        status = "ok"
        if part != "report":
            try:
                run_part(part, args, results)
            except Exception:
                traceback.print_exc()
                status, failed = "failed", failed + 1
            results["steps"].append(
                {"name": part, "status": status, "seconds": time.perf_counter() - start}
            )
    run_part("report", args, results)
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", default="all", choices=("all", *PARTS))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    parser.add_argument(
        "--batches", type=lambda s: [int(b) for b in s.split(",")], default=list(BATCHES)
    )
    parser.add_argument("--seconds", type=float, help="measurement window (default by device)")
    parser.add_argument("--output", type=Path, default=RESULTS / "gpu.json")
    parser.add_argument("--steps", type=Path, help="bench/gpu.sh's steps file (for report)")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or DEFAULT_SECONDS[args.device]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    # `check` starts a run's file afresh; the other parts add to it.
    results = {"rows": []} if args.part in ("all", "check") else load(args.output)
    if args.part != "report":  # the report tells what the measuring parts were given
        results.update(seconds=args.seconds, models=args.models, batches=args.batches)
    try:
        if args.part == "all":
            return run_all(args, results)
        run_part(args.part, args, results)
        return 0
    finally:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
