# Sourced by run.sh and test.sh: create or update the project's virtual environment.
# The install is redone only when pyproject.toml changed since the last one.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${ZOO_VENV:-$ROOT/.venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV" >&2
    "${PYTHON:-python3}" -m venv "$VENV"
fi
stamp="$VENV/.modelzoo-installed"
want=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing modelzoo and its dependencies (torch==2.13.0 CPU) into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[dev]"
    echo "$want" >"$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
