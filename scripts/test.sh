#!/usr/bin/env bash
# The test suite: sets up .venv if needed, then runs the fast suite (pass -m slow for the slow one).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
bash tools/install-perf-analyzer.sh || echo "[setup] perf_analyzer unavailable: its tests will skip" >&2
bash tools/install-chromium.sh || echo "[setup] no Chromium: the web page's tests will skip" >&2
exec python -m pytest "$@"
