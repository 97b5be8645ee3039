"""Regenerate the Python code for our .proto files, or check that it is current.

    python -m proto.generate          # rewrite proto/*_pb2*.py
    python -m proto.generate --check  # exit 1 if they differ from the .proto files

protoc writes `import model_config_pb2`, which only works with proto/ on sys.path;
we rewrite it to `from proto import model_config_pb2` so the stubs import as a
package. The dev extras' `protobuf<5` keeps pip on a grpcio-tools whose generated code
targets protobuf 4.25, which tritonclient 2.51 also needs.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILES = ("model_config.proto", "grpc_service.proto")
# model_config.proto defines no service, so its _grpc module would be empty.
_NO_SERVICE = ("model_config_pb2_grpc.py",)
# protoc's flat import of a sibling module -> a package import.
_FLAT_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)

log = logging.getLogger(__name__)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on PROTO_FILES into `out_dir`; return the files written."""
    from grpc_tools import protoc  # dev-only dependency, so imported here

    args = [
        "protoc",
        f"--proto_path={PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    for name in _NO_SERVICE:
        (out_dir / name).unlink()
    written = sorted(p for p in out_dir.iterdir() if "_pb2" in p.name)
    for path in written:
        text = _FLAT_IMPORT.sub(r"from proto import \1 as \2", path.read_text())
        path.write_text(text)
    return written


def stale_files() -> list[str]:
    """Names of generated files that differ from a fresh generation (empty: current)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [p.name for p in fresh if _read(PROTO_DIR / p.name) != p.read_text()]


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        stale = stale_files()
        if stale:
            log.error("stale generated code: %s (run python -m proto.generate)", ", ".join(stale))
            return 1
        log.info("generated code is current")
        return 0
    for path in generate(PROTO_DIR):
        log.info("wrote %s", path.relative_to(PROTO_DIR.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
