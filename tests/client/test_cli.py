"""`zoo infer`, `zoo describe`, `zoo models --url`: output, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from client import ZooClient
from zoo.errors import DataError

ROOT = Path(__file__).resolve().parents[2]


def zoo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zoo.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, exit_code: int, text: str) -> None:
    assert result.returncode == exit_code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert text in lines[0]


@pytest.fixture(scope="module")
def model(zoo_server) -> str:
    with ZooClient(zoo_server.address) as client:
        return client.list_models()[0].name


@pytest.fixture(scope="module")
def mnist_digit(tmp_path_factory) -> tuple[Path, int]:
    """The first MNIST test image (a 7) as a PNG, and its label."""
    from zoo.data import load_mnist

    try:
        test = load_mnist("test", download=False)
    except DataError as error:
        pytest.skip(f"MNIST test set not on this machine: {error}")
    path = tmp_path_factory.mktemp("digits") / "digit.png"
    Image.fromarray(test.images[0]).save(path)
    return path, int(test.labels[0])


def best_model(address: str) -> tuple[str, float]:
    """The served model whose card claims the highest MNIST test accuracy (0 when untrained)."""
    with ZooClient(address) as client:
        cards = [client.model_card(m.name) for m in client.list_models()]
    accuracy = {
        c.name: c.metrics["test_accuracy"].value if "test_accuracy" in c.metrics else 0.0
        for c in cards
    }
    name = max(accuracy, key=accuracy.__getitem__)
    return name, accuracy[name]


def test_mnist_digit_png_is_predicted_right(zoo_server, served_repository, mnist_digit) -> None:
    path, truth = mnist_digit
    model, accuracy = best_model(zoo_server.address)
    flags = ["--url", zoo_server.address, "--model", model, "--json", "--top-k", "3"]
    result = zoo("infer", *flags, str(path))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["image"] == str(path) and len(row["top_k"]) == 3
    # The server's answer is the model's own answer on the dataset's pixels...
    session = ort.InferenceSession(str(next((served_repository / model).glob("*/model.onnx"))))
    pixels = (np.asarray(Image.open(path), np.float32) / 255.0)[None, None]
    probabilities = session.run(["probabilities"], {"images": pixels})[0][0]
    assert row["label"] == str(probabilities.argmax())
    assert row["probability"] == pytest.approx(float(probabilities.max()), rel=1e-5)
    # ...and a trained model gets it right (the tiny test repository's are untrained).
    if accuracy >= 0.9:
        assert row["label"] == str(truth)


def test_infer_table(zoo_server, model, tmp_path) -> None:
    np.save(tmp_path / "two.npy", np.zeros((2, 28, 28), np.uint8))
    result = zoo(
        "infer",
        "--url",
        zoo_server.address,
        "--model",
        model,
        "--top-k",
        "2",
        str(tmp_path / "two.npy"),
    )
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()
    assert header.split() == ["image", "label", "probability", "top-2"]
    assert [r.split()[0] for r in rows] == [
        f"{tmp_path / 'two.npy'}[0]",
        f"{tmp_path / 'two.npy'}[1]",
    ]


def test_models_and_describe(zoo_server, model) -> None:
    result = zoo("models", "--url", zoo_server.address)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["model", "version", "ready", "state"]
    assert any(line.split()[:1] == [model] and "yes" in line for line in result.stdout.splitlines())
    listed = json.loads(zoo("models", "--url", zoo_server.address, "--json").stdout)
    assert {"name", "version", "state", "reason", "ready"} <= set(listed[0])
    card = json.loads(zoo("describe", model, "--url", zoo_server.address).stdout)
    assert card["name"] == model and card["inputs"][0]["name"] == "images"


def test_unknown_model_is_a_server_error(zoo_server, tmp_path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((28, 28), np.uint8))
    result = zoo(
        "infer", "--url", zoo_server.address, "--model", "no_such_model", str(tmp_path / "x.npy")
    )
    assert_one_line_error(result, 3, "NOT_FOUND")
    assert_one_line_error(
        zoo("describe", "no_such_model", "--url", zoo_server.address), 3, "no_such_model"
    )


def test_server_down_is_a_server_error(tmp_path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((28, 28), np.uint8))
    result = zoo(
        "infer", "--url", "127.0.0.1:1", "--timeout", "2", "--model", "m", str(tmp_path / "x.npy")
    )
    assert_one_line_error(result, 3, "UNAVAILABLE")
    assert_one_line_error(zoo("models", "--url", "127.0.0.1:1"), 3, "UNAVAILABLE")


def test_unreadable_image_is_a_usage_error(zoo_server, model, tmp_path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png")
    result = zoo("infer", "--url", zoo_server.address, "--model", model, str(tmp_path / "bad.png"))
    assert_one_line_error(result, 2, "bad.png' is unreadable")
    result = zoo(
        "infer", "--url", zoo_server.address, "--model", model, str(tmp_path / "missing.png")
    )
    assert_one_line_error(result, 2, "no such file")


def test_usage_errors(zoo_server, model, tmp_path) -> None:
    assert_one_line_error(zoo("infer", "--url", zoo_server.address, "x.png"), 2, "--model")
    np.save(tmp_path / "x.npy", np.zeros((28, 28), np.uint8))
    result = zoo(
        "infer",
        "--url",
        zoo_server.address,
        "--model",
        model,
        "--top-k",
        "11",
        str(tmp_path / "x.npy"),
    )
    assert_one_line_error(result, 2, "top_k must be in [1, 10], got 11")
    assert_one_line_error(
        zoo("infer", "--timeout", "-1", "--model", model, "x.png"), 2, "--timeout"
    )


def test_missing_ca_certificate_is_a_usage_error(tmp_path) -> None:
    result = zoo("models", "--url", "127.0.0.1:1", "--ca-cert", str(tmp_path / "ca.pem"))
    assert_one_line_error(result, 2, "--ca-cert")
