"""`zoo export MODEL --quantize int8|fp16` on a trained model (the shipped bn_mlp) and MNIST."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from zoo import repository
from zoo.card import CARD_METADATA_KEY, ModelCard
from zoo.cli import main as zoo_main
from zoo.data import load_mnist
from zoo.export import pipeline, precision
from zoo.export.verify import ort_outputs, session

SHIPPED = Path(__file__).resolve().parents[2] / "model_repository"
MODEL = "bn_mlp"  # trained, 98.46%: the smallest model whose quantisation takes a second
CALIBRATION = "128"  # images; the default is 512
TEST_IMAGES = "2000"


def export(*args: str | Path) -> int:
    return zoo_main(["export", "--no-progress", "--verify-images", TEST_IMAGES, *map(str, args)])


@pytest.fixture
def float_repo(tmp_path: Path) -> Path:
    """A repository holding the shipped, trained float bn_mlp, as `zoo export` wrote it."""
    repo = tmp_path / "repo"
    shutil.copytree(SHIPPED / MODEL, repo / MODEL)
    return repo


def quantize(repo: Path, precision_name: str, *extra: str | Path) -> int:
    args = [MODEL, "--quantize", precision_name, "--repository", repo]
    return export(*args, "--calibration-images", CALIBRATION, *extra)


def card_of(model_dir: Path) -> ModelCard:
    card = repository.read_card(model_dir)
    assert card is not None
    return card


def initializers(proto: onnx.ModelProto) -> dict[str, TensorProto]:
    return {t.name: t for t in proto.graph.initializer}


def io_types(proto: onnx.ModelProto) -> list[int]:
    return [v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)]


def test_int8_variant_is_a_calibrated_qdq_model_of_its_own(
    float_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    float_bytes = (float_repo / MODEL / "1" / "model.onnx").read_bytes()
    assert quantize(float_repo, "int8") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{MODEL}_int8 v1 -> ") and out.count("\n") == 1
    assert f"{TEST_IMAGES} images on CPUExecutionProvider" in out and "argmax agreement" in out

    model_dir = float_repo / f"{MODEL}_int8"
    config = repository.read_model_config(model_dir)
    assert config.name == f"{MODEL}_int8" and config.platform == "onnxruntime_onnx"
    assert [(t.name, repository.kserve_datatype(t.data_type)) for t in config.input] == [
        ("images", "FP32")
    ]
    path = repository.model_file(model_dir, 1, config)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no test data set
    assert (float_repo / MODEL / "1" / "model.onnx").read_bytes() == float_bytes

    card, float_card = card_of(model_dir), card_of(float_repo / MODEL)
    assert card.onnx_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card.variant is not None and card.variant.of == MODEL
    assert card.variant.precision == "int8"
    assert card.variant.source_sha256 == float_card.onnx_sha256
    assert card.variant.calibration["split"] == "MNIST train"
    assert card.variant.calibration["images"] == int(CALIBRATION)
    assert card.description.startswith(f"int8 variant of {MODEL}: ")
    metrics = {k: m.value for k, m in card.metrics.items()}
    assert abs(metrics["test_accuracy"] - metrics["float_test_accuracy"]) <= 0.003
    assert metrics["argmax_agreement_with_float"] > 0.99

    proto = onnx.load(path)
    embedded = {p.key: p.value for p in proto.metadata_props}[CARD_METADATA_KEY]
    assert ModelCard.from_json(embedded).variant == card.variant
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 8
    # Every Gemm reads its weight through a DequantizeLinear of int8 values with one scale
    # per output feature (per-channel), and its input through a quantised activation.
    producer = {output: node for node in proto.graph.node for output in node.output}
    inits = initializers(proto)
    gemms = [n for n in proto.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 4
    for gemm in gemms:
        activation, weight = (producer[name] for name in gemm.input[:2])
        assert activation.op_type == weight.op_type == "DequantizeLinear"
        values, scale = (inits[name] for name in weight.input[:2])
        assert values.data_type == TensorProto.INT8
        assert list(scale.dims) == [values.dims[0]]
        assert inits[activation.input[2]].data_type == TensorProto.UINT8
    assert not proto.graph.value_info  # dropped to save space


def test_the_card_accuracy_is_what_onnxruntime_measures(float_repo: Path) -> None:
    assert quantize(float_repo, "int8") == 0
    model_dir = float_repo / f"{MODEL}_int8"
    images, labels = load_mnist("test").tensors()
    n = int(TEST_IMAGES)
    logits, probabilities = ort_outputs(
        session(model_dir / "1" / "model.onnx"), images[:n].numpy(), 500
    )
    assert logits.dtype == probabilities.dtype == np.float32
    accuracy = float((logits.argmax(1) == labels[:n].numpy()).mean())
    assert card_of(model_dir).metrics["test_accuracy"].value == pytest.approx(accuracy, abs=1e-6)


def test_calibration_sees_training_images_only(
    float_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given: list[np.ndarray] = []
    real_quantize_static = precision.quantize_static

    def spy(model_input: str, model_output: str, reader: Any, **options: Any) -> None:
        batches = list(iter(reader.get_next, None))
        given.extend(batch[precision.INPUT_NAME] for batch in batches)
        replay = iter(batches)
        reader.get_next = lambda: next(replay, None)
        real_quantize_static(model_input, model_output, reader, **options)

    monkeypatch.setattr(precision, "quantize_static", spy)
    assert quantize(float_repo, "int8") == 0
    pixels = np.concatenate(given)
    assert pixels.shape == (int(CALIBRATION), 1, 28, 28) and pixels.dtype == np.float32

    def digests(images: np.ndarray) -> set[bytes]:
        return {hashlib.sha1(image.tobytes()).digest() for image in images}

    given_digests = digests(np.rint(pixels[:, 0] * 255).astype(np.uint8))
    assert len(given_digests) == int(CALIBRATION)
    assert given_digests <= digests(load_mnist("train").images)
    assert not given_digests & digests(load_mnist("test").images)


def test_a_variant_past_its_tolerance_is_refused_in_one_line(
    float_repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Blank calibration images give activation ranges far too narrow: accuracy collapses.
    def blank(count: int) -> np.ndarray:
        return np.zeros((count, 1, 28, 28), np.float32)

    monkeypatch.setattr(pipeline, "calibration_images", blank)
    assert quantize(float_repo, "int8") == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"zoo export: error: {MODEL}_int8: int8 test accuracy "), err
    assert "expected within ±0.30" in err and err.endswith("; nothing written\n")
    assert sorted(p.name for p in float_repo.iterdir()) == [MODEL]  # no variant, no staging


def test_fp16_variant_has_fp16_weights_behind_fp32_inputs_and_outputs(
    float_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert quantize(float_repo, "fp16") == 0
    out = capsys.readouterr().out
    path = float_repo / f"{MODEL}_fp16" / "1" / "model.onnx"
    proto = onnx.load(path)
    assert io_types(proto) == [TensorProto.FLOAT] * 3
    inits = initializers(proto)
    weights = [inits[n.input[1]] for n in proto.graph.node if n.op_type == "Gemm"]
    assert len(weights) == 4 and {w.data_type for w in weights} == {TensorProto.FLOAT16}
    assert not [t.name for t in inits.values() if t.data_type == TensorProto.FLOAT and t.dims]
    float_weights = initializers(onnx.load(float_repo / MODEL / "1" / "model.onnx"))
    for w in weights:  # the float weights rounded to FP16's 11-bit significand
        np.testing.assert_allclose(
            numpy_helper.to_array(w).astype(np.float32),
            numpy_helper.to_array(float_weights[w.name]),
            rtol=2**-11,
            atol=1e-7,  # the converter lifts magnitudes under FP16's smallest subnormal
        )
    card = card_of(float_repo / f"{MODEL}_fp16")
    assert card.variant is not None and card.variant.precision == "fp16"
    assert [(s.name, s.datatype) for s in card.inputs] == [("images", "FP32")]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert "on CUDAExecutionProvider" in out
    else:  # the CPU provider has no FP16 Gemm: the line must say what was checked
        assert "on CPUExecutionProvider" in out
        assert "none of its" in out and "not FP16 arithmetic" in out
    assert abs(card.metrics["test_accuracy"].value - card.metrics["float_test_accuracy"].value) <= (
        precision.FP16_MAX_ACCURACY_CHANGE
    )


def test_the_float_model_comes_from_the_shipped_repository_when_the_target_lacks_it(
    float_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a benchmark does: one empty repository in, exactly one variant out.
    monkeypatch.setattr(pipeline, "SHIPPED_REPOSITORY", float_repo)
    empty = tmp_path / "fp16-only"
    assert quantize(empty, "fp16") == 0
    assert repository.list_models(empty) == [f"{MODEL}_fp16"]


@pytest.mark.gpu
def test_fp16_runs_in_fp16_on_cuda(float_repo: Path) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider (needs onnxruntime-gpu)")
    assert quantize(float_repo, "fp16") == 0
    path = float_repo / f"{MODEL}_fp16" / "1" / "model.onnx"
    images = load_mnist("test").tensors()[0][:2].numpy()
    fp16_nodes, _, fp16_ops, _ = precision.fp16_execution(
        path, precision.providers_for("fp16"), images
    )
    assert fp16_nodes > 0 and "Gemm" in fp16_ops


def tamper(repo: Path) -> list[str | Path]:
    (repo / MODEL / "1" / "model.onnx").write_bytes(b"not the verified model")
    return []


def existing_variant(repo: Path) -> list[str | Path]:
    assert quantize(repo, "int8") == 0
    return []


QUANTIZE_MISTAKES: dict[str, tuple[Callable[[Path], list[str | Path]], str]] = {
    "no float model": (
        lambda repo: ["--float-repository", repo / "elsewhere"],
        f"no float model '{MODEL}' in ",
    ),
    "a checkpoint": (
        lambda repo: ["--checkpoint", repo / "model.pt"],
        "--quantize reads the exported float model, not a checkpoint",
    ),
    "a changed float model": (tamper, "is not the file its card verified (sha256 differs)"),
    "an existing variant": (existing_variant, "exists already: pass --force"),
    "an unknown precision": (lambda repo: ["--quantize", "int4"], "--quantize: Input should be"),
}


@pytest.mark.parametrize("mistake", QUANTIZE_MISTAKES)
def test_a_quantize_mistake_gives_one_line(
    mistake: str, float_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_args, message = QUANTIZE_MISTAKES[mistake]
    args = make_args(float_repo)
    capsys.readouterr()
    assert quantize(float_repo, "int8", *args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("zoo export: error: ") and message in err, err
