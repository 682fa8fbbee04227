"""A verifier that takes its vectors from a Parquet embedding dataset where it holds them (``--embeddings``)."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError
from ..faces.images import content_hash, read_bytes, source_name
from .embedder import EmbeddingResult
from .parquet import read_vectors, verifier_model_key


class StoredVerifier:
    """A verifier that takes each image's vector from a Parquet embedding dataset where the dataset holds
    that content (by sha256, rows of the verifier's own model key), and embeds only the rest.

    Everything else (distance, threshold, head...) is the wrapped verifier's; ``reused`` and
    ``computed`` count the images each way.
    """

    def __init__(self, verifier, folder: os.PathLike):
        self.verifier = verifier
        self.stored = read_vectors(folder, verifier_model_key(verifier))
        self._row = {sha: i for i, sha in enumerate(self.stored.sha256)}
        self.reused = 0
        self.computed = 0

    def embed(self, sources: Sequence, on_error: str = "raise"):
        """(vectors, result) as :meth:`kface.api.Verifier.embed` gives them, stored vectors where held."""
        rows: list[Optional[int]] = []
        for source in sources:
            try:
                rows.append(self._row.get(content_hash(read_bytes(source))))
            except InputError:
                rows.append(None)  # the verifier reports it as it would
        missing = [i for i, row in enumerate(rows) if row is None]
        dim = self.stored.vectors.shape[1]
        vectors = np.full((len(sources), dim), np.nan, dtype=np.float32)
        names = [source_name(source, i, len(sources)) for i, source in enumerate(sources)]
        stages = ["error"] * len(sources)
        errors: dict[str, str] = {}
        if missing:
            new, result = self.verifier.embed([sources[i] for i in missing], on_error=on_error)
            vectors[missing] = new
            errors = {names[missing[j]]: result.errors[path] for j, path in enumerate(result.paths)
                      if path in result.errors}
            for j, i in enumerate(missing):
                stages[i] = result.stages[j]
        for i, row in enumerate(rows):
            if row is not None:
                vectors[i] = self.stored.vectors[row]
                stages[i] = self.stored.stages[row]
        self.reused += len(sources) - len(missing)
        self.computed += len(missing)
        found = np.array([stage not in ("error", "none", "whole-image") for stage in stages])
        result = EmbeddingResult(names, vectors, found, stages, [None] * len(sources),
                                 np.zeros(len(sources), dtype=np.int64), errors, computed=len(missing),
                                 precision=self.verifier.embedder.precision)
        return vectors, result

    def __getattr__(self, name: str):
        if name == "verifier":  # not set yet (while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.verifier, name)


def with_stored_vectors(verifier, folder: Optional[os.PathLike]):
    """``verifier`` taking its vectors from the Parquet dataset ``folder`` where it holds them
    (:class:`StoredVerifier`); ``verifier`` itself when ``folder`` is None."""
    return verifier if folder is None else StoredVerifier(verifier, folder)
