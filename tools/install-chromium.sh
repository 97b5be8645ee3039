#!/usr/bin/env bash
# Make a Chromium available for the web page's tests (tests/web), which drive it through
# Playwright by path: Playwright's own browser download is not used. Idempotent: does
# nothing when a Chromium is already on PATH (or $ZOO_CHROMIUM names one).
# Installs Debian's `chromium` package quietly with apt-get when it can (as root, or with
# sudo that needs no password); otherwise says so and leaves the tests to skip.
set -euo pipefail

if [ -n "${ZOO_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 \
    || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "[chromium] no apt-get here: install Chromium by hand or set ZOO_CHROMIUM" >&2
    exit 1
fi
if [ "$(id -u)" = 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "[chromium] not root and no password-less sudo: apt-get install chromium by hand" >&2
    exit 1
fi
echo "[chromium] installing Debian's chromium (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get install -y -q chromium >/dev/null 2>&1 \
    || { "${SUDO[@]}" apt-get update -q >/dev/null && "${SUDO[@]}" apt-get install -y -q chromium >/dev/null; }
command -v chromium >/dev/null 2>&1
echo "[chromium] ready: $(chromium --version 2>/dev/null || command -v chromium)" >&2
