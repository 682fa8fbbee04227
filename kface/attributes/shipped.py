"""The shipped age-group and gender model run through ONNX Runtime.

Its card and file: :mod:`kface.models.attributes`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..engines.runtime import OnnxNetwork
from ..models import MODELS_DIR
from ..models.attributes import attributes_card
from .answers import AttributeAnswers, average_views


class ShippedAttributeModel(AttributeAnswers):
    """The shipped ONNX network: aligned chips in, probabilities per task out (onnxruntime, created on first use)."""

    def __init__(self, card: dict, path: Path, device: str = "auto"):
        self.meta = card["meta"]
        # Where it was trained and how far it drifts elsewhere (kface.build.attributes_domain), if measured.
        self.domain = card.get("domain")
        self.path = path
        self.device = device
        self.network = OnnxNetwork(path, device)

    def chip_probabilities(self, chips: np.ndarray) -> dict[str, np.ndarray]:
        """Class probabilities per task of (N, 150, 150, 3) uint8 aligned chips, (N, K) float64 rows summing to
        1 (each chip's averaged with its mirror image's, inside the graph)."""
        columns = self.network.run(chips)
        probabilities, start = {}, 0
        for task in self.tasks:
            count = len(self.meta["classes"][task])
            probabilities[task] = average_views([columns[:, start:start + count]])
            start += count
        return probabilities


def load_shipped_attributes(device: str = "auto") -> ShippedAttributeModel:
    """The shipped Korean age-group and gender model (card and sha256 checked)."""
    card = attributes_card()
    return ShippedAttributeModel(card, MODELS_DIR / card["file"], device)
