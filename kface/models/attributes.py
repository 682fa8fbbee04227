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

import json
from functools import lru_cache

from ..errors import KfaceError
from ..util.hashing import file_sha256
from . import MODELS_DIR

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
    try:
        body = json.loads(CARD_FILE.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KfaceError(f"{CARD_FILE}: the shipped attribute model is not installed; reinstall kface, or pass "
                         f"--model runs/NAME/model.pt (from kface train-attributes)") from None
    except (OSError, ValueError) as exc:
        raise KfaceError(f"{CARD_FILE}: the shipped attribute model's card is unreadable ({exc}); "
                         f"reinstall kface") from None
    network = MODELS_DIR / body["file"]
    if not network.is_file():
        raise KfaceError(f"{network}: the shipped attribute model file is missing; reinstall kface")
    if file_sha256(network) != body["sha256"]:
        raise KfaceError(f"{network}: sha256 differs from its card; the file is damaged, reinstall kface")
    return body
