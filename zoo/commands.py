"""`zoo models`: the registry (or, with --url, what a server serves)."""

from __future__ import annotations

import argparse
import json

from zoo.models import list_models
from zoo.models.layers import count_params


def registry_rows() -> list[dict[str, object]]:
    return [
        {
            "name": spec.name,
            "family": spec.family,
            "params": count_params(spec.build()),
            "default_epochs": spec.recipe.epochs,
            "target_accuracy": spec.target_accuracy,
            "description": spec.description,
        }
        for spec in list_models()
    ]


def models_main(argv: list[str]) -> int:
    if "--url" in argv or any(a.startswith("--url=") for a in argv):
        from client.cli import models_main as served_models_main

        return served_models_main(argv)
    parser = argparse.ArgumentParser(prog="zoo models", description="List the registered models.")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.add_argument("--names", action="store_true", help="print the names only, one a line")
    parser.add_argument("--url", help="list the models a server serves instead (HOST:PORT)")
    args = parser.parse_args(argv)
    if args.names:
        print("\n".join(spec.name for spec in list_models()))
        return 0
    rows = registry_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<18} {'family':<10} {'params':>10} {'epochs':>6}  description")
    for r in rows:
        name, family, params, epochs = r["name"], r["family"], r["params"], r["default_epochs"]
        print(f"{name:<18} {family:<10} {params:>10,} {epochs:>6}  {r['description']}")
    return 0
