"""The ONNX network shipped for a backbone family (:mod:`kface.models` holds the files and their cards)."""
from __future__ import annotations

from ..models import network_path, network_variant
from .runtime import OnnxNetwork


def shipped_network(family: str, device: str = "auto") -> OnnxNetwork:
    """The :class:`OnnxNetwork` shipped for ``family`` in the precision that runs on ``device`` (see
    :func:`~kface.models.network_variant`); its sha256 is checked when the session is created."""
    variant = network_variant(family, device)
    return OnnxNetwork(network_path(family, variant=variant), device=device, sha256=variant["sha256"])
