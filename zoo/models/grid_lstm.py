"""2D Grid LSTM (Kalchbrenner, Danihelka & Graves 2016) over a grid of image patches.

The image is cut into a 7x7 grid of 4x4 patches. Cell (i, j) reads its patch and the
hidden vectors arriving from above (i-1, j) and from the left (i, j-1); it has one LSTM
transform per grid axis, each with its own memory, and passes the vertical output down
and the horizontal output right. The last cell's two hidden vectors are classified.

All cells on one anti-diagonal are independent, so they run as one batched step: 13
steps instead of 49 (about 1.25x faster to train here). The grid is a fixed Python
loop, so the exported ONNX graph is a fixed unrolled grid with no Loop ops; cells are
stacked on dim 1, never split along the (dynamic) batch dim.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from zoo.models.layers import Normalize
from zoo.models.registry import ModelConfig, TrainRecipe, register_model

State = tuple[torch.Tensor, torch.Tensor]  # (hidden, memory), each [N, hidden]


class GridLSTMConfig(ModelConfig):
    patch: int = Field(4, description="patch side in pixels; 28 must be a multiple")
    hidden: int = 96


class AxisLSTM(nn.Module):
    """The LSTM transform of one grid axis: gates from [patch, h_from_above, h_from_left]."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.gates = nn.Linear(3 * hidden, 4 * hidden)
        with torch.no_grad():  # forget-gate bias 1 (Gers et al. 2000): remember by default
            self.gates.bias[hidden : 2 * hidden].fill_(1.0)

    def forward(self, joint: torch.Tensor, memory: torch.Tensor) -> State:
        i, f, g, o = self.gates(joint).chunk(4, dim=-1)
        memory = torch.sigmoid(f) * memory + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(memory), memory


class GridLSTM(nn.Module):
    def __init__(self, config: GridLSTMConfig) -> None:
        super().__init__()
        if 28 % config.patch:
            raise ValueError(f"patch {config.patch} does not divide 28")
        self.patch, self.grid = config.patch, 28 // config.patch
        self.normalize = Normalize()
        self.embed = nn.Linear(config.patch**2, config.hidden)
        self.vertical = AxisLSTM(config.hidden)
        self.horizontal = AxisLSTM(config.hidden)
        self.head = nn.Linear(2 * config.hidden, 10)

    def patches(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 28, 28] -> [N, G, G, hidden]
        g, p = self.grid, self.patch
        x = (
            self.normalize(x)
            .reshape(-1, g, p, g, p)
            .permute(0, 1, 3, 2, 4)
            .reshape(-1, g, g, p * p)
        )
        return self.embed(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 28, 28] -> [N, 10]
        cells = self.patches(x)
        zero = torch.zeros_like(cells[:, 0, 0])
        down: dict[tuple[int, int], State] = {}  # vertical output of each cell
        right: dict[tuple[int, int], State] = {}  # horizontal output of each cell
        g = self.grid
        for diagonal in range(2 * g - 1):
            coords = [(i, diagonal - i) for i in range(g) if 0 <= diagonal - i < g]
            above = [down.get((i - 1, j), (zero, zero)) for i, j in coords]
            left = [right.get((i, j - 1), (zero, zero)) for i, j in coords]
            patch = torch.stack([cells[:, i, j] for i, j in coords], dim=1)  # [N, n, hidden]
            h_above = torch.stack([h for h, _ in above], dim=1)
            h_left = torch.stack([h for h, _ in left], dim=1)
            joint = torch.cat([patch, h_above, h_left], dim=-1)  # [N, n, 3*hidden]
            hv, mv = self.vertical(joint, torch.stack([m for _, m in above], dim=1))
            hh, mh = self.horizontal(joint, torch.stack([m for _, m in left], dim=1))
            for k, ij in enumerate(coords):
                down[ij] = (hv[:, k], mv[:, k])
                right[ij] = (hh[:, k], mh[:, k])
        last = (g - 1, g - 1)
        return self.head(torch.cat([down[last][0], right[last][0]], dim=-1))


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
