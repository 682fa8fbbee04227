"""Images -> vectors through an exported network, with :class:`~kface.embeddings.Embedder`'s interface.

:class:`NetworkEmbedder` takes the faces (aligned chips, cached) from an Embedder and runs them through
an :class:`~kface.engines.runtime.OnnxNetwork` holding a model's whole chip -> vector path (a tuned
checkpoint's suffix and head included), so a :class:`~kface.api.Verifier` serves the model with no torch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..embeddings import EmbeddingResult, Embedder
from ..features import _source_name  # the names Embedder gives (errors are keyed by them)
from ..images import ImageSource
from .runtime import OnnxNetwork


class NetworkEmbedder:
    """``embed(sources)`` -> :class:`~kface.embeddings.EmbeddingResult` of ``network``'s vectors.

    Faces come from ``embedder.faces`` (its detector, face cache and fallback); everything else
    (``spec``, ``settings``, ``close``...) is the wrapped Embedder's. ``tta`` is the flip averaging the
    graph does itself. The result's ``embeddings`` are the graph's output: the vectors distances are
    measured on (after any head), as :meth:`Verifier.embed <kface.api.Verifier.embed>` returns them.
    """

    def __init__(self, embedder: Embedder, network: OnnxNetwork, tta: str = "none"):
        self.embedder = embedder
        self.network = network
        self.tta = tta

    def embed(self, sources: Sequence[ImageSource], on_error: str = "raise") -> EmbeddingResult:
        entries, errors = self.embedder.faces(sources, on_error=on_error)
        names = [_source_name(source, i, len(sources)) for i, source in enumerate(sources)]
        kept = [i for i, entry in enumerate(entries) if entry is not None]
        vectors = self.network.run(np.stack([entries[i].chip for i in kept])) if kept else None
        dim = vectors.shape[1] if vectors is not None else self.embedder.spec.embedding_size
        embeddings = np.full((len(sources), dim), np.nan, dtype=np.float32)
        if kept:
            embeddings[kept] = vectors
        return EmbeddingResult.from_faces(names, embeddings, entries, errors, len(kept))

    def __getattr__(self, name: str):
        if name == "embedder":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.embedder, name)

    def close(self) -> None:
        self.embedder.close()
