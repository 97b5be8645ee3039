"""Real short training runs on MNIST, checkpoints, and the CLIs' behaviour on a user's mistakes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo.checkpoint import load_checkpoint, save_checkpoint
from zoo.errors import CheckpointError
from zoo.fit import draw_shifts, translate
from zoo.models import list_models
from zoo.train import TrainSettings, train

# The unpacked MNIST test images 0..999 (fixed), enough to tell a trained net from chance.
SMALL_TEST = 1000


def zoo(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zoo.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def trained_bn_cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("bn_cnn")
    settings = TrainSettings(
        model="bn_cnn", epochs=1, limit_train=5000, limit_test=SMALL_TEST, out=out, progress=False
    )
    _, card, _ = train(settings, command="test")
    return out, card.metrics["test_accuracy"].value


def test_short_bn_cnn_run_learns_mnist(trained_bn_cnn: tuple[Path, float]) -> None:
    out, accuracy = trained_bn_cnn
    assert accuracy >= 0.95
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["epoch"] == 1 and rows[0]["images_per_s"] > 0
    assert set(rows[0]) >= {"train_loss", "val_accuracy", "lr", "images_per_s"}
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_round_trip_reproduces_logits_exactly(
    trained_bn_cnn: tuple[Path, float], tmp_path: Path
) -> None:
    out, _ = trained_bn_cnn
    model, card = load_checkpoint(out / "model.pt")
    assert card.name == "bn_cnn" and card.training["epochs"] == 1
    torch.load(out / "model.pt", weights_only=True)  # loadable without unpickling code
    x = torch.rand(16, 1, 28, 28)
    save_checkpoint(tmp_path / "again.pt", model, card)
    again, _ = load_checkpoint(tmp_path / "again.pt")
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_same_seed_same_weights(tmp_path: Path) -> None:
    weights = []
    for run in ("a", "b"):
        settings = TrainSettings(
            model="bn_mlp",
            epochs=1,
            limit_train=1024,
            limit_test=100,
            out=tmp_path / run,
            progress=False,
            seed=7,
        )
        model, _, _ = train(settings, command="test")
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_random_shifts_move_whole_pixels() -> None:
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 14, 14] = 1.0
    shifted = translate(x, draw_shifts(64, 2, torch.Generator().manual_seed(0)))
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), torch.ones(64))  # one pixel moved, none lost
    rows, cols = shifted[:, 0].nonzero()[:, 1], shifted[:, 0].nonzero()[:, 2]
    assert rows.min() >= 12 and rows.max() <= 16 and cols.min() >= 12 and cols.max() <= 16
    assert len({(int(r), int(c)) for r, c in zip(rows, cols, strict=True)}) > 5


def test_other_architecture_checkpoint_is_refused(trained_bn_cnn: tuple[Path, float]) -> None:
    with pytest.raises(CheckpointError, match="holds model 'bn_cnn', expected 'resnet'"):
        load_checkpoint(trained_bn_cnn[0] / "model.pt", expect_model="resnet")


def test_models_json_lists_every_registered_model() -> None:
    result = zoo("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == [s.name for s in list_models()]
    assert all({"name", "family", "params"} <= set(r) and r["params"] > 0 for r in rows)
    assert "bn_cnn" in zoo("models").stdout
    assert zoo("models", "--names").stdout.split() == [s.name for s in list_models()]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "resnte"), "unknown model 'resnte'; did you mean resnet"),
        (("train", "bn_cnn", "--lr", "-0.1"), "--lr: Input should be greater than 0"),
        (("train", "bn_cnn", "--epochs", "x"), "--epochs: Input should be a valid integer"),
        (("evaluate", "/nonexistent/model.pt"), "checkpoint /nonexistent/model.pt does not exist"),
        (("nonsense",), "unknown command 'nonsense'"),
    ],
)
def test_cli_mistakes_give_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    result = zoo(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_out_that_is_a_file_is_refused_before_training(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    result = zoo("train", "bn_mlp", "--out", str(taken), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"zoo train: error: --out {taken} is a file: expected a folder, new or existing\n"
    )


NOT_CHECKPOINTS = {
    "text": (b"epochs: 5\nlr: 0.1\n", "a text file starting 'epochs: 5'"),
    "random bytes": (
        random.Random(0).randbytes(2000),
        "2,000 bytes of binary data starting " + random.Random(0).randbytes(8).hex(" "),
    ),
}


@pytest.mark.parametrize("content", NOT_CHECKPOINTS)
def test_evaluate_says_a_file_is_not_a_checkpoint(content: str, tmp_path: Path) -> None:
    data, got = NOT_CHECKPOINTS[content]
    (tmp_path / "model.pt").write_bytes(data)
    result = zoo("evaluate", str(tmp_path / "model.pt"))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"zoo evaluate: error: {tmp_path / 'model.pt'} is not a modelzoo checkpoint: "
        f"expected the zip archive that `zoo train` writes, got {got}\n"
    )


def test_missing_data_without_network_fails_cleanly(tmp_path: Path) -> None:
    env_cmd = [
        sys.executable,
        "-c",
        "import sys, zoo.data as d; d.PROJECT_ROOT = d.Path('/nonexistent'); "
        "d.MNIST_MIRRORS = ('http://127.0.0.1:9/',); from zoo.cli import main; "
        "sys.exit(main(['train', 'bn_mlp', '--epochs', '1']))",
    ]
    env = {
        "ZOO_DATA_DIR": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        env_cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert "could not be downloaded" in result.stderr and "Traceback" not in result.stderr
