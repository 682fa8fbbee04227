"""A network that ships inside kface (``kface/models/``), run through ONNX Runtime: chips in, vectors out."""
from __future__ import annotations

from typing import Optional

import numpy as np


class ShippedBackbone:
    """The exported network of a shipped model (its card's sha256 is checked first); no torch."""

    def __init__(self, spec, device: str = "auto", weights: Optional[str] = None):
        from ..engines import OnnxNetwork
        from ..models import model_of_backbone, network_path

        self.name = spec.name
        self.spec = spec
        self._network = OnnxNetwork(network_path(model_of_backbone(spec.name)), device=device)

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        return self._network.run(chips)
