"""The ``kface embed`` output: an EmbeddingResult's embedded rows as an .npz (paths, embeddings, found, stages, notes,
and the model and precision that made them)."""
from __future__ import annotations

import os

import numpy as np

from ..errors import KfaceError
from ..util.outputs import write_npz
from .embedder import EmbeddingResult


def write_embedding_file(result: EmbeddingResult, out: os.PathLike, model: str) -> dict:
    """Write every row of ``result`` but the skipped images (``result.errors``) to ``out``, atomically, with
    ``model`` (the name that made them) and the result's precision; return the counts a summary gives:
    count, skipped, dim, found, no_face, stages, computed, precision.

    Raises :class:`KfaceError` when every image was skipped (nothing is written then).
    """
    keep = [i for i, path in enumerate(result.paths) if path not in result.errors]
    if not keep:
        raise KfaceError("no image could be embedded")
    paths = [result.paths[i] for i in keep]
    write_npz(out, paths=np.array(paths), embeddings=result.embeddings[keep],
              found=result.found[keep], stages=np.array([result.stages[i] for i in keep]),
              notes=np.array([result.notes.get(path, "") for path in paths]), model=np.array(model),
              precision=np.array(result.precision))
    return {"count": len(keep), "skipped": len(result.errors), "dim": int(result.embeddings.shape[1]),
            "found": int(result.found[keep].sum()), "no_face": len(result.notes), "stages": result.stage_counts(),
            "computed": result.computed, "precision": result.precision}
