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
from ..faces.detect import FaceFinder, FaceSettings, mirror
from ..faces.images import ImageSource, content_hash, read_bytes
from ..faces.workers import FaceTask, default_workers, find_faces
from ..models import network_variant
from ..util.cache import CacheStore, open_cache
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
Box = tuple[int, int, int, int]


@dataclass
class FaceEntry:
    """A face as stored in the cache: the chip and where it came from (chip is None when no face)."""

    chip: Optional[np.ndarray]
    box: Optional[Box]
    stage: str  # see faces.Face.stage; "none" when nothing was found
    n_faces: int

    @property
    def found(self) -> bool:
        return self.stage not in ("none", "whole-image")

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"stage": np.array(self.stage), "n_faces": np.array(self.n_faces)}
        if self.chip is not None:
            arrays["chip"] = self.chip
            arrays["box"] = np.array(self.box, dtype=np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "FaceEntry":
        chip = arrays.get("chip")
        box = tuple(int(v) for v in arrays["box"]) if chip is not None else None
        return cls(chip, box, str(arrays["stage"]), int(arrays["n_faces"]))


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
        counts: dict[str, int] = {}
        for stage in self.stages:
            counts[stage] = counts.get(stage, 0) + 1
        return counts


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
        cache: use the on-disk cache (``cache_dir`` overrides its folder), or a cache object to use
            (:class:`~kface.util.cache.RequestMemory`, :class:`~kface.util.cache.NullCache`...).
        progress: show progress bars on stderr.
        workers: face-finding worker processes for large inputs (``None``: the CPU cores; 0: this process).
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, detector: str = "dlib", upsample: int = 1,
                 fallback: str = "none", tta: str = "none", device: str = "auto",
                 weights: Optional[str] = None, cache: Union[bool, CacheStore] = True,
                 cache_dir: Optional[os.PathLike] = None,
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
        self._cache = open_cache(cache, cache_dir)
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
        names, keys, datas, errors = self._read(sources, boxes, on_error)
        entries: list[Optional[FaceEntry]] = [None] * len(names)
        wanted = [i for i, key in enumerate(keys) if key]
        bar = self._bar(len(wanted), "finding faces")
        try:
            for index, entry in self._face_stream(wanted, names, keys, datas, boxes, on_error, "error", errors, {}):
                entries[index] = entry
                bar.update(1)
        finally:
            bar.close()
        self._note_several_faces([(name, e.n_faces) for name, e in zip(names, entries) if e is not None])
        return entries, errors

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
        names, keys, datas, errors = self._read(sources, boxes, on_error)
        embedding_keys = [self._embedding_key(k) if k else None for k in keys]
        cached = self._cache.get_many("embeddings", [k for k in embedding_keys if k])
        missing = [i for i, k in enumerate(embedding_keys) if k and k not in cached]
        notes: dict[str, str] = {}
        computed = 0
        if missing:
            computed = self._embed_missing(missing, names, keys, datas, boxes, embedding_keys, cached,
                                           on_error, no_face, errors, notes)
        return self._assemble(names, embedding_keys, cached, errors, notes, computed)

    def _embed_missing(self, missing, names, keys, datas, boxes, embedding_keys, cached, on_error, no_face,
                       errors, notes) -> int:
        """Embed the ``missing`` images' faces in batches as they are found; each batch is stored at once."""
        pending: dict[int, FaceEntry] = {}
        counts: list[tuple[str, int]] = []  # faces per image, not the entries: chips leave with their batch
        computed = 0
        bar = self._bar(len(missing), f"embedding ({self.spec.name})")

        def flush() -> None:
            nonlocal pending, computed
            stored = {embedding_keys[i]: {"embedding": v, "stage": np.array(pending[i].stage),
                                          "n_faces": np.array(pending[i].n_faces),
                                          "box": np.array(pending[i].box, dtype=np.int64)}
                      for i, v in self._embed_entries(pending).items()}
            self._cache.put_many("embeddings", stored)
            cached.update(stored)
            computed += len(pending)
            bar.update(len(pending))
            pending = {}

        try:
            for index, entry in self._face_stream(missing, names, keys, datas, boxes, on_error, no_face,
                                                  errors, notes):
                if entry is None or entry.chip is None:
                    bar.update(1)
                    continue
                pending[index] = entry
                counts.append((names[index], entry.n_faces))
                if len(pending) >= EMBED_BATCH:
                    flush()
            if pending:
                flush()
        finally:
            bar.close()
        self._note_several_faces(counts)
        return computed

    def _read(self, sources, boxes, on_error):
        if boxes is not None and len(boxes) != len(sources):
            raise ValueError("boxes must have one entry per source")
        names, keys, datas, errors = [], [], [], {}
        for index, source in enumerate(sources):
            name = source_name(source, index, len(sources))
            names.append(name)
            try:
                data = read_bytes(source)
            except InputError as exc:
                if on_error == "raise":
                    raise
                errors[name] = str(exc)
                keys.append(None)
                datas.append(None)
                continue
            box = boxes[index] if boxes is not None else None
            keys.append(self._face_key(content_hash(data), box))
            datas.append(data)
        return names, keys, datas, errors

    def _face_stream(self, indices, names, keys, datas, boxes, on_error, no_face, errors,
                     notes) -> Iterator[tuple[int, Optional[FaceEntry]]]:
        """``(index, entry)`` for each of ``indices``, cached ones first, then the rest as they are found
        (in worker processes for many images; see :func:`kface.faces.workers.find_faces`). New faces go to the
        cache as they come. Misses go through the fallback, then :meth:`_settle`; an entry of None
        means the image failed (its message is in ``errors``)."""
        fallback = self.settings.fallback == "whole-image"
        fallback_keys = {i: f"{keys[i]};fb=whole-image" for i in indices}
        wanted = [keys[i] for i in indices] + ([fallback_keys[i] for i in indices] if fallback else [])
        cached = self._cache.get_many("faces", wanted)
        tasks: list[FaceTask] = []
        for i in indices:
            arrays = cached.get(keys[i])
            if arrays is not None and fallback and "chip" not in arrays:
                arrays = cached.get(fallback_keys[i])  # a cached miss: its whole-image chip, if cached
                if arrays is None:
                    tasks.append(FaceTask(i, names[i], datas[i], boxes[i] if boxes is not None else None,
                                          detect=False, whole_image=True))
                    continue
            if arrays is not None:
                yield i, self._settle(names[i], FaceEntry.from_arrays(arrays), on_error, no_face, errors, notes)
                continue
            tasks.append(FaceTask(i, names[i], datas[i], boxes[i] if boxes is not None else None,
                                  detect=True, whole_image=fallback))
        if not tasks:  # a warm call: every face was cached
            return
        new: dict[str, dict[str, np.ndarray]] = {}
        try:
            for result in find_faces(tasks, self.finder, self.finder.settings, self.workers, self.max_pixels):
                i = result.index
                if result.error is not None:
                    if on_error == "raise":
                        raise InputError(result.error)
                    errors[names[i]] = result.error
                    yield i, None
                    continue
                if result.detected is not None:
                    new[keys[i]] = result.detected
                if result.whole_image is not None:
                    new[fallback_keys[i]] = result.whole_image
                arrays = result.whole_image if result.whole_image is not None else result.detected
                if len(new) >= FACE_WRITE_BATCH:
                    self._cache.put_many("faces", new)
                    new = {}
                yield i, self._settle(names[i], FaceEntry.from_arrays(arrays), on_error, no_face, errors, notes)
        finally:
            self._cache.put_many("faces", new)

    def _settle(self, name, entry: FaceEntry, on_error, no_face, errors, notes) -> Optional[FaceEntry]:
        """Apply the no-face policy to an entry: a face passes; a miss is a row (``no_face="row"``),
        an error, or recorded in ``errors`` (then None)."""
        if entry.chip is not None:
            return entry
        message = (f"{name}: no face found (detector {self.settings.detector}; try --detector auto, "
                   f"or --fallback whole-image for pre-cropped faces)")
        if no_face == "row":
            notes[name] = message
            return entry
        if on_error == "raise":
            raise NoFaceError(message)
        errors[name] = message
        return None

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

    def _assemble(self, names, embedding_keys, cached, errors, notes, computed) -> EmbeddingResult:
        dim = self.spec.embedding_size
        embeddings = np.full((len(names), dim), np.nan, dtype=np.float32)
        found = np.zeros(len(names), dtype=bool)
        n_faces = np.zeros(len(names), dtype=np.int64)
        stages: list[str] = []
        boxes: list[Optional[Box]] = []
        for i, (name, key) in enumerate(zip(names, embedding_keys)):
            arrays = cached.get(key) if key else None
            if arrays is None or name in errors:
                stages.append("none" if name in notes and name not in errors else "error")
                boxes.append(None)
                continue
            embeddings[i] = arrays["embedding"]
            stage = str(arrays["stage"])
            stages.append(stage)
            found[i] = stage != "whole-image"
            n_faces[i] = int(arrays["n_faces"])
            boxes.append(tuple(int(v) for v in arrays["box"]))
        return EmbeddingResult(list(names), embeddings, found, stages, boxes, n_faces, errors, notes, computed,
                               self.precision)

    def _bar(self, total: int, desc: str):
        return progress_bar(total, desc, enabled=self.progress)

    def use_cache(self, cache: CacheStore) -> None:
        """Store faces and embeddings in ``cache`` from now on (the current one is closed)."""
        self._cache.close()
        self._cache = cache

    def close(self) -> None:
        self._cache.close()


def source_name(source: ImageSource, index: int, count: int) -> str:
    """The name :class:`Embedder` gives an input (results and errors are keyed by it)."""
    if isinstance(source, (bytes, bytearray)):
        return "<upload>" if count == 1 else f"<upload {index + 1}>"
    return str(source)


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
