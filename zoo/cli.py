"""The `zoo` command: one dispatcher, each subcommand implemented beside its package.

Every subcommand is a `main(argv) -> int`, imported only when used so that
`zoo models` does not pay for importing the server. A `ZooError` (a user's mistake
or an unreachable server) is printed as one line, without a traceback.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys

from zoo.errors import ZooError

# subcommand -> ("module:function", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("zoo.commands:models_main", "list registered models (or served ones with --url)"),
    "train": ("zoo.train:main", "train a registered model on MNIST"),
    "evaluate": ("zoo.train:evaluate_main", "MNIST test accuracy of a checkpoint"),
    "experiment": ("zoo.experiments.cli:main", "run a lecture claim as a measured experiment"),
    "export": ("zoo.export.cli:main", "fold BatchNorm, export to ONNX, verify, write a repository"),
    "serve": ("server.cli:main", "serve a model repository over gRPC (KServe v2 / Triton)"),
    "infer": ("client.cli:infer_main", "classify images with a served model"),
    "describe": ("client.cli:describe_main", "print a served model's card"),
    "load": ("client.load:main", "load-test a served model"),
}


def usage() -> str:
    lines = ["usage: zoo COMMAND [options]   (zoo COMMAND --help for its options)", ""]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"zoo: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Like other Unix tools, stop quietly when the reader of our output goes away (`| head`).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    module_name, func_name = COMMANDS[name][0].split(":")
    command = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(command(rest) or 0)
    except ZooError as error:
        print(f"zoo {name}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"zoo {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
