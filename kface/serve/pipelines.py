"""The server's per-worker pipelines (verifier, analyzer, request memory) and what each endpoint does with them."""
from __future__ import annotations

import base64
import io
import os
import queue
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from ..api import FaceOptions, load_verifier
from ..attributes.model import load_analyzer
from ..backbones import DEFAULT_BACKBONE
from ..faces.images import MAX_PIXELS
from ..models.attributes import has_shipped_attributes
from ..util.cache import RequestMemory
from ..util.versions import versions
from .distribution import Distribution, card_distribution, stored_distribution
from .uploads import Upload, check_pixels, named_errors

#: A phone photo is 3-12 MB; two of them with multipart overhead fit well under 20 MB.
DEFAULT_MAX_REQUEST_MB = 20.0
#: The libraries /health reports the versions of (from their metadata).
SERVED_PACKAGES = ("fastapi", "uvicorn", "numpy", "dlib-bin", "torch")
#: Requests worked on at once by default: one per core, at most 4 (each holds its own models).
DEFAULT_WORKERS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class ServeLimits:
    """What one request may send."""

    max_request_bytes: int = int(DEFAULT_MAX_REQUEST_MB * 1024 * 1024)
    max_pixels: int = MAX_PIXELS

    def to_dict(self) -> dict:
        return {"max_request_bytes": self.max_request_bytes, "max_pixels": self.max_pixels}


def base_embedder(embedder):
    """The :class:`~kface.embeddings.embedder.Embedder` that finds faces (a trained model's wraps one)."""
    return getattr(embedder, "embedder", embedder)


class Pipeline:
    """One verifier (and analyzer, when the server has an attribute model) with its request memory.

    A pipeline serves one request at a time (:class:`PipelinePool`), and its verifier and analyzer
    belong to it alone: their embedders store faces and embeddings in the pipeline's
    :class:`~kface.util.cache.RequestMemory`, never on disk.
    """

    def __init__(self, verifier, analyzer=None):
        self.verifier = verifier
        self.analyzer = analyzer
        self.memory = RequestMemory()
        for embedder in [verifier.embedder] + ([analyzer.embedder] if analyzer is not None else []):
            base_embedder(embedder).use_cache(self.memory)


class PipelinePool:
    """Hands each request a pipeline no other request is using."""

    def __init__(self, pipelines: Sequence[Pipeline]):
        if not pipelines:
            raise ValueError("a server needs at least one pipeline")
        self.first = pipelines[0]
        self.size = len(pipelines)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for pipeline in pipelines:
            self._free.put(pipeline)

    @contextmanager
    def checkout(self) -> Iterator[Pipeline]:
        pipeline = self._free.get()
        try:
            with pipeline.memory.request():
                yield pipeline
        finally:
            self._free.put(pipeline)


def warm_up(embedder, network: Optional[Callable[[np.ndarray], Any]] = None) -> None:
    """Load the detector, landmark and network models now, not on the first request: the backbone's, or
    ``network`` (chips -> anything) where that reads the faces instead (the shipped attribute model)."""
    from PIL import Image

    base = base_embedder(embedder)
    blank = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(blank, format="PNG")
    base.faces([blank.getvalue()], on_error="skip")
    size = base.spec.input_size
    (network or base.backbone.embed_chips)(np.zeros((1, size, size, 3), dtype=np.uint8))


def png_data_url(chip: np.ndarray) -> str:
    """An RGB uint8 array as a ``data:image/png;base64,...`` URL."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chip, dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class FaceService:
    """The pipelines and what each endpoint does with them (run in worker threads)."""

    def __init__(self, pipelines: Sequence[Pipeline], limits: ServeLimits = ServeLimits(),
                 distribution: Optional[Distribution] = None):
        self.pool = PipelinePool(pipelines)
        self.limits = limits
        first = self.pool.first.verifier
        self.has_analyzer = self.pool.first.analyzer is not None
        if distribution is None:
            distribution = stored_distribution(first.model_path) or card_distribution(first.answers)
        self.distribution = (distribution.to_dict(first.threshold, first.distance.name) if distribution
                             else {"available": False, "source": None,
                                   "note": "this model has no stored distance distributions; start the server with "
                                           "--distances results.csv (from kface verify --pairs FILE --out "
                                           "results.csv with this model) to draw them"})
        # What the page's one plain sentence says of the threshold in use: its point and held-out rates.
        self.distribution["operating_point"] = first.operating_point
        if first.answers is not None and self.distribution["available"]:
            self.distribution["points"] = {name: float(point["threshold"]) for name,
                                           point in first.answers.points.items()}
        carded = first.answers is not None and first.threshold_source != "--threshold"
        self.distribution["expected"] = first.answers.expected(first.operating_point) if carded else None

    def _face(self, embedder, upload: Upload):
        """The upload's face entry (chip, box, stage), kept in the request's memory for what follows."""
        check_pixels(upload, self.limits.max_pixels)
        with named_errors(upload):
            entries, _ = base_embedder(embedder).faces([upload.data])
        return entries[0]

    def verify(self, image_a: Upload, image_b: Upload, chips: bool = False) -> dict:
        uploads = (image_a, image_b)
        with self.pool.checkout() as pipeline:
            verifier = pipeline.verifier
            entries = [self._face(verifier.embedder, upload) for upload in uploads]
            answer = verifier.verify(image_a.data, image_b.data, ages=True).to_dict()
        for face, upload in zip(answer["faces"], uploads):
            face["path"], face["filename"] = upload.field, upload.filename
        if chips:
            answer["chips"] = [png_data_url(entry.chip) for entry in entries]
        return answer

    def analyze(self, image: Upload, all_faces: bool = False, chips: bool = False) -> dict:
        """Needs an analyzer in every pipeline (the endpoint answers 501 without one)."""
        with self.pool.checkout() as pipeline:
            analyzer = pipeline.analyzer
            if all_faces:
                check_pixels(image, self.limits.max_pixels)
                entry = None
            else:
                entry = self._face(analyzer.embedder, image)
            with named_errors(image):
                answer = analyzer.analyze(image.data, all_faces=all_faces)
        answer["image"], answer["filename"] = image.field, image.filename
        if chips and entry is not None:
            answer["chips"] = [png_data_url(entry.chip)]
        return answer

    def health(self) -> dict:
        verifier, analyzer = self.pool.first.verifier, self.pool.first.analyzer
        base = base_embedder(verifier.embedder)
        attributes = None
        if analyzer is not None:
            model = analyzer.model
            attributes = {"model": analyzer.model_path, "tasks": model.tasks, "backbone": model.backbone,
                          "age_groups": model.age_labels}
        return {"status": "ok", "backbone": base.spec.name, "model": verifier.model_path,
                "trained": verifier.model_path is not None, "threshold": verifier.threshold,
                "threshold_source": verifier.threshold_source, "distance_metric": verifier.distance.name,
                "detector": base.settings.detector, "fallback": base.settings.fallback, "attributes": attributes,
                "distribution": self.distribution["available"],
                "distribution_source": self.distribution["source"],
                "limits": {**self.limits.to_dict(), "workers": self.pool.size},
                "versions": versions(SERVED_PACKAGES, loaded=False)}


def load_pipelines(count: int, model: Optional[str] = None, attributes_model: Optional[str] = None, *,
                   backbone: str = DEFAULT_BACKBONE, detector: str = "dlib", fallback: str = "none",
                   threshold: Optional[float] = None, device: str = "auto",
                   max_pixels: Optional[int] = None, answer: Optional[dict] = None) -> list[Pipeline]:
    """``count`` alike pipelines, their models loaded and warmed up, caching nothing on disk (``answer``:
    ``operating_point``, ``far``, ``abstain`` for :func:`kface.api.load_verifier`)."""
    pipelines = []
    for _ in range(count):
        options = FaceOptions(detector=detector, fallback=fallback, device=device, cache=False, max_pixels=max_pixels)
        verifier = load_verifier(model, backbone=backbone, threshold=threshold, options=options,
                                 **(answer or {}))
        analyzer = None
        if attributes_model is not None or has_shipped_attributes():  # default: the shipped Korean model
            analyzer = load_analyzer(attributes_model, detector=detector, fallback=fallback, device=device,
                                     cache=False, max_pixels=max_pixels)
        warm_up(verifier.embedder)
        if analyzer is not None:
            reads_chips = analyzer.model.input == "chips"
            warm_up(analyzer.embedder, analyzer.model.chip_probabilities if reads_chips else None)
        pipelines.append(Pipeline(verifier, analyzer))
    return pipelines

