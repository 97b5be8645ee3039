"""`zoo export` end to end on real checkpoints: the repository, refusals, one-line errors."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from zoo import repository
from zoo.card import CARD_METADATA_KEY, ModelCard
from zoo.checkpoint import load_checkpoint, save_checkpoint
from zoo.cli import main as zoo_main
from zoo.export import read_test_data_set
from zoo.models import list_models

SMALL = {"hidden": [32]}  # a small bn_mlp: the export takes about a second
MakeCheckpoint = Callable[..., Path]


def export(*args: str | Path) -> int:
    return zoo_main(["export", "--verify-images", "64", "--no-progress", *map(str, args)])


@pytest.fixture
def runs(make_checkpoint: MakeCheckpoint) -> Path:
    """runs/bn_mlp/model.pt, as `zoo train` lays it out."""
    return make_checkpoint("bn_mlp", **SMALL).parents[1]


def test_export_writes_a_triton_repository(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    assert zoo_main(["export", "bn_mlp", "--checkpoints-dir", str(runs), "--repository", str(repo),
                     "--verify-images", "64"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert out.startswith("bn_mlp v1 -> ") and "argmax agreement 100.00%" in out
    assert "bn_mlp: write" in err  # the per-model progress bar

    model_dir = repo / "bn_mlp"
    config = repository.read_model_config(model_dir)
    assert (config.platform, config.max_batch_size) == ("onnxruntime_onnx", 128)
    assert [(t.name, list(t.dims)) for t in config.input] == [("images", [1, 28, 28])]
    assert [(t.name, list(t.dims)) for t in config.output] == [
        ("logits", [10]),
        ("probabilities", [10]),
    ]
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    assert repository.list_versions(model_dir, config.version_policy) == [1]
    onnx_path = repository.model_file(model_dir, 1, config)

    card = repository.read_card(model_dir)
    assert (
        card is not None and card.onnx_sha256 == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    )
    assert card.opset == 18 and card.metrics["onnx_max_abs_diff"].value <= 1e-4
    proto = onnx.load(onnx_path)
    assert not proto.graph.value_info  # onnxruntime infers it again; the size budget is tight
    embedded = {p.key: p.value for p in proto.metadata_props}[CARD_METADATA_KEY]
    assert ModelCard.from_json(embedded).model_dump(
        exclude={"onnx_sha256", "metrics"}
    ) == card.model_dump(exclude={"onnx_sha256", "metrics"})
    assert not [p for p in repo.rglob(".*")]  # the staging folder is gone
    # Readable by others (a server or Triton under another user), as mkdir with the umask makes.
    umask = os.umask(0)
    os.umask(umask)
    assert all(
        p.stat().st_mode & 0o777 == 0o777 & ~umask
        for p in [model_dir, *model_dir.rglob("*")]
        if p.is_dir()
    )


def test_test_data_set_holds_pytorch_outputs(runs: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert export("bn_mlp", "--checkpoints-dir", runs, "--repository", repo) == 0
    inputs, outputs = read_test_data_set(repo / "bn_mlp" / "1" / "test_data_set_0")
    assert list(inputs) == ["images"] and list(outputs) == ["logits", "probabilities"]
    images = inputs["images"]
    assert images.dtype == np.float32 and images.shape[1:] == (1, 28, 28)
    assert images.min() >= 0 and images.max() <= 1
    # The stored outputs are the checkpoint's PyTorch logits, and onnxruntime reproduces them.
    model, _ = load_checkpoint(runs / "bn_mlp" / "model.pt")
    with torch.no_grad():
        np.testing.assert_allclose(
            outputs["logits"], model(torch.from_numpy(images.copy())).numpy(), atol=1e-6
        )
    session = ort.InferenceSession(
        str(repo / "bn_mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    for got, (name, expected) in zip(session.run(None, inputs), outputs.items(), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=name)


def test_existing_version_is_refused_unless_forced(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    args = ("bn_mlp", "--checkpoints-dir", runs, "--repository", repo)
    assert export(*args) == 0
    first = (repo / "bn_mlp" / "1" / "model.onnx").stat()
    capsys.readouterr()
    assert export(*args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists already: pass --force" in err and "--version 2" in err
    assert (repo / "bn_mlp" / "1" / "model.onnx").stat().st_mtime_ns == first.st_mtime_ns
    assert export(*args, "--force") == 0
    assert (repo / "bn_mlp" / "1" / "model.onnx").stat().st_ino != first.st_ino
    assert export(*args, "--version", "2") == 0
    assert sorted(p.name for p in (repo / "bn_mlp").iterdir()) == [
        "1",
        "2",
        "card.json",
        "config.pbtxt",
    ]


def write_garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00not a checkpoint" * 10)
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def bare_state_dict(make_checkpoint: MakeCheckpoint) -> Path:
    """A bn_mlp's weights saved without the card, as `torch.save(model.state_dict())` does."""
    path = make_checkpoint("bn_mlp", **SMALL)
    model, _ = load_checkpoint(path)
    torch.save(model.state_dict(), path)
    return path


def other_architecture(make_checkpoint: MakeCheckpoint) -> Path:
    """plain_mlp_relu's weights under a bn_mlp card."""
    path = make_checkpoint("bn_mlp", **SMALL)
    _, card = load_checkpoint(path)
    model, _ = load_checkpoint(make_checkpoint("plain_mlp_relu"))
    return save_checkpoint(path, model, card)


MISTAKES: dict[str, tuple[Callable[[MakeCheckpoint, Path], list[str | Path]], str]] = {
    "unknown model": (lambda mk, t: ["bn_mpl"], "unknown model 'bn_mpl'; did you mean bn_mlp"),
    "no model": (lambda mk, t: [], "name the models to export, or pass --all"),
    "models and --all": (lambda mk, t: ["bn_mlp", "--all"], "(not both)"),
    "missing checkpoint": (
        lambda mk, t: ["bn_mlp", "--checkpoint", t / "nope.pt"],
        "does not exist",
    ),
    "binary file as checkpoint": (
        lambda mk, t: ["bn_mlp", "--checkpoint", write_garbage(t / "bad.pt")],
        "bad.pt is not a modelzoo checkpoint: expected the zip archive that `zoo train` writes,"
        " got 170 bytes of binary data starting 00 6e 6f 74 20 61 20 63",
    ),
    "text file as checkpoint": (
        lambda mk, t: ["bn_mlp", "--checkpoint", write_text(t / "notes.pt", "trained on Monday")],
        "notes.pt is not a modelzoo checkpoint: expected the zip archive that `zoo train` writes,"
        " got a text file starting 'trained on Monday'",
    ),
    "bare state_dict as checkpoint": (
        lambda mk, t: ["bn_mlp", "--checkpoint", bare_state_dict(mk)],
        "is not a modelzoo checkpoint: expected a dict of format, card and state_dict,"
        " got a dict of net.2.weight, net.3.bias, net.3.num_batches_tracked, ...",
    ),
    "another model's checkpoint": (
        lambda mk, t: ["bn_mlp", "--checkpoint", mk("plain_mlp_relu")],
        "holds model 'plain_mlp_relu', expected 'bn_mlp'",
    ),
    "another architecture": (
        lambda mk, t: ["bn_mlp", "--checkpoint", other_architecture(mk)],
        "does not match architecture 'bn_mlp'",
    ),
    "--checkpoint with two models": (
        lambda mk, t: ["bn_mlp", "bn_cnn", "--checkpoint", mk("bn_mlp")],
        "--checkpoint names one model's checkpoint, got 2",
    ),
    "old opset": (lambda mk, t: ["bn_mlp", "--opset", "13"], "--opset: Input should be greater"),
    "preferred batch above max": (
        lambda mk, t: ["bn_mlp", "--max-batch-size", "16", "--preferred-batch-sizes", "8,32"],
        "--preferred-batch-sizes: each must be between 1 and --max-batch-size 16",
    ),
    "unwritable repository": (
        lambda mk, t: [
            "bn_mlp",
            "--checkpoint",
            mk("bn_mlp", **SMALL),
            "--repository",
            write_garbage(t / "file"),
        ],
        "cannot write to repository",
    ),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_mistake_gives_one_line_and_writes_nothing(
    mistake: str,
    make_checkpoint: MakeCheckpoint,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_args, message = MISTAKES[mistake]
    args = make_args(make_checkpoint, tmp_path)
    repo = tmp_path / "repo"
    if "--repository" not in args:
        args += ["--repository", repo]
    assert export(*args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("zoo export: error: ") and message in err, err
    assert not repo.exists() or not any(repo.iterdir())


def test_missing_repository_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert zoo_main(["export", "bn_mlp"]) == 2
    assert capsys.readouterr().err == "zoo export: error: --repository: Field required\n"


def test_all_checks_every_checkpoint_before_writing(
    make_checkpoint: MakeCheckpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    *present, missing = [spec.name for spec in list_models()]
    for name in present:
        runs = make_checkpoint(name).parents[1]
    repo = tmp_path / "repo"
    assert export("--all", "--checkpoints-dir", runs, "--repository", repo) == 2
    assert f"{runs / missing / 'model.pt'} does not exist" in capsys.readouterr().err
    assert not repo.exists()
