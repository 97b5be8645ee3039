"""Every registered model exports folded: no BatchNormalization, a dynamic batch, exact logits."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from torch import nn

from zoo.card import CARD_METADATA_KEY, ModelCard
from zoo.errors import ExportError
from zoo.export import export_onnx, fold_model, verify
from zoo.export.onnx_export import MIN_OPSET
from zoo.models import list_models

# Every registered model, plus the reparametrised variants (the MLP/CNN families' options).
CASES: list[tuple[str, dict[str, Any]]] = [(spec.name, {}) for spec in list_models()] + [
    ("bn_mlp", {"reparam": "weight", "hidden": [64, 64]}),
    ("bn_cnn", {"reparam": "spectral", "channels": [8, 16], "fc": 32}),
    ("bn_cnn", {"norm": "layer", "channels": [8, 16], "fc": 32}),
]
IDS = [
    name + "".join(f"-{v}" for k, v in config.items() if k in ("reparam", "norm"))
    for name, config in CASES
]

Exported = tuple[nn.Module, ModelCard, Path]
RandomModel = Callable[..., tuple[nn.Module, ModelCard]]


@pytest.fixture(scope="session")
def exported(
    tmp_path_factory: pytest.TempPathFactory, random_model: RandomModel
) -> Callable[[int], Exported]:
    """Export each case once per session (the dynamo exporter takes ~1-15 s a model)."""

    @functools.cache
    def export(index: int) -> Exported:
        name, config = CASES[index]
        model, card = random_model(name, **config)
        path = tmp_path_factory.mktemp(IDS[index]) / "model.onnx"
        onnx.save_model(export_onnx(fold_model(model, torch.rand(2, 1, 28, 28)), card), path)
        return model, card, path

    return export


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_graph_is_folded_checked_and_unrolled(
    exported: Callable[[int], Exported], index: int
) -> None:
    _, card, path = exported(index)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    ops = {node.op_type for node in proto.graph.node}
    assert "BatchNormalization" not in ops
    assert not ops & {"Loop", "Scan", "If"}  # a fixed unrolled graph (the Grid LSTM included)
    # No per-node debug records: they hold the exporting machine's paths, and 10% of the bytes.
    assert not any(node.metadata_props or node.doc_string for node in proto.graph.node)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= MIN_OPSET
    stored = {p.key: p.value for p in proto.metadata_props}[CARD_METADATA_KEY]
    assert ModelCard.from_json(stored).name == card.name


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_runs_at_other_batch_sizes_as_pytorch(
    exported: Callable[[int], Exported], index: int, mnist_test: tuple[torch.Tensor, torch.Tensor]
) -> None:
    model, _, path = exported(index)
    images, labels = mnist_test
    # Chunks of 4, 4 and 1: neither is the traced batch of 3.
    report = verify(path, model, images[:9], labels[:9], chunk=4)
    assert [r.level for r in report.levels] == ["disabled", "enabled"]
    assert report.max_abs_diff <= 1e-4
    assert all(r.argmax_agreement == 1.0 for r in report.levels)


def test_verification_refuses_a_model_that_differs(
    exported: Callable[[int], Exported],
    mnist_test: tuple[torch.Tensor, torch.Tensor],
    random_model: RandomModel,
) -> None:
    index = next(i for i, (name, config) in enumerate(CASES) if name == "bn_mlp" and not config)
    model, _, path = exported(index)
    other = random_model("bn_mlp")[0]
    with torch.no_grad():
        other.net[-1].bias += 0.01  # a small, real difference in the final layer
    with pytest.raises(ExportError, match=r"differs from PyTorch: max abs diff"):
        verify(path, other, mnist_test[0][:8])
    verify(path, model, mnist_test[0][:8])  # the model it came from passes


def test_old_opset_is_refused(random_model: RandomModel) -> None:
    model, card = random_model("bn_mlp", hidden=[8])
    with pytest.raises(ExportError, match="opset 13 is too old"):
        export_onnx(model, card, opset=13)
