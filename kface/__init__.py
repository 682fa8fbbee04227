"""kface: face verification for Korean faces.

The public API, in pipeline order (imported lazily, so ``import kface`` is cheap)::

    from kface import load_image, embed, verify, load_verifier, FaceOptions
    from kface import analyze, Gallery, cluster, make_pairs, benchmark_lfw, benchmark_families

and age editing (:mod:`kface.ageedit`): ``kface.age_edit(image, to="67+")``, ``kface.age_strip(image)``.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_image": "kface.faces.images",
    "embed": "kface.api",
    "verify": "kface.api",
    "load_verifier": "kface.api",
    "analyze": "kface.toolkit",
    "cluster": "kface.toolkit",
    "Clusters": "kface.toolkit",
    "make_pairs": "kface.toolkit",
    "PairFile": "kface.toolkit",
    "benchmark_lfw": "kface.toolkit",
    "benchmark_families": "kface.toolkit",
    "Gallery": "kface.galleries.gallery",
    "FaceOptions": "kface.api",
    "Verifier": "kface.api",
    "Verification": "kface.api",
    "Embedder": "kface.embeddings.embedder",
    "EmbeddingResult": "kface.embeddings.embedder",
    "age_edit": "kface.ageedit.editor",
    "age_strip": "kface.ageedit.editor",
    "KfaceError": "kface.errors",
    "InputError": "kface.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kface' has no attribute {name!r}")
