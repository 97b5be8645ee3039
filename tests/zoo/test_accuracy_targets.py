"""The accuracy targets of the zoo, each reached by the model's documented default command.

Slow (minutes to half an hour per model on 2 cores): run with `bash scripts/test.sh -m slow`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo.models import list_models
from zoo.train import TrainSettings, train

TARGETED = [spec for spec in list_models() if spec.target_accuracy is not None]


@pytest.mark.slow
# The longest recipe, grid_lstm_3d's, took 29.9 min on a quiet machine (its card's
# wall_time_s): room for three times that on a busy one.
@pytest.mark.timeout(90 * 60)
@pytest.mark.parametrize("spec", TARGETED, ids=[spec.name for spec in TARGETED])
def test_default_recipe_reaches_target(spec, tmp_path: Path) -> None:
    _, card, _ = train(TrainSettings(model=spec.name, out=tmp_path, progress=False), command="test")
    assert card.metrics["test_accuracy"].value >= spec.target_accuracy
