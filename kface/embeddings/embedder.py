"""Images to embeddings, through the face stage and a backbone, cached and batched.

:class:`Embedder` is the one path every command takes from image files to vectors: read and hash each
file, look the embedding up in the cache, detect and align only the faces that are missing (in worker
processes for many images, :mod:`kface.faces.workers`), embed the chips in batches as they arrive, and store
both as they come, so an interrupted run resumes through the cache. A second run over the same images
does no detection and no embedding, and loads neither dlib nor torch.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from ..backbones import DEFAULT_BACKBONE, SHIPPED_NETWORK_MODULE, get_spec, load_backbone
from ..errors import InputError, NoFaceError
from ..faces.detect import Box, FaceFinder, FaceSettings, mirror, no_face_message, stage_counts
from ..faces.images import ImageSource, content_hash, read_bytes, source_name
from ..faces.workers import FaceEntry, FaceTask, default_workers, find_faces
from ..models import network_variant
from ..util.cache import CacheSetting, CacheStore, open_cache
from ..util.hashing import file_sha256
from ..util.progress import progress_bar

log = logging.getLogger("kface")

TTA_MODES = ("none", "flip")
NO_FACE_MODES = ("error", "row")
#: Chips per network run. 32, not 64: no slower on this CPU (132 against 114 faces/s through onnxruntime
#: in one run on a busy machine) and onnxruntime's arena, which keeps the largest batch's activations,
#: is 55 MB smaller (peak 185 against 240 MB).
EMBED_BATCH = 32
#: New faces are written to the cache in transactions of this many (an interruption keeps the rest).
FACE_WRITE_BATCH = 64


@dataclass
class EmbeddingResult:
    """Embeddings of a list of images, in input order.

    Images that failed (only with ``on_error="skip"``) have a NaN row, ``found`` False and their message
    in ``errors``. Images with no face (only with ``no_face="row"``) have a NaN row, ``found`` False,
    stage ``none`` and their message in ``notes``.
    """

    paths: list[str]
    embeddings: np.ndarray  # (N, D) float32
    found: np.ndarray  # (N,) bool: a detector (or label box) found the face
    stages: list[str]  # per image: "hog", "hog-padded", "mtcnn", "label", "whole-image", "none", "error"
    boxes: list[Optional[Box]]
    n_faces: np.ndarray  # (N,) int
    errors: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # name -> why no face was found (stage "none")
    computed: int = 0  # embeddings computed in this call (the rest came from the cache)
    precision: str = "float"  # "int8" where a shipped network's int8 copy made them

    @classmethod
    def from_faces(cls, names: list[str], embeddings: np.ndarray, entries: list, errors: dict,
                   computed: int) -> "EmbeddingResult":
        """A result whose rows are ``embeddings`` of the faces ``entries`` (None for an image that failed)."""
        return cls(
            paths=names, embeddings=embeddings,
            found=np.array([entry is not None and entry.found for entry in entries], dtype=bool),
            stages=[entry.stage if entry is not None else "error" for entry in entries],
            boxes=[entry.box if entry is not None else None for entry in entries],
            n_faces=np.array([entry.n_faces if entry is not None else 0 for entry in entries], dtype=np.int64),
            errors=errors, computed=computed)

    def stage_counts(self) -> dict[str, int]:
        return stage_counts(self.stages)

    def face(self, row: int, path: Optional[str] = None) -> dict:
        """What the answers of verify, search and serve say of row ``row``'s face: ``path`` (the row's, unless
        given), ``found``, ``stage``, ``box``, ``n_faces``."""
        return {"path": self.paths[row] if path is None else path,
                **face_fields(bool(self.found[row]), self.stages[row], self.boxes[row], int(self.n_faces[row]))}


def face_fields(found: bool, stage: str, box: Optional[Box], n_faces: int) -> dict:
    """A face as JSON answers show it: ``found``, ``stage``, ``box`` (a list, or None) and ``n_faces``."""
    return {"found": bool(found), "stage": stage, "box": list(box) if box else None, "n_faces": int(n_faces)}


def shipped_variant(spec, device: str) -> Optional[dict]:
    """The copy of a shipped network (``{precision, file, sha256}``, :func:`kface.models.network_variant`)
    that ``spec`` (a BackboneSpec) runs on ``device``; None for other backbones."""
    if spec.module != SHIPPED_NETWORK_MODULE:
        return None
    return network_variant(spec.family, device)


def shipped_network_tag(spec, device: str) -> tuple[str, str]:
    """(precision, cache tag) of the copy of a shipped network that ``spec`` runs on ``device``;
    ``("float", "")`` for other backbones.

    A shipped file's vectors are keyed by its own sha256: a rebuilt file (same name, new bytes) and the int8
    copy (near, not equal) never read another file's cached vectors or stored features.
    """
    variant = shipped_variant(spec, device)
    if variant is None:
        return "float", ""
    return variant["precision"], f";{variant['precision']}@{variant['sha256'][:16]}"


@dataclass
class _Image:
    """One input on its way through an :class:`Embedder`: its name, bytes, label box and cache keys (no
    ``key``: it could not be read)."""

    index: int
    name: str
    data: Optional[bytes] = None
    box: Optional[Box] = None
    key: Optional[str] = None  # the face cache's
    embedding_key: Optional[str] = None


@dataclass
class _Outcome:
    """One call's policies for what goes wrong (``on_error``, ``no_face``) and what they recorded: the errors
    and the no-face notes by image name."""

    on_error: str
    no_face: str
    detector: str
    errors: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def fail(self, name: str, error: InputError) -> None:
        """An image that cannot be used: raised at once (``on_error="raise"``), else recorded."""
        if self.on_error == "raise":
            raise error
        self.errors[name] = str(error)

    def settle(self, name: str, entry: FaceEntry) -> Optional[FaceEntry]:
        """Apply the no-face policy to an entry: a face passes; a miss is a row (``no_face="row"``), an
        error, or recorded as one (then None)."""
        if entry.chip is not None:
            return entry
        message = no_face_message(name, self.detector)
        if self.no_face == "row":
            self.notes[name] = message
            return entry
        self.fail(name, NoFaceError(message))
        return None


class Embedder:
    """Turns image files into embeddings with one backbone, detector and cache.

    Args:
        backbone: registry name (see ``kface.backbones.BACKBONES``); default ``dlib-resnet``.
        detector: ``dlib`` (HOG, default), ``mtcnn``, ``auto`` or ``none``.
        upsample: HOG upsampling (1 finds faces down to about 40 px).
        fallback: ``none`` (no face is an error) or ``whole-image`` (use the whole image, ``found`` False).
        tta: ``none`` or ``flip`` (average with the mirrored chip's embedding).
        device: ``auto``, ``cpu`` or ``cuda`` for torch backbones and MTCNN.
        weights: a local weights file for backbones that need one.
        cache: use the on-disk cache (True), none (False), a :class:`~kface.util.cache.CacheSetting` (its folder),
            or a cache object (:class:`~kface.util.cache.RequestMemory`, :class:`~kface.util.cache.NullCache`...).
        progress: show progress bars on stderr.
        workers: face-finding worker processes for large inputs (``None``: the CPU cores; 0: this process).
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, detector: str = "dlib", upsample: int = 1,
                 fallback: str = "none", tta: str = "none", device: str = "auto",
                 weights: Optional[str] = None, cache: Union[bool, CacheSetting, CacheStore] = True,
                 max_pixels: Optional[int] = None, progress: bool = False, workers: Optional[int] = None):
        if tta not in TTA_MODES:
            raise InputError(f"unknown --tta {tta!r}; choose one of: {', '.join(TTA_MODES)}")
        if workers is not None and workers < 0:
            raise InputError(f"--workers must be 0 or more, got {workers}")
        if weights is not None and not os.path.isfile(weights):
            raise InputError(f"{weights}: no such weights file")
        self.spec = get_spec(backbone)
        self.settings = FaceSettings(detector, upsample, fallback, self.spec.input_size, self.spec.chip_padding)
        self.tta = tta
        self.device = device
        self.weights = weights
        self.max_pixels = max_pixels
        self.progress = progress
        self.workers = default_workers() if workers is None else workers
        self._cache = open_cache(cache)
        self._finder: Optional[FaceFinder] = None
        self._backbone = None
        weights_tag = f"@{file_sha256(weights)[:16]}" if weights else ""
        #: ``int8`` where a shipped network's int8 copy runs (see :func:`kface.models.network_variant`).
        self.precision, network_tag = shipped_network_tag(self.spec, device)
        #: What turns a chip into this embedder's vector (backbone, weights, shipped copy, flip averaging).
        self.vector_tag = f"bb={self.spec.family}/{self.spec.module}{weights_tag}{network_tag};tta={tta}"

    @property
    def backbone(self):
        """The loaded backbone (loaded on first use)."""
        if self._backbone is None:
            self._backbone = load_backbone(self.spec.name, self.device, self.weights)
        return self._backbone

    @property
    def finder(self) -> FaceFinder:
        if self._finder is None:
            # Detection ignores the fallback: a miss is cached as a miss, and the fallback applies after.
            self._finder = FaceFinder(replace(self.settings, fallback="none"), self.device)
        return self._finder

    # -- keys ------------------------------------------------------------------------------------
    def _face_key(self, sha: str, box: Optional[Box]) -> str:
        label = f";box={','.join(str(int(v)) for v in box)}" if box is not None else ""
        return f"{sha};{self.settings.key()}{label}"

    def _embedding_key(self, face_key: str) -> str:
        # The fallback is part of it: the same image may have a whole-image embedding and a "no face".
        return f"{face_key};fb={self.settings.fallback};{self.vector_tag}"

    # -- the pipeline ----------------------------------------------------------------------------
    def faces(self, sources: Sequence[ImageSource], boxes: Optional[Sequence[Optional[Box]]] = None,
              on_error: str = "raise") -> tuple[list[Optional[FaceEntry]], dict[str, str]]:
        """Face entries for ``sources`` (from the cache, else detected now) and the errors by name."""
        outcome = _Outcome(on_error, "error", self.settings.detector)
        images = self._read(sources, boxes, outcome)
        entries: list[Optional[FaceEntry]] = [None] * len(images)
        wanted = [image for image in images if image.key]
        bar = self._bar(len(wanted), "finding faces")
        try:
            for image, entry in self._face_stream(wanted, outcome):
                entries[image.index] = entry
                bar.update(1)
        finally:
            bar.close()
        self._note_several_faces([(image.name, e.n_faces) for image, e in zip(images, entries) if e is not None])
        return entries, outcome.errors

    def embed(self, sources: Sequence[ImageSource], boxes: Optional[Sequence[Optional[Box]]] = None,
              on_error: str = "raise", no_face: str = "error") -> EmbeddingResult:
        """Embeddings of ``sources`` (paths or bytes), in order.

        ``boxes`` (left, top, right, bottom) per image, e.g. from label files, replace detection.
        ``on_error="raise"`` stops at the first bad image with its one-line error; ``"skip"`` records
        it in ``errors`` and goes on. An image with no face is such an error with ``no_face="error"``;
        with ``no_face="row"`` it is a row of its own (stage ``none``, its message in ``notes``).
        """
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if no_face not in NO_FACE_MODES:
            raise ValueError(f"no_face must be one of {NO_FACE_MODES}, got {no_face!r}")
        outcome = _Outcome(on_error, no_face, self.settings.detector)
        images = self._read(sources, boxes, outcome)
        for image in images:
            image.embedding_key = self._embedding_key(image.key) if image.key else None
        cached = self._cache.get_many("embeddings", [image.embedding_key for image in images if image.embedding_key])
        missing = [image for image in images if image.embedding_key and image.embedding_key not in cached]
        computed = self._embed_missing(missing, cached, outcome) if missing else 0
        return self._assemble(images, cached, outcome, computed)

    def _embed_missing(self, missing: list[_Image], cached: dict, outcome: _Outcome) -> int:
        """Embed the ``missing`` images' faces in batches as they are found; each batch is stored at once
        (and added to ``cached``)."""
        pending: dict[int, tuple[_Image, FaceEntry]] = {}
        counts: list[tuple[str, int]] = []  # faces per image, not the entries: chips leave with their batch
        computed = 0
        bar = self._bar(len(missing), f"embedding ({self.spec.name})")

        def flush() -> None:
            nonlocal pending, computed
            vectors = self._embed_entries({index: entry for index, (_, entry) in pending.items()})
            stored = {pending[index][0].embedding_key: {"embedding": vector, **pending[index][1].to_arrays(chip=False)}
                      for index, vector in vectors.items()}
            self._cache.put_many("embeddings", stored)
            cached.update(stored)
            computed += len(pending)
            bar.update(len(pending))
            pending = {}

        try:
            for image, entry in self._face_stream(missing, outcome):
                if entry is None or entry.chip is None:
                    bar.update(1)
                    continue
                pending[image.index] = (image, entry)
                counts.append((image.name, entry.n_faces))
                if len(pending) >= EMBED_BATCH:
                    flush()
            if pending:
                flush()
        finally:
            bar.close()
        self._note_several_faces(counts)
        return computed

    def _read(self, sources: Sequence[ImageSource], boxes: Optional[Sequence[Optional[Box]]],
              outcome: _Outcome) -> list[_Image]:
        """One record per source: its name, bytes, label box and face-cache key (no key: unreadable, its
        error recorded by ``outcome``)."""
        if boxes is not None and len(boxes) != len(sources):
            raise ValueError("boxes must have one entry per source")
        images = []
        for index, source in enumerate(sources):
            image = _Image(index, source_name(source, index, len(sources)),
                           box=boxes[index] if boxes is not None else None)
            images.append(image)
            try:
                image.data = read_bytes(source)
            except InputError as exc:
                outcome.fail(image.name, exc)
                continue
            image.key = self._face_key(content_hash(image.data), image.box)
        return images

    def _face_stream(self, images: list[_Image], outcome: _Outcome) -> Iterator[tuple[_Image, Optional[FaceEntry]]]:
        """``(image, entry)`` for each of ``images``, cached ones first, then the rest as they are found
        (in worker processes for many images; see :func:`kface.faces.workers.find_faces`). New faces go to the
        cache as they come. Misses go through the fallback, then ``outcome``'s no-face policy; an entry of
        None means the image failed (its message is in ``outcome.errors``)."""
        fallback = self.settings.fallback == "whole-image"
        fallback_keys = {image.index: f"{image.key};fb=whole-image" for image in images}
        wanted = [image.key for image in images] + (list(fallback_keys.values()) if fallback else [])
        cached = self._cache.get_many("faces", wanted)
        tasks: list[FaceTask] = []
        by_index = {image.index: image for image in images}
        for image in images:
            arrays = cached.get(image.key)
            if arrays is not None and fallback and "chip" not in arrays:
                arrays = cached.get(fallback_keys[image.index])  # a cached miss: its whole-image chip, if cached
                if arrays is None:
                    tasks.append(FaceTask(image.index, image.name, image.data, image.box, detect=False,
                                          whole_image=True))
                    continue
            if arrays is not None:
                yield image, outcome.settle(image.name, FaceEntry.from_arrays(arrays))
                continue
            tasks.append(FaceTask(image.index, image.name, image.data, image.box, detect=True, whole_image=fallback))
        if not tasks:  # a warm call: every face was cached
            return
        new: dict[str, dict[str, np.ndarray]] = {}
        try:
            for result in find_faces(tasks, self.finder, self.finder.settings, self.workers, self.max_pixels):
                image = by_index[result.index]
                if result.error is not None:
                    outcome.fail(image.name, InputError(result.error))
                    yield image, None
                    continue
                if result.detected is not None:
                    new[image.key] = result.detected
                if result.whole_image is not None:
                    new[fallback_keys[image.index]] = result.whole_image
                arrays = result.whole_image if result.whole_image is not None else result.detected
                if len(new) >= FACE_WRITE_BATCH:
                    self._cache.put_many("faces", new)
                    new = {}
                yield image, outcome.settle(image.name, FaceEntry.from_arrays(arrays))
        finally:
            self._cache.put_many("faces", new)

    @staticmethod
    def _note_several_faces(counts: list[tuple[str, int]]) -> None:
        """Say (via logging, shown on stderr) where the largest of several faces was taken."""
        several = [(name, count) for name, count in counts if count > 1]
        if len(several) <= 3:
            for name, count in several:
                log.info("%s: %d faces found, using the largest", name, count)
        else:
            log.info("%d images had several faces; the largest was used in each", len(several))

    def _embed_entries(self, entries: dict[int, FaceEntry]) -> dict[int, np.ndarray]:
        if not entries:
            return {}
        order = list(entries)
        vectors: dict[int, np.ndarray] = {}
        for start in range(0, len(order), EMBED_BATCH):
            batch = order[start:start + EMBED_BATCH]
            chips = np.stack([entries[i].chip for i in batch])
            out = self.backbone.embed_chips(chips)
            if self.tta == "flip":
                out = (out + self.backbone.embed_chips(mirror(chips))) / 2
            vectors.update(zip(batch, out.astype(np.float32)))
        return vectors

    def _assemble(self, images: list[_Image], cached: dict, outcome: _Outcome, computed: int) -> EmbeddingResult:
        dim = self.spec.embedding_size
        embeddings = np.full((len(images), dim), np.nan, dtype=np.float32)
        found = np.zeros(len(images), dtype=bool)
        n_faces = np.zeros(len(images), dtype=np.int64)
        stages: list[str] = []
        boxes: list[Optional[Box]] = []
        errors, notes = outcome.errors, outcome.notes
        for i, image in enumerate(images):
            arrays = cached.get(image.embedding_key) if image.embedding_key else None
            if arrays is None or image.name in errors:
                stages.append("none" if image.name in notes and image.name not in errors else "error")
                boxes.append(None)
                continue
            embeddings[i] = arrays["embedding"]
            stage = str(arrays["stage"])
            stages.append(stage)
            found[i] = stage != "whole-image"
            n_faces[i] = int(arrays["n_faces"])
            boxes.append(tuple(int(v) for v in arrays["box"]))
        return EmbeddingResult([image.name for image in images], embeddings, found, stages, boxes, n_faces, errors,
                               notes, computed, self.precision)

    def _bar(self, total: int, desc: str):
        return progress_bar(total, desc, enabled=self.progress)

    def use_cache(self, cache: CacheStore) -> None:
        """Store faces and embeddings in ``cache`` from now on (the current one is closed)."""
        self._cache.close()
        self._cache = cache

    def close(self) -> None:
        self._cache.close()


class ChipEmbedder:
    """An :class:`Embedder`'s face stage with another network after it, behind Embedder's interface.

    Subclasses give :meth:`_vectors` (aligned chips -> rows) and :attr:`empty_size` (the row size when no
    face was found); faces come from ``embedder.faces`` (its detector, face cache and fallback), and every
    other attribute (``spec``, ``settings``, ``tta``...) is the wrapped Embedder's.
    """

    empty_size: int

    def __init__(self, embedder: Embedder):
        self.embedder = embedder

    def _vectors(self, chips: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embed(self, sources: Sequence[ImageSource], on_error: str = "raise") -> EmbeddingResult:
        entries, errors = self.embedder.faces(sources, on_error=on_error)
        names = [source_name(source, i, len(sources)) for i, source in enumerate(sources)]
        kept = [i for i, entry in enumerate(entries) if entry is not None]
        vectors = self._vectors(np.stack([entries[i].chip for i in kept])) if kept else None
        size = vectors.shape[1] if vectors is not None else self.empty_size
        embeddings = np.full((len(sources), size), np.nan, dtype=np.float32)
        if kept:
            embeddings[kept] = vectors
        return EmbeddingResult.from_faces(names, embeddings, entries, errors, len(kept))

    def __getattr__(self, name: str):
        if name == "embedder":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.embedder, name)

    def close(self) -> None:
        self.embedder.close()
