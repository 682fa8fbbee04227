"""A :class:`~kface.api.Verifier` for a shipped model: its network through ONNX Runtime, its card's threshold."""
from __future__ import annotations

from typing import Optional

from . import card


def shipped_verifier(name: str, detector: Optional[str] = None, threshold: Optional[float] = None,
                     fallback: str = "none", device: str = "auto", cache: bool = True, progress: bool = False,
                     max_pixels: Optional[int] = None):
    """The verifier of shipped model ``name`` (e.g. ``"korean"``).

    The face settings (upsampling) and distance come from the card (flip averaging, where the recipe has
    it, is inside the exported graph, so the embedder adds none); the detector is the
    caller's or, when None, the card's; the threshold is the card's (chosen on held-out validation
    families) unless ``threshold`` is given.
    """
    from ..api import Verifier
    from ..embeddings import Embedder

    body = card(name)
    faces = body["faces"]
    embedder = Embedder(body["backbone"], detector=detector or faces["detector"], upsample=faces["upsample"],
                        fallback=fallback, tta="none", device=device, cache=cache, progress=progress,
                        max_pixels=max_pixels)
    if threshold is None:
        value = body["threshold"]["value"]
        source = f"{name} model card: {body['threshold']['source']}"
    else:
        value, source = threshold, "--threshold"
    return Verifier(embedder, value, source, distance=body["distance"], model_name=name)
