"""Images to embeddings, through the face stage and a backbone, cached and batched.

:class:`Embedder` is the one path every command takes from image files to vectors: read and hash each
file, look the embedding up in the cache, detect and align only the faces that are missing, embed the
missing chips in batches, store both. A second run over the same images does no detection and no
embedding, and loads neither dlib nor torch.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from .backbones import DEFAULT_BACKBONE, get_spec, load_backbone
from .cache import open_cache
from .errors import InputError, NoFaceError
from .hashing import file_sha256
from .faces import FaceFinder, FaceSettings, mirror
from .images import ImageSource, content_hash, decode_image, read_bytes

log = logging.getLogger("kface")

TTA_MODES = ("none", "flip")
EMBED_BATCH = 64
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
    in ``errors``.
    """

    paths: list[str]
    embeddings: np.ndarray  # (N, D) float32
    found: np.ndarray  # (N,) bool: a detector (or label box) found the face
    stages: list[str]  # per image: "hog", "hog-padded", "mtcnn", "label", "whole-image", "error"
    boxes: list[Optional[Box]]
    n_faces: np.ndarray  # (N,) int
    errors: dict[str, str] = field(default_factory=dict)
    computed: int = 0  # embeddings computed in this call (the rest came from the cache)

    def stage_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for stage in self.stages:
            counts[stage] = counts.get(stage, 0) + 1
        return counts


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
        cache: use the on-disk cache (``cache_dir`` overrides its folder).
        progress: show progress bars on stderr.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, detector: str = "dlib", upsample: int = 1,
                 fallback: str = "none", tta: str = "none", device: str = "auto",
                 weights: Optional[str] = None, cache: bool = True, cache_dir: Optional[os.PathLike] = None,
                 max_pixels: Optional[int] = None, progress: bool = False):
        if tta not in TTA_MODES:
            raise InputError(f"unknown --tta {tta!r}; choose one of: {', '.join(TTA_MODES)}")
        if weights is not None and not os.path.isfile(weights):
            raise InputError(f"{weights}: no such weights file")
        self.spec = get_spec(backbone)
        self.settings = FaceSettings(detector, upsample, fallback, self.spec.input_size, self.spec.chip_padding)
        self.tta = tta
        self.device = device
        self.weights = weights
        self.max_pixels = max_pixels
        self.progress = progress
        self._cache = open_cache(cache, cache_dir)
        self._finder: Optional[FaceFinder] = None
        self._backbone = None
        weights_tag = f"@{file_sha256(weights)[:16]}" if weights else ""
        self._embedding_tag = f"bb={self.spec.family}/{self.spec.module}{weights_tag};tta={tta}"

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
        return f"{face_key};fb={self.settings.fallback};{self._embedding_tag}"

    # -- the pipeline ----------------------------------------------------------------------------
    def faces(self, sources: Sequence[ImageSource], boxes: Optional[Sequence[Optional[Box]]] = None,
              on_error: str = "raise") -> tuple[list[Optional[FaceEntry]], dict[str, str]]:
        """Face entries for ``sources`` (from the cache, else detected now) and the errors by name."""
        names, keys, datas, errors = self._read(sources, boxes, on_error)
        entries = self._faces_for(names, keys, datas, boxes, on_error, errors)
        return entries, errors

    def embed(self, sources: Sequence[ImageSource], boxes: Optional[Sequence[Optional[Box]]] = None,
              on_error: str = "raise") -> EmbeddingResult:
        """Embeddings of ``sources`` (paths or bytes), in order.

        ``boxes`` (left, top, right, bottom) per image, e.g. from label files, replace detection.
        ``on_error="raise"`` stops at the first bad image with its one-line error; ``"skip"`` records
        it in ``errors`` and goes on.
        """
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        names, keys, datas, errors = self._read(sources, boxes, on_error)
        embedding_keys = [self._embedding_key(k) if k else None for k in keys]
        cached = self._cache.get_many("embeddings", [k for k in embedding_keys if k])
        missing = [i for i, k in enumerate(embedding_keys) if k and k not in cached]
        entries: dict[int, FaceEntry] = {}
        if missing:
            found = self._faces_for([names[i] for i in missing], [keys[i] for i in missing],
                                    [datas[i] for i in missing],
                                    [boxes[i] for i in missing] if boxes is not None else None, on_error, errors)
            entries = {i: e for i, e in zip(missing, found) if e is not None}
            stored = {embedding_keys[i]: {"embedding": v, "stage": np.array(entries[i].stage),
                                          "n_faces": np.array(entries[i].n_faces),
                                          "box": np.array(entries[i].box, dtype=np.int64)}
                      for i, v in self._embed_entries(entries).items()}
            self._cache.put_many("embeddings", stored)
            cached.update(stored)
        return self._assemble(names, embedding_keys, cached, errors, computed=len(entries))

    def _read(self, sources, boxes, on_error):
        if boxes is not None and len(boxes) != len(sources):
            raise ValueError("boxes must have one entry per source")
        names, keys, datas, errors = [], [], [], {}
        for index, source in enumerate(sources):
            name = "<upload>" if isinstance(source, (bytes, bytearray)) else str(source)
            if isinstance(source, (bytes, bytearray)) and len(sources) > 1:
                name = f"<upload {index + 1}>"
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

    def _faces_for(self, names, keys, datas, boxes, on_error, errors) -> list[Optional[FaceEntry]]:
        """Face entries from the cache, else detected now; misses go through the fallback."""
        fallback_keys = [f"{k};fb=whole-image" if k else None for k in keys]
        wanted = [k for k in keys if k]
        if self.settings.fallback == "whole-image":
            wanted += [k for k in fallback_keys if k]
        cached = self._cache.get_many("faces", wanted)
        entries: list[Optional[FaceEntry]] = []
        new: dict[str, dict[str, np.ndarray]] = {}
        bar = self._bar(sum(1 for k in keys if k and k not in cached), "detecting faces")
        try:
            for index, (name, key, data) in enumerate(zip(names, keys, datas)):
                if key is None:
                    entries.append(None)
                    continue
                box = boxes[index] if boxes is not None else None
                if key in cached:
                    entry = FaceEntry.from_arrays(cached[key])
                else:
                    entry = self._detect(name, data, box, on_error, errors)
                    if entry is not None:
                        new[key] = entry.to_arrays()
                    bar.update(1)
                if entry is not None and entry.chip is None and self.settings.fallback == "whole-image":
                    fallback_key = fallback_keys[index]
                    if fallback_key in cached:
                        entry = FaceEntry.from_arrays(cached[fallback_key])
                    else:
                        entry = self._detect(name, data, box, on_error, errors, whole_image=True)
                        new[fallback_key] = entry.to_arrays()
                if entry is not None and entry.chip is None:
                    message = (f"{name}: no face found (detector {self.settings.detector}; try --detector auto, "
                               f"or --fallback whole-image for pre-cropped faces)")
                    if on_error == "raise":
                        raise NoFaceError(message)
                    errors[name] = message
                    entry = None
                entries.append(entry)
        finally:
            bar.close()
            self._cache.put_many("faces", new)
        self._note_several_faces(names, entries)
        return entries

    def _detect(self, name, data, box, on_error, errors, whole_image: bool = False) -> Optional[FaceEntry]:
        try:
            kwargs = {"max_pixels": self.max_pixels} if self.max_pixels else {}
            image = decode_image(data, name, **kwargs)
            face = self.finder.whole_image(image) if whole_image else self.finder.find(image, name, box)
        except NoFaceError:
            return FaceEntry(None, None, "none", 0)
        except InputError as exc:
            if on_error == "raise":
                raise
            errors[name] = str(exc)
            return None
        return FaceEntry(face.chip, face.box, face.stage, face.n_faces)

    @staticmethod
    def _note_several_faces(names, entries) -> None:
        """Say (via logging, shown on stderr) where the largest of several faces was taken."""
        several = [(name, e.n_faces) for name, e in zip(names, entries) if e is not None and e.n_faces > 1]
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
        bar = self._bar(len(order), f"embedding ({self.spec.name})")
        try:
            for start in range(0, len(order), EMBED_BATCH):
                batch = order[start:start + EMBED_BATCH]
                chips = np.stack([entries[i].chip for i in batch])
                out = self.backbone.embed_chips(chips)
                if self.tta == "flip":
                    out = (out + self.backbone.embed_chips(mirror(chips))) / 2
                vectors.update(zip(batch, out.astype(np.float32)))
                bar.update(len(batch))
        finally:
            bar.close()
        return vectors

    def _assemble(self, names, embedding_keys, cached, errors, computed) -> EmbeddingResult:
        dim = self.spec.embedding_size
        embeddings = np.full((len(names), dim), np.nan, dtype=np.float32)
        found = np.zeros(len(names), dtype=bool)
        n_faces = np.zeros(len(names), dtype=np.int64)
        stages: list[str] = []
        boxes: list[Optional[Box]] = []
        for i, (name, key) in enumerate(zip(names, embedding_keys)):
            arrays = cached.get(key) if key else None
            if arrays is None or name in errors:
                stages.append("error")
                boxes.append(None)
                continue
            embeddings[i] = arrays["embedding"]
            stage = str(arrays["stage"])
            stages.append(stage)
            found[i] = stage != "whole-image"
            n_faces[i] = int(arrays["n_faces"])
            boxes.append(tuple(int(v) for v in arrays["box"]))
        return EmbeddingResult(list(names), embeddings, found, stages, boxes, n_faces, errors, computed)

    def _bar(self, total: int, desc: str):
        from .progress import progress_bar

        return progress_bar(total, desc, enabled=self.progress)

    def close(self) -> None:
        self._cache.close()
