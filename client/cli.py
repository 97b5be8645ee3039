"""`zoo infer`, `zoo describe` and `zoo models --url`: the client's command line.

Exit status: 0 ok, 2 a usage error (bad flag, unreadable image), 3 a server error (down,
unknown model); the `zoo` dispatcher prints a ZooError as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from client.images import read_image_file
from client.prediction import Prediction
from client.settings import ClientSettings
from client.sync import ZooClient
from zoo.errors import InvalidArgumentError
from zoo.settings import add_settings_arguments, settings_from_args


class OneLineParser(argparse.ArgumentParser):
    """argparse that raises a one-line usage error instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise InvalidArgumentError(f"{message} (see {self.prog} --help)")


def client_parser(prog: str, description: str) -> OneLineParser:
    parser = OneLineParser(prog=prog, description=description)
    add_settings_arguments(parser, ClientSettings)
    return parser


def open_client(args: argparse.Namespace) -> ZooClient:
    """A client from the connection flags; they are checked before anything else is done."""
    connection = settings_from_args(ClientSettings, args).connection()
    return ZooClient(connection=connection)


def read_inputs(paths: list[str]) -> tuple[list[str], np.ndarray]:
    """Each file's images, named by file (and index, for an .npy file holding several)."""
    names, tensors = [], []
    for path in paths:
        tensor = read_image_file(Path(path))
        names += [path] if len(tensor) == 1 else [f"{path}[{i}]" for i in range(len(tensor))]
        tensors.append(tensor)
    return names, np.concatenate(tensors)


def infer_main(argv: list[str]) -> int:
    parser = client_parser("zoo infer", "Classify images (PNG, JPEG or .npy) with a served model.")
    parser.add_argument("--model", required=True, help="served model name")
    parser.add_argument("--version", help="model version (default: the server's choice)")
    parser.add_argument(
        "--top-k", type=int, default=1, help="labels to show per image (default: 1)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list, one object per image"
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (.png, .jpg, .npy)")
    args = parser.parse_args(argv)
    with open_client(args) as client:
        names, batch = read_inputs(args.images)
        prediction = client.infer(args.model, batch, version=args.version, top_k=args.top_k)
    print(format_json(names, prediction) if args.json else format_predictions(names, prediction))
    return 0


def format_json(names: list[str], prediction: Prediction) -> str:
    rows = [{"image": name, **p.to_dict()} for name, p in zip(names, prediction, strict=True)]
    return json.dumps(rows, indent=2)


def format_predictions(names: list[str], prediction: Prediction) -> str:
    width = max(len("image"), *(len(n) for n in names))
    lines = [f"{'image':<{width}}  label  probability  top-{prediction.top_k}"]
    for name, p in zip(names, prediction, strict=True):
        top = ", ".join(f"{label} {prob:.3f}" for label, prob in p.top_k)
        lines.append(f"{name:<{width}}  {p.label:<5}  {p.probability:>11.4f}  {top}")
    return "\n".join(lines)


def describe_main(argv: list[str]) -> int:
    parser = client_parser("zoo describe", "Print a served model's card (JSON).")
    parser.add_argument("model", help="served model name")
    parser.add_argument("--version", help="model version (default: the server's choice)")
    args = parser.parse_args(argv)
    with open_client(args) as client:
        print(client.model_card(args.model, args.version).to_json())
    return 0


def models_main(argv: list[str]) -> int:
    parser = client_parser(
        "zoo models", "List the models a server serves, with versions and state."
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    args = parser.parse_args(argv)
    with open_client(args) as client:
        models = client.list_models()
    rows: list[dict[str, Any]] = [{**asdict(m), "ready": m.ready} for m in models]
    print(json.dumps(rows, indent=2) if args.json else format_models(rows))
    return 0


def format_models(rows: list[dict[str, Any]]) -> str:
    width = max(len("model"), *(len(r["name"]) for r in rows)) if rows else len("model")
    lines = [f"{'model':<{width}}  version  ready  state"]
    for r in rows:
        state = f"{r['state']} ({r['reason']})" if r["reason"] else r["state"]
        lines.append(
            f"{r['name']:<{width}}  {r['version']:<7}  {'yes' if r['ready'] else 'no':<5}  {state}"
        )
    return "\n".join(lines)
