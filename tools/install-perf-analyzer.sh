#!/usr/bin/env bash
# Make Triton's perf_analyzer (shipped in tritonclient==2.51.0's wheel as .venv/bin/perf_analyzer)
# runnable here. Idempotent: does nothing when it already runs.
#
# The binary needs two libraries Debian 12 lacks by default (newer perf-analyzer wheels
# need a newer glibc than Debian 12's, so we stay on this one):
#   libb64.so.0d     from the Debian package libb64-0d
#   libcudart.so.12  from the nvidia-cuda-runtime-cu12 wheel (no GPU needed to load it)
# The binary is moved to perf_analyzer.bin and replaced by a wrapper that puts the
# wheel's lib folder on LD_LIBRARY_PATH.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${ZOO_VENV:-$ROOT/.venv}
BIN="$VENV/bin/perf_analyzer"
REAL="$VENV/bin/perf_analyzer.bin"
CUDA_RUNTIME_WHEEL="nvidia-cuda-runtime-cu12==12.4.127"

runs() { "$BIN" --version >/dev/null 2>&1; }

if [ ! -e "$BIN" ]; then
    echo "[perf_analyzer] $BIN missing: install the dev extras (tritonclient[grpc]==2.51.0)" >&2
    exit 1
fi
if runs; then
    exit 0
fi

if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
    echo "[perf_analyzer] installing libb64-0d (Debian)" >&2
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get install -y -q libb64-0d >/dev/null \
        || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q libb64-0d >/dev/null; }
fi

if ! "$VENV/bin/python" -c "import nvidia.cuda_runtime" 2>/dev/null; then
    echo "[perf_analyzer] installing $CUDA_RUNTIME_WHEEL" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$CUDA_RUNTIME_WHEEL"
fi
LIBDIR=$("$VENV/bin/python" -c \
    "import nvidia.cuda_runtime as m, os; print(os.path.join(list(m.__path__)[0], 'lib'))")

# A reinstalled tritonclient puts the ELF binary back: wrap whatever ELF is at $BIN.
if [ "$(head -c 4 "$BIN" | tr -d '\0')" = "$(printf '\177ELF')" ]; then
    mv "$BIN" "$REAL"
fi
cat >"$BIN" <<WRAPPER
#!/usr/bin/env bash
# Written by tools/install-perf-analyzer.sh: Triton's perf_analyzer with its libcudart.
export LD_LIBRARY_PATH="$LIBDIR\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$REAL" "\$@"
WRAPPER
chmod +x "$BIN"

if ! runs; then
    echo "[perf_analyzer] still not runnable:" >&2
    "$BIN" --version >&2 || true
    exit 1
fi
echo "[perf_analyzer] ready: $BIN" >&2
