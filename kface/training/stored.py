"""Training on vectors already computed: a Parquet embedding dataset's rows put into the feature store."""
from __future__ import annotations

import os

from ..embeddings.embedder import Embedder
from ..embeddings.parquet import read_vectors
from ..errors import InputError
from .store import FeatureStore


def import_stored_vectors(store: FeatureStore, folder: os.PathLike) -> int:
    """Put the vectors of the Parquet dataset ``folder`` that were made by ``store``'s backbone (its
    model key) into ``store``, so training reads them instead of running the network; returns how many
    rows the dataset held for that key. Only frozen backbones (cut ``none``) train on final vectors."""
    if store.spec.cut != "none":
        raise InputError("--embeddings holds final vectors: --unfreeze trains on the frozen layers' feature maps, "
                         "which a Parquet dataset does not hold")
    embedder = Embedder(**store.spec.embedder_options(), device=store.device, cache=False)
    stored = read_vectors(folder, embedder.vector_tag)
    store.add_rows({sha: (vector, stage) for sha, vector, stage in zip(stored.sha256, stored.vectors, stored.stages)})
    return len(stored.paths)
