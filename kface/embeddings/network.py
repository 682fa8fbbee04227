"""Images -> vectors through an exported network, with :class:`~kface.embeddings.embedder.Embedder`'s interface.

:class:`NetworkEmbedder` takes the faces (aligned chips, cached) from an Embedder and runs them through
an :class:`~kface.engines.runtime.OnnxNetwork` holding a model's whole chip -> vector path (a tuned
checkpoint's suffix and head included), so a :class:`~kface.api.Verifier` serves the model with no torch.
"""
from __future__ import annotations

import numpy as np

from ..engines.runtime import OnnxNetwork
from .embedder import ChipEmbedder, Embedder


class NetworkEmbedder(ChipEmbedder):
    """``embed(sources)`` -> :class:`~kface.embeddings.embedder.EmbeddingResult` of ``network``'s vectors.

    Faces come from ``embedder.faces`` (its detector, face cache and fallback); everything else
    (``spec``, ``settings``, ``close``...) is the wrapped Embedder's. ``tta`` is the flip averaging the
    graph does itself. The result's ``embeddings`` are the graph's output: the vectors distances are
    measured on (after any head), as :meth:`Verifier.embed <kface.api.Verifier.embed>` returns them.
    """

    def __init__(self, embedder: Embedder, network: OnnxNetwork, tta: str = "none"):
        super().__init__(embedder)
        self.empty_size = embedder.spec.embedding_size
        self.network = network
        self.tta = tta

    def _vectors(self, chips: np.ndarray) -> np.ndarray:
        return self.network.run(chips)
