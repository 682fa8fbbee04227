"""The ONNX network shipped for a backbone family (:mod:`kface.models` holds the files and their cards)."""
from __future__ import annotations

from ..models import network_card, network_path
from .runtime import OnnxNetwork


def shipped_network(family: str, device: str = "auto") -> OnnxNetwork:
    """The :class:`OnnxNetwork` shipped for ``family``; its sha256 is checked when the session is created."""
    return OnnxNetwork(network_path(family), device=device, sha256=network_card(family)["sha256"])
