"""Checkpoints: the weights plus the model card, loadable with `weights_only=True`.

The card is stored as plain JSON-compatible data (no pickled classes), so loading
never executes code from the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from zoo.card import ModelCard
from zoo.errors import CheckpointError
from zoo.models import get_spec

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | Path, model: nn.Module, card: ModelCard) -> Path:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {"format": CHECKPOINT_FORMAT, "card": card.model_dump(mode="json"), "state_dict": state},
        tmp,
    )
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable: {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a modelzoo checkpoint (expected format {CHECKPOINT_FORMAT})"
        )
    return ModelCard.model_validate(payload["card"]), payload["state_dict"]


def load_checkpoint(
    path: str | Path, expect_model: str | None = None
) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model named in the card and load its weights (eval mode)."""
    card, state = read_checkpoint(path)
    if expect_model is not None and card.name != expect_model:
        raise CheckpointError(
            f"checkpoint {path} holds model {card.name!r}, expected {expect_model!r}"
        )
    model = get_spec(card.name).build(**card.config)
    mismatch = f"checkpoint {path} does not match architecture {card.name!r}"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of another shape: "size mismatch for ..."
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise CheckpointError(f"{mismatch}: {lines[1] if len(lines) > 1 else lines[0]}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{mismatch}: missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}"
        )
    return model.eval(), card
