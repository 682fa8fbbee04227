"""ONNX networks that ship inside the package (``kface/models/*.onnx``), each checked against its card.

A card is the JSON file beside the network: ``file`` (the ONNX file's name), ``sha256`` (checked
before the session is created), provenance and the command that made it. :data:`SHIPPED_NETWORKS`
maps a backbone family (:class:`~kface.backbones.BackboneSpec`'s ``family``) to its card, so a backbone
that serves a shipped file is one line here plus one registry line in :mod:`kface.backbones`.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import KfaceError
from ..models import MODELS_DIR
from .runtime import OnnxNetwork

#: Backbone family -> card file in kface/models/.
SHIPPED_NETWORKS = {"dlib-resnet-v1": "dlib-resnet-v1.json"}


def shipped_card(family: str) -> dict:
    """The card of the network shipped for ``family`` (its file not yet checked: see :func:`shipped_network`)."""
    if family not in SHIPPED_NETWORKS:
        raise KfaceError(f"no ONNX network ships for {family!r}; shipped: {', '.join(sorted(SHIPPED_NETWORKS))}")
    path = MODELS_DIR / SHIPPED_NETWORKS[family]
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KfaceError(f"{path}: the shipped network's card is unreadable ({exc}); reinstall kface, or rebuild it "
                         f"with python -m kface.engines.build_shipped") from None


def shipped_network_path(family: str) -> Path:
    return MODELS_DIR / shipped_card(family)["file"]


def has_shipped_network(family: str) -> bool:
    """Whether the card and network file for ``family`` are installed (the sha256 is checked at load)."""
    if family not in SHIPPED_NETWORKS or not (MODELS_DIR / SHIPPED_NETWORKS[family]).is_file():
        return False
    return shipped_network_path(family).is_file()


def shipped_network(family: str, device: str = "auto") -> OnnxNetwork:
    """The :class:`OnnxNetwork` shipped for ``family``; its sha256 is checked when the session is created."""
    card = shipped_card(family)
    return OnnxNetwork(MODELS_DIR / card["file"], device=device, sha256=card["sha256"])
