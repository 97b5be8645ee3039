"""The Grid LSTMs (2D and 3D): the anti-diagonal wavefront equals the grid computed cell by
cell, each axis's transform is a standard LSTM step, the depth axis changes what the 3D
net computes, and the 3D net exports through the pipeline as exactly as the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from zoo.card import ModelCard
from zoo.data import MNIST_MEAN, MNIST_STD, load_mnist
from zoo.export import ExportSettings, export_model
from zoo.models import create_model, get_spec
from zoo.models.grid_lstm import AxisLSTM, GridLSTM, GridLSTM3D
from zoo.models.layers import count_params

State = tuple[torch.Tensor, torch.Tensor]


def raster_patches(model: GridLSTM | GridLSTM3D, x: torch.Tensor) -> torch.Tensor:
    """[N, 1, 28, 28] -> embedded patches [N, G, G, hidden], patch (i, j) at [:, i, j]."""
    g, p = model.grid.size, model.grid.patch
    pixels = model.grid.normalize(x).reshape(-1, g, p, g, p).transpose(2, 3)
    return model.embed(pixels.reshape(-1, g, g, p * p))


def cell_by_cell_2d(model: GridLSTM, x: torch.Tensor) -> torch.Tensor:
    """The 2D grid one cell at a time, in raster order: the definition, no batching."""
    patches = raster_patches(model, x)
    g, zero = model.grid.size, torch.zeros_like(patches[:, 0, 0])
    down: dict[tuple[int, int], State] = {}
    right: dict[tuple[int, int], State] = {}
    for i in range(g):
        for j in range(g):
            h_above, m_above = down.get((i - 1, j), (zero, zero))
            h_left, m_left = right.get((i, j - 1), (zero, zero))
            joint = torch.cat([patches[:, i, j], h_above, h_left], dim=-1)
            down[i, j] = model.vertical(joint, m_above)
            right[i, j] = model.horizontal(joint, m_left)
    last = (g - 1, g - 1)
    return model.head(torch.cat([down[last][0], right[last][0]], dim=-1))


def cell_by_cell_3d(model: GridLSTM3D, x: torch.Tensor) -> torch.Tensor:
    """The 3D grid one cell at a time: layer by layer, each in raster order."""
    patches = raster_patches(model, x)
    g, zero = model.grid.size, torch.zeros_like(patches[:, 0, 0])
    axis = [slice(a * model.hidden, (a + 1) * model.hidden) for a in range(3)]
    below = {(i, j): (patches[:, i, j], zero) for i in range(g) for j in range(g)}
    for layer in model.layers:
        down: dict[tuple[int, int], State] = {}
        right: dict[tuple[int, int], State] = {}
        up: dict[tuple[int, int], State] = {}
        for i in range(g):
            for j in range(g):
                h_above, m_above = down.get((i - 1, j), (zero, zero))
                h_left, m_left = right.get((i, j - 1), (zero, zero))
                h_below, m_below = below[i, j]
                joint = torch.cat([h_above, h_left, h_below], dim=-1)
                h, m = layer(joint, torch.cat([m_above, m_left, m_below], dim=-1))
                down[i, j], right[i, j], up[i, j] = ((h[:, a], m[:, a]) for a in axis)
        below = up
    return model.head(h)  # the last cell's, of the top layer


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_mnist("test").tensors()[0][:6]


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("grid_lstm", {}),
        ("grid_lstm", {"patch": 7, "hidden": 8}),
        ("grid_lstm_3d", {}),
        ("grid_lstm_3d", {"patch": 7, "hidden": 8, "depth": 3}),
        ("grid_lstm_3d", {"patch": 14, "hidden": 8, "depth": 1}),
    ],
)
def test_wavefront_is_the_grid_computed_cell_by_cell(
    name: str, config: dict[str, int], images: torch.Tensor
) -> None:
    torch.manual_seed(0)
    model = create_model(name, **config).eval()
    reference = cell_by_cell_3d if isinstance(model, GridLSTM3D) else cell_by_cell_2d
    with torch.no_grad():
        logits = model(images)
        torch.testing.assert_close(logits, reference(model, images), rtol=1e-5, atol=1e-5)
    assert logits.shape == (6, 10)


@pytest.mark.parametrize("axes", [1, 3])
def test_each_axis_is_a_standard_lstm_step(axes: int) -> None:
    """Axis a of AxisLSTM is torch's LSTMCell on the concatenated hidden vectors (input
    weights: axis a's rows of each gate; no recurrent term, the hidden vectors are the
    input), with that axis's memory as the cell state."""
    hidden, inputs = 5, 3
    torch.manual_seed(0)
    transforms = AxisLSTM(hidden, inputs, axes)
    joint, memory = torch.randn(4, inputs * hidden), torch.randn(4, axes * hidden)
    h, m = transforms(joint, memory)
    assert h.shape == m.shape == (4, axes * hidden)
    for a in range(axes):
        cell = nn.LSTMCell(inputs * hidden, hidden)
        axis = slice(a * hidden, (a + 1) * hidden)
        # Gates [i | f | g | o], each [axes*hidden]: axis a's rows of each, in that order.
        rows = torch.arange(4 * axes * hidden).view(4, axes, hidden)[:, a].flatten()
        with torch.no_grad():
            cell.weight_ih.copy_(transforms.gates.weight[rows])
            cell.bias_ih.copy_(transforms.gates.bias[rows])
            cell.weight_hh.zero_()
            cell.bias_hh.zero_()
            # Forget-gate bias 1 at initialisation, for every axis.
            assert torch.all(cell.bias_ih[hidden : 2 * hidden] == 1.0)
        expected_h, expected_m = cell(joint, (torch.zeros(4, hidden), memory[:, axis]))
        torch.testing.assert_close(h[:, axis], expected_h)
        torch.testing.assert_close(m[:, axis], expected_m)


def test_depth_layers_have_their_own_weights() -> None:
    one, three = (create_model("grid_lstm_3d", depth=d) for d in (1, 3))
    weights = [layer.gates.weight for layer in three.layers]
    assert len(weights) == 3 and len({w.data_ptr() for w in weights}) == 3  # non-tied
    per_layer = count_params(three.layers[0])
    assert count_params(three) - count_params(one) == 2 * per_layer


def test_the_depth_axis_changes_the_computation(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    deep = create_model("grid_lstm_3d", depth=2).eval()
    shallow = create_model("grid_lstm_3d", depth=1).eval()
    # The same embedding, first layer and head: only the second layer differs.
    shallow.load_state_dict(
        {k: v for k, v in deep.state_dict().items() if not k.startswith("layers.1.")}
    )
    with torch.no_grad():
        assert (deep(images) - shallow(images)).abs().max() > 1e-3
        before = deep(images)
        deep.layers[1].gates.weight.mul_(1.5)  # the second layer's weights matter
        assert (deep(images) - before).abs().max() > 1e-3
    # Every layer of the depth axis is on the path from the input to the loss.
    deep.train()
    loss = nn.functional.cross_entropy(deep(images), torch.arange(6))
    loss.backward()
    for layer in deep.layers:
        assert layer.gates.weight.grad.abs().sum() > 0


def test_the_3d_grid_is_independent_of_the_batch(images: torch.Tensor) -> None:
    """Cells are stacked on dim 1, never split along the batch: one image at a time gives
    the batch's logits."""
    torch.manual_seed(0)
    model = create_model("grid_lstm_3d").eval()
    with torch.no_grad():
        together = model(images)
        one_by_one = torch.cat([model(images[i : i + 1]) for i in range(len(images))])
    torch.testing.assert_close(together, one_by_one, rtol=1e-5, atol=1e-5)


def test_a_deeper_3d_grid_exports_exactly(tmp_path: Path) -> None:
    """Three depth layers on a 2x2 grid through fold -> ONNX -> onnxruntime -> repository
    (the registered default is exported by the tests of every registered model)."""
    config = {"patch": 14, "hidden": 32, "depth": 3}
    spec = get_spec("grid_lstm_3d")
    torch.manual_seed(0)
    model = spec.build(**config).eval()
    card = ModelCard(
        name=spec.name,
        family=spec.family,
        architecture=type(model).__name__,
        config=spec.configure(**config).model_dump(mode="json"),
        params=count_params(model),
        normalisation_mean=MNIST_MEAN,
        normalisation_std=MNIST_STD,
    )
    images, labels = load_mnist("test").tensors()
    result = export_model(
        model,
        card,
        ExportSettings(repository=tmp_path, progress=False),
        (images[:200], labels[:200]),
        command="test",
    )
    assert [r.level for r in result.verification.levels] == ["disabled", "enabled"]
    assert result.verification.max_abs_diff <= 1e-4
    assert all(r.argmax_agreement == 1.0 for r in result.verification.levels)
    assert result.onnx_path == tmp_path / "grid_lstm_3d" / "1" / "model.onnx"
