"""The Python API: ``embed`` and ``verify``, and the :class:`Verifier` behind them.

A verifier is an :class:`~kface.embeddings.embedder.Embedder` (backbone + detector + cache), a distance and a
threshold. The threshold of an untrained backbone is the one measured for it on LFW View-2 (see
``BASE_THRESHOLDS``); a shipped model brings its card's (:func:`shipped_verifier`); a trained model
(``model=runs/NAME/model.pt``, :func:`verifier_from_checkpoint`) brings its head and the threshold chosen
on its validation split (:mod:`kface.training.checkpoints` only reads the file).
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from .attributes.shipped import load_shipped_attributes
from .backbones import DEFAULT_BACKBONE, backbone_for_engine, get_spec
from .distances import get_distance, same_probability
from .embeddings.embedder import Embedder, EmbeddingResult
from .embeddings.network import NetworkEmbedder
from .embeddings.prefix import PrefixEmbedder
from .engines import ENGINES
from .errors import InputError
from .faces.images import ImageSource
from .metrics.answers import BALANCED, ModelAnswers, answers_from_val, answers_of
from .models import (
    BASE_THRESHOLDS,
    MODEL_FAMILIES,
    STOCK_MODEL,
    card,
    default_model,
    has_network,
    is_shipped,
    network_card,
    network_variant,
    shipped_names,
    shipped_threshold,
)
from .models.attributes import has_shipped_attributes
from .training.checkpoints import (
    checkpoint_weights_file,
    load_checkpoint,
    pair_model_from_checkpoint,
    stored_val_distances,
)
from .training.onnx_cache import checkpoint_network
from .util.cache import CacheSetting, CacheStore, cache_setting


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
    precision: str = "float"  # "int8" where a shipped network's int8 copy ran (kface.models.network_variant)
    # What the card says of this answer (kface.metrics.answers): the operating point, its false-accept and
    # true-accept rates measured on held-out groups, P(one person), caution where the model is weak, and
    # the answer ("same", "different", or "cannot tell" with abstain).
    operating_point: str = "balanced"
    expected_far: Optional[float] = None
    expected_tar: Optional[float] = None
    probability: Optional[float] = None
    caution: Optional[dict] = None
    answer: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class Verifier:
    """Decides same/different for pairs of images with one embedder, head, distance and threshold."""

    def __init__(self, embedder: Embedder, threshold: Optional[float] = None, threshold_source: str = "",
                 distance: str = "euclidean", head=None, probability=None, model_path: Optional[str] = None,
                 model_name: Optional[str] = None, attributes: Optional[Callable[[], Any]] = None,
                 answers: Optional[ModelAnswers] = None, answers_loader: Optional[Callable[[], ModelAnswers]] = None,
                 measure_only: bool = False):
        # The card's operating points, probability and caution (kface.metrics.answers); a trained model's come from
        # its stored val pairs, on first use (answers_loader).
        self.answers = answers
        self.answers_loader = answers_loader
        self.operating_point = BALANCED
        self.abstain = False
        self.embedder = embedder
        # Loads the attribute heads that read this model's embeddings (None: no such heads), on first use.
        self.attributes = attributes
        self.distance = get_distance(distance)
        self.head = head  # a callable (N, D) float32 -> (N, D') float32, or None for the raw backbone
        # A trained model's distance -> P(same) mapping, callable (N,) -> (N,); None for a raw backbone.
        self.probability = probability
        self.model_path = model_path
        self.model_name = model_name or model_path or embedder.spec.name
        if threshold is None:
            threshold, threshold_source = BASE_THRESHOLDS.get(embedder.spec.family, (None, ""))
            if threshold is None and not measure_only:
                raise InputError(f"backbone {embedder.spec.name} has no measured default threshold; "
                                 f"pass --threshold or a trained --model")
        #: None only for a verifier that measures distances and decides nothing (``measure_only``).
        self.threshold = None if threshold is None else float(threshold)
        self.threshold_source = threshold_source

    def use_point(self, operating_point: Optional[str] = None, far: Optional[float] = None,
                  abstain: bool = False) -> Verifier:
        """Answer at the card's ``operating_point`` (or the point at false-accept rate ``far``); with ``abstain``,
        say "cannot tell" inside the model's unsure distance range. Returns the verifier."""
        self.abstain = abstain
        if operating_point is None and far is None:
            return self
        if self.threshold_source == "--threshold":
            raise InputError("give --threshold or an operating point (--operating-point, --far), not both")
        self.operating_point, self.threshold = self.point_threshold(operating_point, far)
        self.threshold_source = self.answers.source(self.model_name, self.operating_point)
        return self

    def point_threshold(self, operating_point: Optional[str] = None, far: Optional[float] = None) -> tuple[str, float]:
        """The name and threshold of the model's operating point asked for (by name, or by false-accept rate)."""
        if self.answers is None and self.answers_loader is not None:
            self.answers = self.answers_loader()
        if self.answers is None:
            raise InputError(f"model {self.model_name} has no operating points; use --threshold")
        name = self.answers.point(operating_point, far)
        return name, self.answers.threshold(name)

    def answer_fields(self, distance: float, same: bool, ages: list[Optional[dict]]) -> dict:
        """The :class:`Verification` fields beyond the decision, from the card's answers (see
        :mod:`kface.metrics.answers`)."""
        if self.answers is not None:
            fields = self.answers.annotate(self.operating_point, distance, same, ages, self.abstain)
            if self.threshold_source == "--threshold":  # the card's rates are for its own thresholds
                fields.update(operating_point="--threshold", expected_far=None, expected_tar=None)
            return fields
        probability = float(self.probability(np.array([distance]))[0]) if self.probability is not None else None
        return {"operating_point": self.operating_point, "probability": probability,
                "answer": "same" if same else "different"}

    def pair_probabilities(self, distances: np.ndarray, ages_a: Sequence[Optional[dict]],
                           ages_b: Sequence[Optional[dict]]) -> Optional[np.ndarray]:
        """P(one person) per pair (NaN where the distance is), from the card's calibration (by each pair's caution
        band, from its faces' estimated ages) or a trained model's own mapping; None where the model has neither."""
        distances = np.asarray(distances, dtype=np.float64)
        if self.answers is not None and "probability" in self.answers.block:
            return np.array([self.answers.probability(d, self.answers.band([a, b])) if np.isfinite(d) else np.nan
                             for d, a, b in zip(distances, ages_a, ages_b)])
        if self.probability is not None:
            return np.asarray(self.probability(distances), dtype=np.float64)
        return None

    def needs_ages(self) -> bool:
        """Whether answers read the faces' estimated ages (the card has a caution rule and an attribute model runs)."""
        return self.answers is not None and "caution" in self.answers.block and self.attributes is not None

    def embed(self, sources: Sequence[ImageSource], on_error: str = "raise") -> tuple[np.ndarray, EmbeddingResult]:
        """Vectors in the space the threshold applies to (after the head, if any), and the raw result."""
        result = self.embedder.embed(sources, on_error=on_error)
        vectors = result.embeddings if self.head is None else self.head(result.embeddings)
        return vectors, result

    def distances(self, vectors_a: np.ndarray, vectors_b: np.ndarray) -> np.ndarray:
        return self.distance.pairwise(vectors_a, vectors_b)

    def estimated_ages(self, sources: Sequence[ImageSource], result: EmbeddingResult) -> list[Optional[dict]]:
        """Each face's estimated age (``age_group``, ``expected_age``, ``age_interval``) and ``gender`` by the
        attribute model that reads this verifier's faces (their chips, or its embeddings ``result``); None per
        face where there is none."""
        model = self.attributes() if self.attributes is not None else None
        if model is None:
            return [None] * len(sources)
        if model.input == "chips":
            entries, _ = self.embedder.faces(sources)  # the faces just embedded, from the cache
            probabilities = model.chip_probabilities(np.stack([entry.chip for entry in entries]))
        else:
            probabilities = model.probabilities(result.embeddings)
        return [{key: answer[key] for key in ("age_group", "expected_age", "age_interval", "gender")}
                for answer in (model.describe(probabilities, row) for row in range(len(sources)))]

    def verify(self, image_a: ImageSource, image_b: ImageSource, ages: bool = False) -> Verification:
        """Same or different; with ``ages``, each face's estimated age too (its ``age``: None where the model
        has no attribute heads, as stock dlib and trained checkpoints)."""
        if self.threshold is None:
            raise InputError(f"backbone {self.embedder.spec.name} has no measured default threshold; "
                             f"pass --threshold or a trained --model")
        vectors, result = self.embed([image_a, image_b])
        distance = float(self.distances(vectors[:1], vectors[1:])[0])
        faces = [result.face(i) for i in range(2)]
        # The caution rule reads the faces' estimated ages, wherever the card has one.
        face_ages = self.estimated_ages([image_a, image_b], result) if ages or self.needs_ages() else [None, None]
        if ages:
            for face, age in zip(faces, face_ages):
                face["age"] = age
        same = bool(self.distance.is_same(distance, self.threshold))
        return Verification(same, distance, self.threshold, self.threshold_source, self.embedder.spec.name,
                            self.distance.name, faces, self.model_name, self.embedder.precision,
                            **self.answer_fields(distance, same, face_ages))


@dataclass(frozen=True)
class FaceOptions:
    """How a verifier finds faces and keeps them: one value passed whole (``load_verifier(options=...)``).

    ``detector``: ``auto`` (HOG, then MTCNN, then padded HOG), ``dlib``, ``mtcnn`` or ``none``; for a shipped
    model, None takes its card's. ``fallback``: ``none`` (no face is an error) or ``whole-image``.
    ``max_pixels``: refuse larger images (None: the default limit). ``device``: ``auto``, ``cpu`` or ``cuda``.
    ``cache``: the face and embedding cache (True: the disk cache; False: none; a
    :class:`~kface.util.cache.CacheSetting` for a folder of its own, or a cache object such as
    :class:`~kface.util.cache.RequestMemory`). ``progress``: progress bars on stderr.
    """

    detector: Optional[str] = "auto"
    fallback: str = "none"
    max_pixels: Optional[int] = None
    device: str = "auto"
    cache: Union[bool, CacheSetting, CacheStore] = True
    progress: bool = False

    def embedder(self, backbone: str, **settings) -> Embedder:
        """An :class:`Embedder` of ``backbone`` with these options (``settings``: upsample, tta, weights...)."""
        return Embedder(backbone, detector=self.detector, fallback=self.fallback, device=self.device, cache=self.cache,
                        progress=self.progress, max_pixels=self.max_pixels, **settings)


def load_verifier(model: Optional[str] = None, *, backbone: str = DEFAULT_BACKBONE, threshold: Optional[float] = None,
                  weights: Optional[str] = None, engine: str = "onnx", options: FaceOptions = FaceOptions(),
                  operating_point: Optional[str] = None, far: Optional[float] = None, abstain: bool = False,
                  measure_only: bool = False) -> Verifier:
    """A :class:`Verifier` for a shipped model (``"korean"``, ``"dlib"``; None = the default), an
    untrained ``backbone`` (with ``model="dlib"``), or a trained model checkpoint (a path).

    ``options``: how faces are found and kept (:class:`FaceOptions`). ``engine``: ``onnx`` (default:
    onnxruntime, no torch) or ``torch``, for stock dlib and checkpoints (see
    :func:`kface.backbones.backbone_for_engine`); shipped ONNX models run on onnxruntime. ``measure_only``:
    the verifier only measures distances (a benchmark choosing its own thresholds), so a backbone with no
    measured threshold is no error. ``operating_point`` (``balanced``, ``far=1e-2``, ``far=1e-3``) or ``far``
    (0.01, 0.001) picks the card's threshold for that false-accept rate; ``abstain`` answers "cannot tell"
    where the model is unsure (see :meth:`Verifier.use_point`).
    """
    verifier = _load_verifier(model, backbone, threshold, weights, engine, options, measure_only)
    return verifier.use_point(operating_point, far, abstain)


def _load_verifier(model: Optional[str], backbone: str, threshold: Optional[float], weights: Optional[str],
                   engine: str, options: FaceOptions, measure_only: bool) -> Verifier:
    if model is None:
        model = default_model() if backbone == DEFAULT_BACKBONE else STOCK_MODEL
    if is_shipped(model) and model != STOCK_MODEL:
        return shipped_verifier(model, threshold=threshold, options=options)
    if model != STOCK_MODEL:
        if not os.path.isfile(model):
            raise InputError(f"--model {model}: no such model file, and no shipped model of that name "
                             f"(shipped: {', '.join(shipped_names())})")
        return verifier_from_checkpoint(model, threshold=threshold, engine=engine, options=options)
    embedder = options.embedder(backbone_for_engine(backbone, engine), weights=weights)
    source = "--threshold" if threshold is not None else ""
    stock = backbone == DEFAULT_BACKBONE
    return Verifier(embedder, threshold, source, model_name=STOCK_MODEL if stock else None,
                    answers=_stock_answers() if stock else None, measure_only=measure_only)


def _stock_answers() -> Optional[ModelAnswers]:
    """Stock dlib's answers block (its network card's), measured at its LFW threshold on the Korean groups."""
    family = get_spec(DEFAULT_BACKBONE).family
    return answers_of(network_card(family)) if has_network(family) else None


# -- verifiers of shipped models and trained checkpoints -------------------------------------------------
def shipped_verifier(name: str, *, threshold: Optional[float] = None, options: FaceOptions = FaceOptions(detector=None)
                     ) -> Verifier:
    """The verifier of shipped model ``name`` (e.g. ``"korean"``).

    The face settings (upsampling) and distance come from the card (flip averaging, where the recipe has
    it, is inside the exported graph, so the embedder adds none); the detector is ``options``' or, when
    None, the card's; the threshold is the card's for the copy that runs (chosen on held-out validation
    families) unless ``threshold`` is given.
    """
    body = card(name)
    faces = body["faces"]
    embedder = replace(options, detector=options.detector or faces["detector"]).embedder(
        body["backbone"], upsample=faces["upsample"], tta="none")
    value, source = shipped_threshold(name, options.device) if threshold is None else (threshold, "--threshold")
    answers = answers_of(body, network_variant(MODEL_FAMILIES[name], options.device)["precision"])
    return Verifier(embedder, value, source, distance=body["distance"], model_name=name,
                    attributes=_shipped_attributes_for(body["backbone"], options.device), answers=answers)


def _shipped_attributes_for(backbone: str, device: str) -> Optional[Callable[[], Any]]:
    """A loader of the shipped attribute model where it reads ``backbone``'s faces (chips cut alike), else None."""
    if not has_shipped_attributes():
        return None

    def load():  # the card (and the file's sha256) is read only when ages are asked for
        model = load_shipped_attributes(device)
        ours, theirs = get_spec(backbone), get_spec(model.backbone)
        same_chips = (ours.input_size, ours.chip_padding) == (theirs.input_size, theirs.chip_padding)
        return model if same_chips else None

    return load


def verifier_from_checkpoint(model: Union[str, os.PathLike], *, threshold: Optional[float] = None,
                             engine: str = "onnx", options: FaceOptions = FaceOptions(detector="dlib")) -> Verifier:
    """A :class:`Verifier` for the trained model in ``model`` (a model.pt).

    The backbone, cut point, test-time augmentation, upsampling and distance come from the
    checkpoint; the detector and fallback from ``options`` (a note says when they differ from
    training); the threshold is the checkpoint's unless ``threshold`` is given.

    ``engine``: ``onnx`` (default) runs the whole chip -> vector path (tuned layers and head included)
    through ONNX Runtime, exported on first use and cached by the checkpoint's sha256
    (:mod:`kface.training.onnx_cache`), so later calls import no torch; ``torch`` runs the PairModel.
    """
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if engine == "onnx":
        return _onnx_verifier(model, threshold, options)
    return _torch_verifier(model, threshold, options)


def _note_face_settings(model, features: dict, options: FaceOptions) -> None:
    for name, given in (("detector", options.detector), ("fallback", options.fallback)):
        if given != features[name]:
            logging.getLogger("kface").info("%s was trained with --%s %s; verifying with --%s %s",
                                            model, name, features[name], name, given)


def _threshold_and_source(model, saved: dict, threshold: Optional[float]) -> tuple[float, str]:
    if threshold is not None:
        return threshold, "--threshold"
    return saved["value"], f"{model}: {saved['rule']} rule on the {saved['split'] or 'given'} split"


def _onnx_verifier(model, threshold: Optional[float], options: FaceOptions) -> Verifier:
    network, card = checkpoint_network(model, options.device, cache_setting(options.cache))
    features = card["features"]
    _note_face_settings(model, features, options)
    # The graph holds the backbone, flip averaging and head: the Embedder only finds and caches faces.
    faces = options.embedder(card["backbone"], upsample=features["upsample"])
    mapping = card["probability"]
    probability = functools.partial(same_probability, offset=mapping["offset"], log_sharpness=mapping["log_sharpness"])
    value, source = _threshold_and_source(model, card["threshold"], threshold)
    return Verifier(NetworkEmbedder(faces, network, features["tta"]), value, source, distance=card["distance"],
                    probability=probability, model_path=str(model), answers_loader=_checkpoint_answers(model, card))


def _torch_verifier(model, threshold: Optional[float], options: FaceOptions) -> Verifier:
    import torch

    checkpoint = load_checkpoint(model)
    features = checkpoint["features"]
    weights = checkpoint_weights_file(checkpoint, model)
    _note_face_settings(model, features, options)
    # With trained backbone layers the model averages the views itself (--tta flip), after those layers.
    embedder_tta = features["tta"] if features["cut"] == "none" else "none"
    embedder = options.embedder(checkpoint["backbone"], upsample=features["upsample"], tta=embedder_tta,
                                weights=weights)
    if features["cut"] != "none":
        embedder = PrefixEmbedder(embedder, features["cut"], options.device)
    pair_model = pair_model_from_checkpoint(checkpoint)
    shape = tuple(features["shape"])
    views = slice(None) if features["cut"] == "none" or features["tta"] == "flip" else slice(0, 1)

    def head(vectors: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            inputs = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).view(-1, *shape)
            return pair_model.embed(inputs[:, views]).numpy()

    mapping = pair_model.probability
    probability = functools.partial(same_probability, offset=float(mapping.offset),
                                    log_sharpness=float(mapping.log_sharpness))
    value, source = _threshold_and_source(model, checkpoint["threshold"], threshold)
    return Verifier(embedder, value, source, distance=checkpoint["distance"], head=head, probability=probability,
                    model_path=str(model), answers_loader=_checkpoint_answers(model, checkpoint))


def _checkpoint_answers(model, saved: dict) -> Callable[[], Optional[ModelAnswers]]:
    """A loader of a trained model's operating points from the val distances its checkpoint stores (read only
    when a point is asked for: reading the checkpoint needs torch)."""
    def load() -> Optional[ModelAnswers]:
        stored = stored_val_distances(load_checkpoint(model))
        if stored is None:
            return None
        distances, labels, _ = stored
        kept = np.isfinite(distances)
        rule = f"{model}: {saved['threshold']['rule']} rule on its val split"
        return answers_from_val(distances[kept], labels[kept], saved["threshold"]["value"], rule)

    return load


def verify(image_a: ImageSource, image_b: ImageSource, *, model: Optional[str] = None,
           backbone: str = DEFAULT_BACKBONE, detector: str = "auto", threshold: Optional[float] = None,
           fallback: str = "none", device: str = "auto", cache: Union[bool, CacheSetting] = True,
           operating_point: Optional[str] = None,
           far: Optional[float] = None, abstain: bool = False) -> Verification:
    """Are the faces in ``image_a`` and ``image_b`` the same person?

    Images are paths or encoded bytes. Raises :class:`~kface.errors.InputError` for an unreadable image
    or one with no face (unless ``fallback="whole-image"``). ``operating_point``/``far`` and ``abstain``:
    see :func:`load_verifier`; the answer carries the point's expected FAR and TAR, ``probability``
    and, where the model is weak, ``caution``.

    >>> from kface import verify
    >>> verify("examples/obama.jpg", "examples/obama2.jpg").same
    True
    """
    options = FaceOptions(detector=detector, fallback=fallback, device=device, cache=cache)
    verifier = load_verifier(model, backbone=backbone, threshold=threshold, options=options,
                             operating_point=operating_point, far=far, abstain=abstain)
    return verifier.verify(image_a, image_b)


def embed(images: Sequence[ImageSource], *, model: Optional[str] = None, backbone: str = DEFAULT_BACKBONE,
          detector: str = "auto",
          fallback: str = "none", tta: str = "none", device: str = "auto", weights: Optional[str] = None,
          cache: Union[bool, CacheSetting] = True, max_pixels: Optional[int] = None, on_error: str = "raise",
          no_face: str = "error", workers: Optional[int] = None, progress: bool = False) -> EmbeddingResult:
    """Embeddings of ``images`` (paths or bytes) with the given backbone; see :class:`EmbeddingResult`.

    ``no_face="row"`` keeps an image with no face as a row (stage ``none``) instead of an error;
    ``workers``: face-finding processes for many images (None: the CPU cores, 0: this process).
    ``model``: a shipped model (None: the default one, ``korean``, unless another ``backbone`` is named;
    ``dlib``: ``backbone`` as it is) or a trained checkpoint (its vectors, after its head).
    """
    if model is None:
        model = default_model() if backbone == DEFAULT_BACKBONE else STOCK_MODEL
    if model in MODEL_FAMILIES:
        backbone, tta = card(model)["backbone"], "none"  # the shipped graph does its own flip averaging
    elif model != STOCK_MODEL:
        options = FaceOptions(detector=detector, fallback=fallback, device=device, cache=cache,
                              max_pixels=max_pixels, progress=progress)
        verifier = load_verifier(model, options=options)
        vectors, result = verifier.embed(images, on_error=on_error)
        return replace(result, embeddings=vectors)
    embedder = Embedder(backbone, detector=detector, fallback=fallback, tta=tta, device=device,
                        weights=weights, cache=cache, max_pixels=max_pixels, workers=workers, progress=progress)
    try:
        return embedder.embed(images, on_error=on_error, no_face=no_face)
    finally:
        embedder.close()
