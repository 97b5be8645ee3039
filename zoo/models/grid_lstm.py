"""Grid LSTM (Kalchbrenner, Danihelka & Graves 2016) over a grid of image patches: 2D and 3D.

The image is cut into a 7x7 grid of 4x4 patches. A grid cell has one LSTM transform per
grid axis, each with its own memory: it reads the hidden vectors arriving along every
axis, and passes each axis's new hidden vector and memory on along that axis.

- 2D (`grid_lstm`): the two spatial axes. Cell (i, j) reads its patch and the hidden
  vectors from above (i-1, j) and from the left (i, j-1); the last cell's two hidden
  vectors are classified.
- 3D (`grid_lstm_3d`): the two spatial axes plus depth, the axis that makes the net
  deep. Layer 0 of the depth axis receives the patch as its hidden vector (zero
  memory); cell (i, j) of layer d reads the hidden vectors from above, from the left
  and from below (layer d-1), and passes its depth output up. Every layer has its own
  weights (the paper's non-tied depth dimension). The three hidden vectors of the top
  layer's last cell are classified.

All cells on one anti-diagonal of a layer are independent, so they run as one batched
step: 13 steps a layer instead of 49. A step takes its neighbours from the previous
diagonal by padding and slicing at fixed offsets, so the exported ONNX graph is a fixed
unrolled grid with no Loop ops or data-dependent control flow; cells are stacked on
dim 1, never split along the (dynamic) batch dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from zoo.models.layers import Normalize
from zoo.models.registry import ModelConfig, TrainRecipe, register_model

# The axes of a cell's state, side by side in this order: [N, cells, axes*hidden].
VERTICAL, HORIZONTAL, DEPTH = 0, 1, 2


class GridLSTMConfig(ModelConfig):
    patch: int = Field(4, description="patch side in pixels; 28 must be a multiple")
    hidden: int = 96


class GridLSTM3DConfig(ModelConfig):
    patch: int = Field(4, description="patch side in pixels; 28 must be a multiple")
    hidden: int = 55
    depth: int = Field(2, ge=1, description="layers along the depth axis, each its own weights")


class AxisLSTM(nn.Module):
    """The LSTM transforms of `axes` grid axes, each with its own memory, computed as one:
    gates from the `inputs` hidden vectors arriving at the cell, concatenated.

    The axes' hidden vectors and memories lie side by side, [..., axes*hidden] with axis a
    at columns a*hidden .. (a+1)*hidden, and so do the gates: [i | f | g | o], each that
    wide.
    """

    def __init__(self, hidden: int, inputs: int, axes: int = 1) -> None:
        super().__init__()
        self.gates = nn.Linear(inputs * hidden, 4 * axes * hidden)
        with torch.no_grad():  # forget-gate bias 1 (Gers et al. 2000): remember by default
            self.gates.bias[axes * hidden : 2 * axes * hidden].fill_(1.0)

    def forward(
        self, joint: torch.Tensor, memory: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # joint [..., inputs*hidden], memory [..., axes*hidden] -> (hidden, memory) alike
        i, f, g, o = self.gates(joint).chunk(4, dim=-1)
        memory = torch.sigmoid(f) * memory + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(memory), memory


class PatchGrid(nn.Module):
    """Images -> patches in anti-diagonal order, split by diagonal, and the neighbours of
    a diagonal's cells from the previous diagonal's outputs. No parameters."""

    def __init__(self, patch: int) -> None:
        super().__init__()
        if 28 % patch:
            raise ValueError(f"patch {patch} does not divide 28")
        self.patch, self.size = patch, 28 // patch
        g = self.size
        # Rows i of the cells (i, k - i) on diagonal k: first and last.
        self.rows = [(max(0, k - g + 1), min(k, g - 1)) for k in range(2 * g - 1)]
        order = [i * g + k - i for k, (lo, hi) in enumerate(self.rows) for i in range(lo, hi + 1)]
        self.register_buffer("order", torch.tensor(order), persistent=False)
        self.normalize = Normalize()

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        # [N, 1, 28, 28] -> [N, G*G, patch*patch], diagonal 0 first, each by row
        g, p = self.size, self.patch
        x = (
            self.normalize(x)
            .reshape(-1, g, p, g, p)
            .permute(0, 1, 3, 2, 4)
            .reshape(-1, g * g, p * p)
        )
        return x.index_select(1, self.order)

    def diagonals(self, cells: torch.Tensor) -> list[torch.Tensor]:
        """[N, G*G, ...] in diagonal order -> per diagonal k: [N, cells on k, ...]."""
        return list(cells.split([hi - lo + 1 for lo, hi in self.rows], dim=1))

    def neighbours(
        self, state: tuple[torch.Tensor, torch.Tensor] | None, k: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h_above, h_left, m_above, m_left) of diagonal k's cells: the VERTICAL output of
        the cell above and the HORIZONTAL output of the cell to the left, from diagonal
        k-1's (hidden, memory) state [N, cells on k-1, axes*hidden]; zeros off the grid.
        `like` [N, cells on k, hidden] gives their shape."""
        if state is None:  # k = 0, the corner: no neighbours
            zero = torch.zeros_like(like)
            return zero, zero, zero, zero
        (lo_before, _), (lo, hi) = self.rows[k - 1], self.rows[k]
        cells, width = hi - lo + 1, like.shape[-1]
        # Row i's neighbour above is in row i-1 of diagonal k-1, its left one in row i. A
        # zero row padded at each end of k-1 (rows lo_before-1 .. hi_before+1) is the edge.
        above, left = lo - 1 - (lo_before - 1), lo - (lo_before - 1)
        v, h = VERTICAL * width, HORIZONTAL * width
        hidden, memory = (F.pad(t, (0, 0, 1, 1)) for t in state)
        return (
            hidden[:, above : above + cells, v : v + width],
            hidden[:, left : left + cells, h : h + width],
            memory[:, above : above + cells, v : v + width],
            memory[:, left : left + cells, h : h + width],
        )


class GridLSTM(nn.Module):
    """2D Grid LSTM: a vertical and a horizontal LSTM transform per cell."""

    def __init__(self, config: GridLSTMConfig) -> None:
        super().__init__()
        self.grid = PatchGrid(config.patch)
        self.embed = nn.Linear(config.patch**2, config.hidden)
        self.vertical = AxisLSTM(config.hidden, inputs=3)
        self.horizontal = AxisLSTM(config.hidden, inputs=3)
        self.head = nn.Linear(2 * config.hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 28, 28] -> [N, 10]
        state = None  # (hidden, memory) of the previous diagonal, [N, cells, 2*hidden] each
        for k, patch in enumerate(self.grid.diagonals(self.embed(self.grid.patches(x)))):
            h_above, h_left, m_above, m_left = self.grid.neighbours(state, k, patch)
            joint = torch.cat([patch, h_above, h_left], dim=-1)  # [N, cells, 3*hidden]
            hv, mv = self.vertical(joint, m_above)
            hh, mh = self.horizontal(joint, m_left)
            state = torch.cat([hv, hh], dim=-1), torch.cat([mv, mh], dim=-1)
        return self.head(state[0][:, 0])  # the last cell's two hidden vectors


class GridLSTM3D(nn.Module):
    """3D Grid LSTM: vertical, horizontal and depth LSTM transforms per cell, `depth`
    layers with their own weights."""

    def __init__(self, config: GridLSTM3DConfig) -> None:
        super().__init__()
        self.hidden = config.hidden
        self.grid = PatchGrid(config.patch)
        self.embed = nn.Linear(config.patch**2, config.hidden)
        self.layers = nn.ModuleList(
            AxisLSTM(config.hidden, inputs=3, axes=3) for _ in range(config.depth)
        )
        self.head = nn.Linear(3 * config.hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 28, 28] -> [N, 10]
        patches = self.grid.diagonals(self.embed(self.grid.patches(x)))
        below = [(patch, torch.zeros_like(patch)) for patch in patches]
        depth = slice(DEPTH * self.hidden, (DEPTH + 1) * self.hidden)
        for layer in self.layers:
            state = None  # (hidden, memory) of the previous diagonal, [N, cells, 3*hidden]
            outputs = []
            for k, (h_below, m_below) in enumerate(below):
                h_above, h_left, m_above, m_left = self.grid.neighbours(state, k, h_below)
                joint = torch.cat([h_above, h_left, h_below], dim=-1)  # [N, cells, 3*hidden]
                state = layer(joint, torch.cat([m_above, m_left, m_below], dim=-1))
                outputs.append((state[0][..., depth], state[1][..., depth]))
            below = outputs  # this layer's depth outputs feed the next layer
        return self.head(state[0][:, 0])  # the top layer's last cell: its 3 hidden vectors


@register_model(
    "grid_lstm",
    family="grid_lstm",
    target_accuracy=0.99,
    config=GridLSTMConfig(),
    recipe=TrainRecipe(epochs=8, lr=2e-3, grad_clip=1.0),
)
def grid_lstm(config: GridLSTMConfig) -> GridLSTM:
    """2D Grid LSTM over a 7x7 grid of 4x4 patches, hidden 96, one LSTM per axis."""
    return GridLSTM(config)


@register_model(
    "grid_lstm_3d",
    family="grid_lstm",
    target_accuracy=0.993,
    config=GridLSTM3DConfig(),
    # 24 epochs with 2-pixel shifts: about 27 minutes of one core of this project's 2-core
    # machine (1.1 minutes an epoch, measured), under 60 on the shared machine.
    recipe=TrainRecipe(epochs=24, lr=2e-3, grad_clip=1.0, augment_shift=2),
)
def grid_lstm_3d(config: GridLSTM3DConfig) -> GridLSTM3D:
    """3D Grid LSTM: 7x7 grid of 4x4 patches x 2 non-tied depth layers, hidden 55."""
    return GridLSTM3D(config)
