"""The age-group and gender heads that ship inside kface: their card, checked file and ONNX Runtime run.

``attributes-korean-v3.onnx`` takes the shipped Korean face model's embeddings of aligned faces and returns
the probabilities of the 8 Korean age classes and of the two genders; ``attributes-korean-v3.json`` (its
card) holds what :class:`~kface.attributes.answers.AttributeAnswers` needs (classes, age bins, each class's age
in years, face settings, flip averaging), the training provenance, the recipe, the file's sha256
(checked before the session is created) and the figures on the held-out families. Made by
``python -m kface.models.build_attributes`` (:mod:`kface.models.build_attributes`). No torch here.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from ..attributes.answers import AttributeAnswers, average_views
from ..errors import KfaceError
from . import MODELS_DIR

SHIPPED_NAME = "attributes-korean-v3"
CARD_FILE = MODELS_DIR / f"{SHIPPED_NAME}.json"
NETWORK_FILE = MODELS_DIR / f"{SHIPPED_NAME}.onnx"
INPUT_NAME = "embeddings"
#: Output names of the graph, one per task, in the card's task order.
OUTPUT_NAMES = {"age": "age_probs", "gender": "gender_probs"}


def has_shipped_attributes() -> bool:
    """Whether the shipped heads' card is installed (their file is checked when they load)."""
    return CARD_FILE.is_file()


@lru_cache(maxsize=None)
def attributes_card() -> dict:
    """The shipped heads' card, with the network file's sha256 checked against it."""
    try:
        body = json.loads(CARD_FILE.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KfaceError(f"{CARD_FILE}: the shipped attribute model is not installed; reinstall kface, or pass "
                         f"--model runs/NAME/model.pt (from kface train-attributes)") from None
    except (OSError, ValueError) as exc:
        raise KfaceError(f"{CARD_FILE}: the shipped attribute model's card is unreadable ({exc}); "
                         f"reinstall kface") from None
    from ..hashing import file_sha256

    network = MODELS_DIR / body["file"]
    if not network.is_file():
        raise KfaceError(f"{network}: the shipped attribute model file is missing; reinstall kface")
    if file_sha256(network) != body["sha256"]:
        raise KfaceError(f"{network}: sha256 differs from its card; the file is damaged, reinstall kface")
    return body


class ShippedAttributeModel(AttributeAnswers):
    """The shipped ONNX heads: embeddings in, probabilities per task out (onnxruntime, created on first use)."""

    def __init__(self, card: dict, path: Path, device: str = "auto"):
        self.meta = card["meta"]
        self.path = path
        self.device = device
        self._session = None

    @property
    def session(self):
        if self._session is None:
            import onnxruntime

            from ..engines.runtime import providers_for

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1  # a few hundred multiply-adds per face: threads only add overhead
            options.log_severity_level = 3
            self._session = onnxruntime.InferenceSession(str(self.path), options,
                                                         providers=providers_for(self.device))
        return self._session

    def probabilities(self, embeddings: np.ndarray, mirrored: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
        """Class probabilities per task, (N, K) float64 rows summing to 1; with ``mirrored`` the average of
        the face's and its mirror image's."""
        names = [OUTPUT_NAMES[task] for task in self.tasks]
        views = [embeddings] + ([mirrored] if mirrored is not None else [])
        outputs = [self.session.run(names, {INPUT_NAME: np.ascontiguousarray(view, dtype=np.float32)})
                   for view in views]
        return {task: average_views([output[k] for output in outputs]) for k, task in enumerate(self.tasks)}


def load_shipped_attributes(device: str = "auto") -> ShippedAttributeModel:
    """The shipped Korean age-group and gender heads (card and sha256 checked)."""
    card = attributes_card()
    return ShippedAttributeModel(card, MODELS_DIR / card["file"], device)
