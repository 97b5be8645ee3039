#!/usr/bin/env bash
# The GPU check and benchmark in one run of under 8 minutes, on a machine with a CUDA GPU:
# onnxruntime-gpu installed in its own virtual environment, a session on the CUDA
# provider, `pytest -m gpu`, then bench/gpu.py's parts (in-process and served throughput,
# FP16 variants, the report). Each step is timed and logged and runs under what is left of
# the budget; a step that fails or runs out of time does not stop the ones after it.
#
#   bash bench/gpu.sh                       # on the GPU machine
#   ZOO_GPU_DEVICE=cpu bash bench/gpu.sh    # the same steps on the CPU provider, tiny windows
#
# ZOO_GPU_WHEELS=DIR   install from this folder of wheels, without an index (a machine with
#                      no network): onnxruntime-gpu, and every other wheel in it
# ZOO_GPU_VENV         the GPU environment (default .venv-gpu), layered over the project's
#                      .venv ($ZOO_VENV), which it leaves untouched; without one, over python3
# ZOO_ORT_GPU_VERSION  default: the newest onnxruntime-gpu not newer than the project
#                      environment's onnxruntime (PyPI's GPU builds can lag the CPU ones)
# ZOO_GPU_RESULTS      folder for gpu.json, gpu.md and gpu.log (default bench/results)
# ZOO_GPU_BUDGET_S     the whole run's limit in seconds (default 450: with the 10 s a
#                      step past its limit gets to stop, under 8 minutes)
# ZOO_GPU_SKIP         steps to leave out: setup perf_analyzer check pytest inprocess served fp16
# ZOO_GPU_ARGS         more arguments for bench/gpu.py (e.g. "--models bn_cnn --seconds 2")
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Folders given relative to where the script was started from, which it then leaves.
absolute() { if [ -n "$1" ]; then realpath -m "$1"; fi; }
ZOO_GPU_WHEELS=$(absolute "${ZOO_GPU_WHEELS:-}")
GPU_VENV=$(absolute "${ZOO_GPU_VENV:-$ROOT/.venv-gpu}")
RESULTS=$(absolute "${ZOO_GPU_RESULTS:-$ROOT/bench/results}")
cd "$ROOT"
DEVICE=${ZOO_GPU_DEVICE:-cuda}
BASE_VENV=${ZOO_VENV:-$ROOT/.venv}
BUDGET=${ZOO_GPU_BUDGET_S:-450}
REPORT_RESERVE=20 # seconds kept for the report, so that whatever was measured is written
read -r -a GPU_ARGS <<<"${ZOO_GPU_ARGS:-}"
if [ -x "$BASE_VENV/bin/python" ]; then BASE_PYTHON=$BASE_VENV/bin/python; else BASE_PYTHON=python3; fi
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu.log
: >"$LOG"
STEPS=$(mktemp)
trap 'rm -f "$STEPS"' EXIT
export BASE_PYTHON GPU_VENV ZOO_GPU_WHEELS ZOO_ORT_GPU_VERSION="${ZOO_ORT_GPU_VERSION:-}"

log() { printf '[gpu.sh %3d s] %s\n' "$SECONDS" "$*" | tee -a "$LOG" >&2; }

step() { # step NAME LIMIT_S COMMAND...: COMMAND timed and logged, under what is left
    local name=$1 limit=$2 rc=0 status start=$SECONDS
    shift 2
    if [[ " ${ZOO_GPU_SKIP:-} " == *" $name "* ]]; then
        log "$name: skipped (ZOO_GPU_SKIP)"
        printf '%s\tskipped\t0\n' "$name" >>"$STEPS"
        return 0
    fi
    local reserve=$REPORT_RESERVE
    if [ "$name" = report ]; then reserve=0; fi
    local left=$((BUDGET - SECONDS - reserve))
    if ((left < limit)); then limit=$left; fi
    if ((limit < 5)); then
        log "$name: not started, the budget of $BUDGET s is spent"
        printf '%s\tout of time\t0\n' "$name" >>"$STEPS"
        return 0
    fi
    log "$name: started (limit $limit s)"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG" || rc=${PIPESTATUS[0]}
    case $rc in
        0) status=ok ;;
        124 | 137) status="timed out" ;;
        *) status="failed (exit $rc)" ;;
    esac
    log "$name: $status after $((SECONDS - start)) s"
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >>"$STEPS"
}

setup_gpu_venv() {
    # onnxruntime-gpu installs the same `onnxruntime` package as the CPU build: in a venv of
    # its own whose site-packages come before the project's, it shadows the CPU build there
    # and only there.
    set -euo pipefail
    # Without a pip of its own, nothing but onnxruntime-gpu differs from the project's venv.
    [ -x "$GPU_VENV/bin/python" ] || "$BASE_PYTHON" -m venv --without-pip "$GPU_VENV"
    local purelib='import sysconfig; print(sysconfig.get_path("purelib"))' site base_site
    site=$("$GPU_VENV/bin/python" -c "$purelib")
    base_site=$("$BASE_PYTHON" -c "$purelib")
    echo "import site; site.addsitedir('$base_site')" >"$site/zoo-project-packages.pth"
    local version=$ZOO_ORT_GPU_VERSION
    if [ -z "$version" ]; then
        version=$("$BASE_PYTHON" -c 'import importlib.metadata as m; print(m.version("onnxruntime"))')
    fi
    local pip=("$BASE_PYTHON" -m pip --python "$GPU_VENV/bin/python" install -q) wheels=()
    if [ -n "$ZOO_GPU_WHEELS" ]; then
        pip+=(--no-index --find-links "$ZOO_GPU_WHEELS")
        wheels=("$ZOO_GPU_WHEELS"/*.whl)
    fi
    echo "installing onnxruntime-gpu<=$version (project environment: $BASE_PYTHON)"
    # The extras bring CUDA and cuDNN as wheels; without them (offline, none in the folder)
    # the machine's own CUDA libraries must do.
    "${pip[@]}" "onnxruntime-gpu[cuda,cudnn]<=$version" "${wheels[@]}" \
        || { echo "without the cuda,cudnn extras:" && "${pip[@]}" "onnxruntime-gpu<=$version" "${wheels[@]}"; }
    "$GPU_VENV/bin/python" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'
}
export -f setup_gpu_venv

log "device $DEVICE, budget $BUDGET s, results in $RESULTS"
if [ "$DEVICE" = cuda ]; then
    step setup 240 bash -c setup_gpu_venv
    nvidia_libs=$("$GPU_VENV/bin/python" -c 'import glob, sys
print(":".join(d for p in sys.path for d in sorted(glob.glob(p + "/nvidia/*/lib"))))' 2>/dev/null || true)
    # onnxruntime's CUDA provider finds the CUDA and cuDNN wheels' libraries only through
    # the loader path (deploy/Dockerfile.cuda does the same).
    export LD_LIBRARY_PATH="$nvidia_libs${nvidia_libs:+${LD_LIBRARY_PATH:+:}}${LD_LIBRARY_PATH:-}"
fi
if [ "$DEVICE" = cuda ] && [ -x "$GPU_VENV/bin/python" ]; then PY=$GPU_VENV/bin/python; else PY=$BASE_PYTHON; fi
log "python: $PY"
step perf_analyzer 60 bash tools/install-perf-analyzer.sh
bench=("$PY" bench/gpu.py --device "$DEVICE" --output "$RESULTS/gpu.json" "${GPU_ARGS[@]}")
step check 60 "${bench[@]}" check
# Other modules' missing test dependencies must not keep the gpu tests from running.
step pytest 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors
step inprocess 120 "${bench[@]}" inprocess
step served 150 "${bench[@]}" served
step fp16 180 "${bench[@]}" fp16
step report "$REPORT_RESERVE" "${bench[@]}" report --steps "$STEPS"
failed=$(awk -F'\t' '$2 != "ok" && $2 != "skipped"' "$STEPS" | wc -l)
log "done in $SECONDS s, $failed step(s) not ok; results: $RESULTS/gpu.json, $RESULTS/gpu.md, log $LOG"
exit $((failed > 0))
