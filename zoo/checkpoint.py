"""Checkpoints: the weights plus the model card, loadable with `weights_only=True`.

The card is stored as plain JSON-compatible data (no pickled classes), so loading
never executes code from the file.
"""

from __future__ import annotations

import codecs
import os
import pickle
import re
import zipfile
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
    # torch.save writes a zip archive holding data.pkl; anything else would reach torch's
    # legacy unpickler or zip reader, whose errors ("101", a codec error, "[enforce fail at
    # inline_container.cc]") do not say that the file is of another kind.
    foreign = _foreign_content(path)
    if foreign:
        raise _not_a_checkpoint(path, "the zip archive that `zoo train` writes", foreign)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refused a pickled class
        refused = _REFUSED_GLOBAL.search(str(error))
        what = f" ({refused.group(1)})" if refused else ""
        raise _not_a_checkpoint(
            path, "weights and a model card", f"pickled Python objects{what}"
        ) from None
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable: {reason}") from None
    if not isinstance(payload, dict):
        raise _not_a_checkpoint(path, _EXPECTED_PAYLOAD, f"a {type(payload).__name__}")
    if "format" not in payload:
        keys = sorted(map(str, payload))
        shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
        raise _not_a_checkpoint(path, _EXPECTED_PAYLOAD, f"a dict of {shown}")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise _not_a_checkpoint(
            path, f"format {CHECKPOINT_FORMAT}", f"format {payload['format']!r}"
        )
    return ModelCard.model_validate(payload["card"]), payload["state_dict"]


_EXPECTED_PAYLOAD = "a dict of format, card and state_dict"
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_ZIP_MAGIC = b"PK\x03\x04"


def _not_a_checkpoint(path: Path, expected: str, got: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a modelzoo checkpoint: expected {expected}, got {got}")


def _foreign_content(path: Path) -> str:
    """What the file holds in a few words if it is not torch.save's archive, else ""."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(name.endswith("/data.pkl") for name in names):
            return ""
        return f"a zip archive of {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(64)
    if not head:
        return "an empty file"
    if head.startswith(_ZIP_MAGIC):  # a zip without its central directory at the end
        return f"a truncated or damaged zip archive ({size:,} bytes)"
    try:
        # Incremental, so that a character cut at the 64th byte is not taken for binary.
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        text = ""
    if text.strip() and all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"a text file starting {text.strip().splitlines()[0][:40]!r}"
    return f"{size:,} bytes of binary data starting {head[:8].hex(' ')}"


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
