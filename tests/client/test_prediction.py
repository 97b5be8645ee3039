"""Prediction: top-k labels read off the probabilities (client.prediction)."""

from __future__ import annotations

import numpy as np
import pytest

from client.prediction import Prediction
from zoo.errors import InvalidArgumentError

CLASSES = tuple("0123456789")


def test_top_k_in_order_with_stable_ties() -> None:
    probabilities = np.zeros((2, 10), np.float32)
    probabilities[0, [3, 7, 1]] = [0.6, 0.3, 0.1]
    probabilities[1, [2, 5]] = [0.5, 0.5]
    prediction = Prediction("m", "1", CLASSES, probabilities, top_k=2)
    assert len(prediction) == 2
    assert prediction.labels == ["3", "2"]
    assert prediction[0].top_k == (("3", pytest.approx(0.6)), ("7", pytest.approx(0.3)))
    assert [label for label, _ in prediction[1].top_k] == ["2", "5"]
    assert prediction[0].to_dict()["top_k"][1] == {"label": "7", "probability": pytest.approx(0.3)}
    assert [p.label for p in prediction] == ["3", "2"]


@pytest.mark.parametrize("top_k", [0, 11])
def test_top_k_outside_the_classes_is_refused(top_k: int) -> None:
    with pytest.raises(InvalidArgumentError, match=r"top_k must be in \[1, 10\]"):
        Prediction("m", "1", CLASSES, np.zeros((1, 10), np.float32), top_k=top_k)


def test_probabilities_must_match_the_labels() -> None:
    with pytest.raises(
        InvalidArgumentError, match=r"expected probabilities of shape \[N, 10\].*got \[1, 3\]"
    ):
        Prediction("m", "1", CLASSES, np.zeros((1, 3), np.float32))
