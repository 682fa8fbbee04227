"""The face models that ship inside kface, by name: their cards, files and checksums (``kface models``).

``dlib`` is dlib's stock ResNet descriptor (``face_recognition_models``) at its LFW-measured threshold.
``korean`` is dlib's network with its last stage tuned on Korean family-album faces by kface's own
commands (see ``kface/models/build.py``); it is the default once its file is present. Each shipped
network is an ONNX file beside a JSON card holding its provenance, recipe, threshold and measured figures;
the file's sha256 is checked against the card before it is used.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

from ..hashing import file_sha256
from ..errors import KfaceError

MODELS_DIR = Path(__file__).resolve().parent
STOCK_MODEL = "dlib"
#: Shipped models whose card lives in this folder, by name.
CARDS = {"korean": "korean-v1.json"}


def shipped_names() -> list[str]:
    """Every model name ``--model`` accepts besides a checkpoint path (a card only counts where it ships)."""
    return sorted({STOCK_MODEL, *(name for name, file in CARDS.items() if (MODELS_DIR / file).is_file())})


def default_model() -> str:
    """The model used when none is named: the Korean model where its card ships, else stock dlib."""
    return "korean" if (MODELS_DIR / CARDS["korean"]).is_file() else STOCK_MODEL


def is_shipped(name: Optional[str]) -> bool:
    return name in shipped_names()


@lru_cache(maxsize=None)
def card(name: str) -> dict:
    """The card of shipped model ``name`` (a JSON object), with its network file's sha256 checked."""
    if name not in CARDS:
        raise KfaceError(f"no card for model {name!r}; shipped models: {', '.join(shipped_names())}")
    path = MODELS_DIR / CARDS[name]
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KfaceError(f"{path}: the shipped model card is unreadable ({exc}); reinstall kface") from None
    network = MODELS_DIR / body["file"]
    if not network.is_file():
        raise KfaceError(f"{network}: the shipped model file is missing; reinstall kface")
    if file_sha256(network) != body["sha256"]:
        raise KfaceError(f"{network}: sha256 differs from its card; the file is damaged, reinstall kface")
    return body


def model_of_backbone(backbone: str) -> str:
    """The shipped model whose network the backbone registry entry ``backbone`` is."""
    for name in CARDS:
        if card(name)["backbone"] == backbone:
            return name
    raise KfaceError(f"backbone {backbone} belongs to no shipped model")


def network_path(name: str) -> Path:
    """The checked network file of shipped model ``name``."""
    return MODELS_DIR / card(name)["file"]


def describe(name: str) -> dict:
    """What ``kface models`` shows of one model: its card, or for stock dlib the descriptor file's facts."""
    if name == STOCK_MODEL:
        from ..api import BASE_THRESHOLDS
        from ..models_path import DLIB_RESNET, model_file

        path = model_file(DLIB_RESNET)
        value, source = BASE_THRESHOLDS["dlib-resnet-v1"]
        return {"name": STOCK_MODEL, "description": "dlib's stock ResNet face descriptor (web photos, mostly "
                "Western adults), from the face_recognition_models package", "file": str(path),
                "size_bytes": path.stat().st_size, "sha256": file_sha256(path), "distance": "euclidean",
                "threshold": {"value": value, "rule": "max-accuracy", "source": source}}
    body = dict(card(name))
    body["file"] = str(network_path(name))
    return body
