"""What `infer` returns: class probabilities per image, with the top-k labels read off them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo.errors import InvalidArgumentError


@dataclass(frozen=True)
class ImagePrediction:
    """One image's answer: the best label, its probability, and the top-k (label, probability)."""

    label: str
    probability: float
    top_k: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probability": self.probability,
            "top_k": [{"label": label, "probability": p} for label, p in self.top_k],
        }


@dataclass(frozen=True)
class Prediction:
    """Probabilities [N, classes] for a batch, indexable per image (`prediction[i].label`)."""

    model: str
    version: str
    classes: tuple[str, ...]  # the card's labels, one per probability column
    probabilities: np.ndarray  # float32 [N, len(classes)]
    top_k: int = 1

    def __post_init__(self) -> None:
        if self.probabilities.ndim != 2 or self.probabilities.shape[1] != len(self.classes):
            raise InvalidArgumentError(
                f"expected probabilities of shape [N, {len(self.classes)}] (one column per label), "
                f"got {list(self.probabilities.shape)}"
            )
        if not 1 <= self.top_k <= len(self.classes):
            raise InvalidArgumentError(
                f"top_k must be in [1, {len(self.classes)}], got {self.top_k}"
            )

    def __len__(self) -> int:
        return len(self.probabilities)

    def __getitem__(self, index: int) -> ImagePrediction:
        row = self.probabilities[index]
        # A stable sort keeps the lower class first on ties, so answers are reproducible.
        best = np.argsort(-row, kind="stable")[: self.top_k]
        top = tuple((self.classes[i], float(row[i])) for i in best)
        return ImagePrediction(label=top[0][0], probability=top[0][1], top_k=top)

    def __iter__(self) -> Iterator[ImagePrediction]:
        return (self[i] for i in range(len(self)))

    @classmethod
    def concatenate(cls, parts: list[Prediction]) -> Prediction:
        """One prediction from the replies to consecutive pieces of a batch."""
        probabilities = np.concatenate([p.probabilities for p in parts])
        first = parts[0]
        return cls(first.model, first.version, first.classes, probabilities, first.top_k)

    @property
    def labels(self) -> list[str]:
        """The most probable label of each image."""
        return [self.classes[i] for i in self.probabilities.argmax(axis=1)]
