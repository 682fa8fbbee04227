"""The age-group and gender model that ships inside kface: its card, checked file and ONNX Runtime run.

``attributes-korean-v4.onnx`` takes aligned face chips (150 px, dlib's alignment: the chips every kface
model reads) and returns the probabilities of the 8 Korean age classes and of the two genders, side by side:
dlib's ResNet with its last stage and final layer trained for these tasks, a shared head, flip averaging
inside the graph. ``attributes-korean-v4.json`` (its card) holds what
:class:`~kface.attributes.answers.AttributeAnswers` needs (classes, age bins, each class's age in years,
face settings), the training provenance, the recipe, the file's sha256 (checked before the session is
created) and the figures on the held-out families. Made by ``python -m kface.build.attributes``
(:mod:`kface.build.attributes`); run by :mod:`kface.attributes.shipped`. No torch here.
"""
from __future__ import annotations

from functools import lru_cache

from . import MODELS_DIR, checked_card

SHIPPED_NAME = "attributes-korean-v4"
CARD_FILE = MODELS_DIR / f"{SHIPPED_NAME}.json"
NETWORK_FILE = MODELS_DIR / f"{SHIPPED_NAME}.onnx"
#: The graph's one output: each task's probabilities side by side, in the card's task order.
OUTPUT_NAME = "probabilities"


def has_shipped_attributes() -> bool:
    """Whether the shipped model's card is installed (its file is checked when it loads)."""
    return CARD_FILE.is_file()


@lru_cache(maxsize=None)
def attributes_card() -> dict:
    """The shipped model's card, with the network file's sha256 checked against it."""
    return checked_card(CARD_FILE, "attribute model",
                        "--model runs/NAME/model.pt (from kface train-attributes)")
