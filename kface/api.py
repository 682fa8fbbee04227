"""The Python API: ``embed`` and ``verify``, and the :class:`Verifier` behind them.

A verifier is an :class:`~kface.embeddings.Embedder` (backbone + detector + cache), a distance and a
threshold. The threshold of an untrained backbone is the one measured for it on LFW View-2 (see
``BASE_THRESHOLDS``); a trained model (``model=runs/NAME/model.pt``) brings its head and the threshold
chosen on its validation split.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from .backbones import DEFAULT_BACKBONE
from .embeddings import EmbeddingResult, Embedder
from .errors import InputError
from .images import ImageSource

#: Thresholds for untrained backbones (Euclidean distance), each with where it comes from.
#: dlib-resnet: the max-accuracy threshold over LFW View-2's 6,000 official pairs (deep-funneled, HOG +
#: 5-point alignment, whole-image fallback), measured by the README's `kface benchmark lfw` command:
#: 0.6144 (every one of the ten nine-fold thresholds was 0.6144 or 0.6150; 10-fold accuracy 98.23%).
BASE_THRESHOLDS: dict[str, tuple[float, str]] = {
    "dlib-resnet-v1": (0.6144, "measured on LFW View-2 (max-accuracy over the 6,000 official pairs)"),
}


@dataclass
class Verification:
    """The answer for one pair of images."""

    same: bool
    distance: float
    threshold: float
    threshold_source: str
    backbone: str
    distance_metric: str
    faces: list[dict] = field(default_factory=list)  # per image: path, found, stage, box, n_faces
    model: str = ""  # the shipped model's name ("korean", "dlib") or the checkpoint's path

    def to_dict(self) -> dict:
        return asdict(self)


class Verifier:
    """Decides same/different for pairs of images with one embedder, head, distance and threshold."""

    def __init__(self, embedder: Embedder, threshold: Optional[float] = None, threshold_source: str = "",
                 distance: str = "euclidean", head=None, probability=None, model_path: Optional[str] = None,
                 model_name: Optional[str] = None):
        from .distances import get_distance

        self.embedder = embedder
        self.distance = get_distance(distance)
        self.head = head  # a callable (N, D) float32 -> (N, D') float32, or None for the raw backbone
        # A trained model's distance -> P(same) mapping, callable (N,) -> (N,); None for a raw backbone.
        self.probability = probability
        self.model_path = model_path
        self.model_name = model_name or model_path or embedder.spec.name
        if threshold is None:
            threshold, threshold_source = BASE_THRESHOLDS.get(embedder.spec.family, (None, ""))
            if threshold is None:
                raise InputError(f"backbone {embedder.spec.name} has no measured default threshold; "
                                 f"pass --threshold or a trained --model")
        self.threshold = float(threshold)
        self.threshold_source = threshold_source

    def embed(self, sources: Sequence[ImageSource], on_error: str = "raise") -> tuple[np.ndarray, EmbeddingResult]:
        """Vectors in the space the threshold applies to (after the head, if any), and the raw result."""
        result = self.embedder.embed(sources, on_error=on_error)
        vectors = result.embeddings if self.head is None else self.head(result.embeddings)
        return vectors, result

    def distances(self, vectors_a: np.ndarray, vectors_b: np.ndarray) -> np.ndarray:
        return self.distance.pairwise(vectors_a, vectors_b)

    def verify(self, image_a: ImageSource, image_b: ImageSource) -> Verification:
        vectors, result = self.embed([image_a, image_b])
        distance = float(self.distances(vectors[:1], vectors[1:])[0])
        faces = [{"path": result.paths[i], "found": bool(result.found[i]), "stage": result.stages[i],
                  "box": list(result.boxes[i]) if result.boxes[i] else None, "n_faces": int(result.n_faces[i])}
                 for i in range(2)]
        return Verification(self.distance.is_same(distance, self.threshold), distance, self.threshold,
                            self.threshold_source, self.embedder.spec.name, self.distance.name, faces,
                            self.model_name)


def load_verifier(model: Optional[str] = None, backbone: str = DEFAULT_BACKBONE, detector: str = "auto",
                  threshold: Optional[float] = None, fallback: str = "none", device: str = "auto",
                  weights: Optional[str] = None, cache: bool = True, progress: bool = False,
                  max_pixels: Optional[int] = None, engine: str = "onnx") -> Verifier:
    """A :class:`Verifier` for a shipped model (``"korean"``, ``"dlib"``; None = the default), an
    untrained ``backbone`` (with ``model="dlib"``), or a trained model checkpoint (a path).

    ``engine``: ``onnx`` (default: onnxruntime, no torch) or ``torch``, for stock dlib and checkpoints
    (see :func:`kface.engines.backbone_for_engine`); shipped ONNX models run on onnxruntime.
    """
    from .engines import backbone_for_engine
    from .models import STOCK_MODEL, default_model, is_shipped

    if model is None:
        model = default_model() if backbone == DEFAULT_BACKBONE else STOCK_MODEL
    if is_shipped(model) and model != STOCK_MODEL:
        from .models.verifier import shipped_verifier

        return shipped_verifier(model, detector=detector, threshold=threshold, fallback=fallback, device=device,
                                cache=cache, progress=progress, max_pixels=max_pixels)
    if model != STOCK_MODEL:
        from .training.checkpoints import verifier_from_checkpoint
        from .models import shipped_names

        if not os.path.isfile(model):
            raise InputError(f"--model {model}: no such model file, and no shipped model of that name "
                             f"(shipped: {', '.join(shipped_names())})")

        return verifier_from_checkpoint(model, detector=detector, threshold=threshold, fallback=fallback,
                                        device=device, cache=cache, progress=progress, max_pixels=max_pixels,
                                        engine=engine)
    embedder = Embedder(backbone_for_engine(backbone, engine), detector=detector, fallback=fallback, device=device,
                        weights=weights, cache=cache, progress=progress, max_pixels=max_pixels)
    source = "--threshold" if threshold is not None else ""
    return Verifier(embedder, threshold, source, model_name=STOCK_MODEL if backbone == DEFAULT_BACKBONE else None)


def verify(image_a: ImageSource, image_b: ImageSource, *, model: Optional[str] = None,
           backbone: str = DEFAULT_BACKBONE, detector: str = "auto", threshold: Optional[float] = None,
           fallback: str = "none", device: str = "auto", cache: bool = True) -> Verification:
    """Are the faces in ``image_a`` and ``image_b`` the same person?

    Images are paths or encoded bytes. Raises :class:`~kface.errors.InputError` for an unreadable image
    or one with no face (unless ``fallback="whole-image"``).

    >>> from kface import verify
    >>> verify("examples/obama.jpg", "examples/obama2.jpg").same
    True
    """
    verifier = load_verifier(model, backbone, detector, threshold, fallback, device, cache=cache)
    return verifier.verify(image_a, image_b)


def embed(images: Sequence[ImageSource], *, model: Optional[str] = None, backbone: str = DEFAULT_BACKBONE,
          detector: str = "auto",
          fallback: str = "none", tta: str = "none", device: str = "auto", weights: Optional[str] = None,
          cache: bool = True, max_pixels: Optional[int] = None, on_error: str = "raise",
          no_face: str = "error", workers: Optional[int] = None, progress: bool = False) -> EmbeddingResult:
    """Embeddings of ``images`` (paths or bytes) with the given backbone; see :class:`EmbeddingResult`.

    ``no_face="row"`` keeps an image with no face as a row (stage ``none``) instead of an error;
    ``workers``: face-finding processes for many images (None: the CPU cores, 0: this process).
    ``model``: a shipped model (None: the default one, ``korean``, unless another ``backbone`` is named;
    ``dlib``: ``backbone`` as it is) or a trained checkpoint (its vectors, after its head).
    """
    from .models import MODEL_FAMILIES, STOCK_MODEL, card, default_model

    if model is None:
        model = default_model() if backbone == DEFAULT_BACKBONE else STOCK_MODEL
    if model in MODEL_FAMILIES:
        backbone, tta = card(model)["backbone"], "none"  # the shipped graph does its own flip averaging
    elif model != STOCK_MODEL:
        verifier = load_verifier(model, detector=detector, fallback=fallback, device=device, cache=cache,
                                 max_pixels=max_pixels, progress=progress)
        vectors, result = verifier.embed(images, on_error=on_error)
        return replace(result, embeddings=vectors)
    embedder = Embedder(backbone, detector=detector, fallback=fallback, tta=tta, device=device,
                        weights=weights, cache=cache, max_pixels=max_pixels, workers=workers, progress=progress)
    try:
        return embedder.embed(images, on_error=on_error, no_face=no_face)
    finally:
        embedder.close()
