"""A backbone served by an ONNX network that ships inside kface (:mod:`kface.models`).

The network file is the one :data:`~kface.models.NETWORK_CARDS` names for the backbone's ``family``; onnxruntime runs
it (CPU, or CUDA where available), with no torch import.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..engines.shipped import shipped_network
from ..errors import InputError


class ShippedOnnxBackbone:
    def __init__(self, spec, device: str = "auto", weights: Optional[str] = None):
        if weights is not None:
            raise InputError(f"backbone {spec.name} runs the network that ships with kface; it takes no --weights")
        self.name = spec.name
        self.spec = spec
        self.network = shipped_network(spec.family, device)

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB aligned chips -> (N, D) float32 embeddings."""
        if len(chips) == 0:
            return np.zeros((0, self.spec.embedding_size), dtype=np.float32)
        return self.network.run(chips)
