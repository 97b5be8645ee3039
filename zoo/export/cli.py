"""`zoo export MODEL... | --all [--checkpoint PATH] --repository DIR [--version N] [--force]`.

Every checkpoint is loaded and every target version checked before anything is
written, so a mistake in the fifth model of `--all` does not leave four exported.
With `--quantize int8|fp16` the float models already exported are read instead of
checkpoints (every one found and checked first, likewise) and each is written as its
variant `<model>_int8` / `<model>_fp16`.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from zoo.card import ModelCard
from zoo.checkpoint import load_checkpoint
from zoo.data import load_mnist
from zoo.errors import InvalidArgumentError
from zoo.export.pipeline import (
    ExportResult,
    ExportSettings,
    VariantResult,
    export_model,
    export_variant,
    float_source,
    refuse_existing,
    variant_name,
)
from zoo.export.precision import Precision
from zoo.models import get_spec, list_models
from zoo.settings import add_settings_arguments, settings_from_args

CHECKPOINT_FILENAME = "model.pt"  # what `zoo train` writes into runs/<model>/


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo export",
        description="Fold BatchNorm, export to ONNX, verify with onnxruntime, write a repository.",
    )
    parser.add_argument("models", nargs="*", metavar="MODEL", help="registered model names")
    parser.add_argument("--all", action="store_true", help="every registered model")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint of the one MODEL (default: <checkpoints-dir>/MODEL/model.pt)",
    )
    add_settings_arguments(parser, ExportSettings)
    return parser


def model_names(args: argparse.Namespace) -> list[str]:
    """Registered names from MODEL... or --all."""
    if args.all == bool(args.models):
        raise InvalidArgumentError("name the models to export, or pass --all (not both)")
    names = [spec.name for spec in list_models()] if args.all else list(dict.fromkeys(args.models))
    for name in names:
        get_spec(name)  # an unknown name fails here, with close matches suggested
    return names


def checkpoint_paths(args: argparse.Namespace, settings: ExportSettings) -> dict[str, Path]:
    """Model name -> checkpoint path, from MODEL... or --all and --checkpoint."""
    names = model_names(args)
    if args.checkpoint is not None:
        if len(names) != 1:
            raise InvalidArgumentError(
                f"--checkpoint names one model's checkpoint, got {len(names)} models"
            )
        return {names[0]: args.checkpoint}
    return {name: settings.checkpoints_dir / name / CHECKPOINT_FILENAME for name in names}


def export_variants(
    names: list[str], precision: Precision, settings: ExportSettings, command: str
) -> list[VariantResult]:
    sources = {name: float_source(settings, name) for name in names}
    for name in names:
        refuse_existing(settings, variant_name(name, precision))
    images, labels = test_data(settings.verify_images)
    data = (images.numpy(), labels.numpy())
    results = []
    with tqdm(
        total=len(sources), unit="model", disable=not settings.progress, file=sys.stderr
    ) as bar:
        for name, source in sources.items():
            show = functools.partial(_show_stage, bar, variant_name(name, precision))
            results.append(export_variant(source, precision, settings, data, command, show))
            bar.update()
    return results


def test_data(limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_mnist("test").tensors()
    return images[:limit], labels[:limit]


def export_all(
    checkpoints: dict[str, Path], settings: ExportSettings, command: str
) -> list[ExportResult]:
    loaded: dict[str, tuple[nn.Module, ModelCard]] = {}
    for name, path in checkpoints.items():
        loaded[name] = load_checkpoint(path, expect_model=name)
        refuse_existing(settings, name)
    data = test_data(settings.verify_images)
    results = []
    with tqdm(
        total=len(loaded), unit="model", disable=not settings.progress, file=sys.stderr
    ) as bar:
        for name, (model, card) in loaded.items():
            show = functools.partial(_show_stage, bar, name)
            results.append(export_model(model, card, settings, data, command, on_stage=show))
            bar.update()
    return results


def _show_stage(bar: tqdm, name: str, stage: str) -> None:
    bar.set_description(f"{name}: {stage}")


def describe(result: ExportResult) -> str:
    accuracy = result.verification.levels[0].accuracy
    accuracy_text = "" if accuracy is None else f", accuracy {100 * accuracy:.2f}%"
    return (
        f"{result.name} v{result.version} -> {result.onnx_path} "
        f"({result.onnx_bytes / 1e6:.1f} MB, {result.seconds:.1f} s): "
        f"{result.verification.summary()}{accuracy_text}"
    )


def describe_variant(result: VariantResult) -> str:
    return (
        f"{result.name} v{result.version} -> {result.onnx_path} "
        f"({result.onnx_bytes / 1e6:.2f} MB, from {result.source}, {result.seconds:.1f} s): "
        f"{result.report.summary()}"
    )


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(ExportSettings, args)
    command = shlex.join(["zoo", "export", *argv])
    if settings.quantize is not None:
        if args.checkpoint is not None:
            raise InvalidArgumentError(
                "--quantize reads the exported float model, not a checkpoint: "
                "drop --checkpoint (or name the float model's repository with --float-repository)"
            )
        for variant in export_variants(model_names(args), settings.quantize, settings, command):
            print(describe_variant(variant))
        return 0
    for result in export_all(checkpoint_paths(args, settings), settings, command):
        print(describe(result))
    return 0
