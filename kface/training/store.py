"""The feature store: the frozen part of the backbone, run once per image and kept on disk.

Training reads features, never images. For every image a pair file uses, the store keeps the output of
the network's frozen part:

- cut ``none`` (nothing of the backbone trains): the backbone's embedding, computed through
  :class:`~kface.embeddings.embedder.Embedder`, so its SQLite cache of faces and embeddings is reused and
  filled;
- cuts ``fc``, ``last-block``, ``last-stage`` of a trainable backbone (:mod:`kface.backbones.trainable`):
  the output of the network's frozen prefix, for two views of the image: the aligned chip and the
  chip mirrored left-right (chips come from :meth:`Embedder.faces`, also cached). The layers after
  the cut train from it; the mirror view serves as augmentation in training and for ``--tta flip``;
- cut ``all`` stores nothing: its "features" are the two views of the chip itself, read from the face
  cache each time (the whole network trains, on a GPU).

A store is one folder per setting (backbone weights, cut, test-time augmentation, face settings),
``<cache dir>/features/<tag hash>/``, holding ``rows.bin`` (the rows, back to back, read as a
memory-mapped array) and ``index.json`` (image sha256 -> row and the detection stage, plus the row
shape and dtype). Rows are keyed by image *content*, so renamed or re-sampled pair files reuse them.
Vectors are stored as float32; feature maps (thousands of values per image) as float16, which halves
the disk and memory they take and is what the trainable layers then read, at verify time too.

Writers append under a file lock and replace ``index.json`` atomically after the rows are on disk, so a
crash leaves at most unindexed bytes, which the next writer truncates. With ``workers`` > 0, face
detection (single-threaded in dlib) runs first in that many DataLoader worker processes, which fill
the face cache that the batched backbone pass then reads.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..backbones import DEFAULT_BACKBONE, get_spec
from ..backbones.trainable import check_cut
from ..embeddings.embedder import Embedder, shipped_network_tag
from ..embeddings.prefix import PrefixNetwork, feature_dtype, feature_shape
from ..errors import InputError
from ..faces.detect import FaceSettings, mirror, stage_counts
from ..faces.images import content_hash, read_bytes
from ..util.cache import CacheSetting, cache_setting
from ..util.locks import file_lock
from ..util.outputs import write_json
from ..util.progress import progress_bar

log = logging.getLogger("kface")

STORE_VERSION = 2
#: Images per task handed to a detection worker.
DETECT_CHUNK = 16
#: Images computed and stored at a time.
COMPUTE_CHUNK = 2048


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that decides an image's stored feature."""

    backbone: str = DEFAULT_BACKBONE
    cut: str = "none"
    tta: str = "none"
    detector: str = "dlib"
    upsample: int = 1
    fallback: str = "none"
    weights: Optional[str] = None

    def __post_init__(self) -> None:
        get_spec(self.backbone)  # an unknown name fails here, listing the valid ones
        check_cut(self.backbone, self.cut)

    def embedder_options(self) -> dict:
        """Keyword arguments for :class:`~kface.embeddings.embedder.Embedder`."""
        return {"backbone": self.backbone, "detector": self.detector, "upsample": self.upsample,
                "fallback": self.fallback, "tta": self.tta, "weights": self.weights}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FeatureSet:
    """Features of a list of images, in input order.

    ``features`` is (N, *shape) in the store's dtype; rows of images that failed (unreadable, no face)
    are zero, ``ok`` is False for them and ``errors`` holds their message.
    """

    paths: list[str]
    features: np.ndarray
    ok: np.ndarray
    stages: list[str]  # per image: the face stage ("hog", "hog-padded", "mtcnn", "whole-image") or "error"
    errors: dict[str, str] = field(default_factory=dict)
    computed: int = 0  # images computed in this call; the rest came from the store

    def stage_counts(self) -> dict[str, int]:
        return stage_counts(self.stages)


class FeatureStore:
    """Features of images for one :class:`FeatureSpec`, computed once and kept in the cache folder.

    Args:
        spec: backbone, cut point, test-time augmentation and face settings.
        device: ``auto``, ``cpu`` or ``cuda`` for the backbone.
        workers: detection worker processes (0: detect in this process).
        progress: progress bars on stderr.
        max_pixels: refuse larger images (see :func:`kface.faces.images.decode_image`).
        folder: the folder the store lives under (default: ``cache``'s folder).
        cache: the face and embedding cache the store's images go through (True: the disk cache; a
            :class:`~kface.util.cache.CacheSetting` for its folder or none).
    """

    def __init__(self, spec: FeatureSpec, device: str = "auto", workers: int = 0, progress: bool = False,
                 max_pixels: Optional[int] = None, folder: Optional[os.PathLike] = None,
                 cache: Union[bool, CacheSetting] = True):
        if workers < 0:
            raise InputError(f"--workers must be 0 or more, got {workers}")
        self.spec = spec
        self.device = device
        self.workers = workers
        self.progress = progress
        self.max_pixels = max_pixels
        self.shape = feature_shape(spec.backbone, spec.cut)
        self.dtype = feature_dtype(spec.cut, self.shape)
        self.tag = self._tag()
        self._prefix: Optional[PrefixNetwork] = None
        self.cache = cache_setting(cache)
        root = Path(folder) if folder is not None else self.cache.root
        self.folder = root / "features" / hashlib.sha256(self.tag.encode()).hexdigest()[:20]

    def _tag(self) -> str:
        backbone = get_spec(self.spec.backbone)
        weights = ""
        if self.spec.weights:
            digest = hashlib.sha256(Path(self.spec.weights).read_bytes()).hexdigest()[:16]
            weights = f"@{digest}"
        weights += shipped_network_tag(backbone, self.device)[1]
        # Cut rows hold both views, whatever --tta: flip averaging happens after the trainable layers.
        tta = self.spec.tta if self.spec.cut == "none" else "views"
        # The face cache's own key: whatever changes the chips (detector order, HOG policy) changes the rows.
        faces = FaceSettings(self.spec.detector, self.spec.upsample, self.spec.fallback, backbone.input_size,
                             backbone.chip_padding)
        return (f"v{STORE_VERSION};bb={backbone.family}{weights};cut={self.spec.cut};tta={tta};"
                f"{faces.key()};fb={self.spec.fallback}")

    # -- public ----------------------------------------------------------------------------------
    def features(self, paths: Sequence[str]) -> FeatureSet:
        """Features of ``paths`` (image files), from the store or computed now and added to it
        (for cut ``all``: the chips, from the face cache, never stored here)."""
        if self.spec.cut == "all":
            return self._chips(paths)
        hashes, errors = _hash_files(paths)
        rows = self._read_index()["rows"]
        missing = list(dict.fromkeys(p for p in paths if p in hashes and hashes[p] not in rows))
        if self.workers > 0 and len(missing) > DETECT_CHUNK:
            self._detect_in_workers(missing)
        computed = 0
        bar = progress_bar(len(missing) if len(missing) > COMPUTE_CHUNK else 0, "features", enabled=self.progress)
        try:
            # In chunks: memory stays bounded (chips are 67 kB each) and an interruption keeps what is done.
            for start in range(0, len(missing), COMPUTE_CHUNK):
                chunk = missing[start:start + COMPUTE_CHUNK]
                done, failed = self._compute(chunk)
                errors.update(failed)
                self._append({hashes[p]: value for p, value in done.items()})
                computed += len(done)
                bar.update(len(chunk))
        finally:
            bar.close()
        return self._gather(paths, hashes, self._read_index(), errors, computed)

    def add_rows(self, rows: dict[str, tuple[np.ndarray, str]]) -> None:
        """Store rows made elsewhere (image sha256 -> (features, stage)), e.g. vectors of a Parquet dataset."""
        self._append(rows)

    # -- computing -------------------------------------------------------------------------------
    def _embedder(self, progress: bool) -> Embedder:
        return Embedder(**self.spec.embedder_options(), device=self.device, progress=progress,
                        max_pixels=self.max_pixels, workers=self.workers, cache=self.cache)

    def _compute(self, paths: list[str]) -> tuple[dict[str, tuple[np.ndarray, str]], dict[str, str]]:
        """Features of ``paths`` (none stored yet) and the errors of those that failed."""
        embedder = self._embedder(self.progress)
        try:
            if self.spec.cut == "none":
                result = embedder.embed(paths, on_error="skip")
                done = {path: (result.embeddings[i], result.stages[i]) for i, path in enumerate(result.paths)
                        if path not in result.errors}
                return done, dict(result.errors)
            entries, errors = embedder.faces(paths, on_error="skip")
        finally:
            embedder.close()
        kept = [(path, entry) for path, entry in zip(paths, entries) if entry is not None]
        if not kept:
            return {}, errors
        bar = progress_bar(len(kept), f"frozen layers up to {self.spec.cut}", enabled=self.progress)
        try:
            features = self._prefix_network()(np.stack([entry.chip for _, entry in kept]), bar)
        finally:
            bar.close()
        return {path: (features[i], entry.stage) for i, (path, entry) in enumerate(kept)}, errors

    def _prefix_network(self) -> "PrefixNetwork":
        if self._prefix is None:
            self._prefix = PrefixNetwork(self.spec.backbone, self.spec.cut, self.device, self.spec.weights)
        return self._prefix

    def _chips(self, paths: Sequence[str]) -> FeatureSet:
        """Cut ``all``: each image's chip and its mirror image, as (N, 2, S, S, 3) uint8."""
        unique = list(dict.fromkeys(paths))
        if self.workers > 0 and len(unique) > DETECT_CHUNK:
            self._detect_in_workers(unique)
        embedder = self._embedder(self.progress)
        try:
            entries, errors = embedder.faces(unique, on_error="skip")
        finally:
            embedder.close()
        found = {path: entry for path, entry in zip(unique, entries) if entry is not None}
        features = np.zeros((len(paths), *self.shape), dtype=self.dtype)
        for i, path in enumerate(paths):
            if path in found:
                features[i, 0] = found[path].chip
                features[i, 1] = mirror(found[path].chip[None])[0]
        ok = np.array([path in found for path in paths], dtype=bool)
        stages = [found[path].stage if path in found else "error" for path in paths]
        return FeatureSet(list(paths), features, ok, stages, dict(errors), len(found))

    def _detect_in_workers(self, paths: list[str]) -> None:
        """Fill the face cache in parallel worker processes (dlib's detector uses one core)."""
        from torch.utils.data import DataLoader

        chunks = [paths[i:i + DETECT_CHUNK] for i in range(0, len(paths), DETECT_CHUNK)]
        options = {**self.spec.embedder_options(), "device": "cpu", "max_pixels": self.max_pixels, "cache": self.cache}
        loader = DataLoader(_DetectionTasks(chunks, options), batch_size=None, num_workers=self.workers,
                            worker_init_fn=_quiet_worker)
        bar = progress_bar(len(paths), f"detecting faces ({self.workers} workers)", enabled=self.progress)
        try:
            for count in loader:
                bar.update(count)
        finally:
            bar.close()

    # -- the files -------------------------------------------------------------------------------
    @property
    def _index_path(self) -> Path:
        return self.folder / "index.json"

    @property
    def _rows_path(self) -> Path:
        return self.folder / "rows.bin"

    def _read_index(self) -> dict:
        if not self._index_path.is_file():
            return {"rows": {}}
        try:
            index = json.loads(self._index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{self._index_path}: unreadable feature index ({exc}); delete {self.folder}") from None
        if index.get("tag") != self.tag or tuple(index.get("shape", ())) != self.shape:
            raise InputError(f"{self.folder}: feature store of another setting; delete the folder")
        return index

    def _locked(self):
        return file_lock(self.folder / "lock")

    def _append(self, rows: dict[str, tuple[np.ndarray, str]]) -> None:
        if not rows:
            return
        with self._locked():
            index = self._read_index()
            known = index["rows"]
            new = {sha: value for sha, value in rows.items() if sha not in known}
            row_bytes = int(np.prod(self.shape)) * self.dtype.itemsize
            with open(self._rows_path, "ab") as handle:
                # Bytes past the indexed rows are from an interrupted writer: overwrite them.
                handle.truncate(len(known) * row_bytes)
            with open(self._rows_path, "ab") as handle:
                for sha, (vector, stage) in new.items():
                    handle.write(np.ascontiguousarray(vector, dtype=self.dtype).tobytes())
                    known[sha] = [len(known), stage]
                handle.flush()
                os.fsync(handle.fileno())
            write_json(self._index_path, {"format": "kface-features", "store_version": STORE_VERSION,
                                          "tag": self.tag, "shape": list(self.shape), "dtype": self.dtype.name,
                                          "rows": known})

    def _gather(self, paths, hashes, index, errors, computed) -> FeatureSet:
        rows = index["rows"]
        features = np.zeros((len(paths), *self.shape), dtype=self.dtype)
        ok = np.zeros(len(paths), dtype=bool)
        stages = ["error"] * len(paths)
        wanted = [(i, rows[hashes[p]]) for i, p in enumerate(paths) if p not in errors and hashes.get(p) in rows]
        if wanted:
            try:
                stored = np.memmap(self._rows_path, dtype=self.dtype, mode="r", shape=(len(rows), *self.shape))
            except (OSError, ValueError) as exc:
                raise InputError(f"{self.folder}: damaged feature store ({exc}); delete the folder") from None
            positions = np.array([i for i, _ in wanted])
            features[positions] = stored[np.array([row for _, (row, _) in wanted])]
            ok[positions] = True
            for i, (_, stage) in wanted:
                stages[i] = stage
            del stored
        for i, path in enumerate(paths):
            if not ok[i] and path not in errors:
                errors[path] = f"{path}: no feature could be computed"
        return FeatureSet(list(paths), features, ok, stages, errors, computed)


class _DetectionTasks:
    """Chunks of image paths; each item detects (and caches) the faces of one chunk, in a worker."""

    def __init__(self, chunks: list[list[str]], options: dict):
        self.chunks = chunks
        self.options = options
        self._embedder: Optional[Embedder] = None

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> int:
        if self._embedder is None:  # one per worker process, each with its own cache connection
            self._embedder = Embedder(**self.options)
        self._embedder.faces(self.chunks[index], on_error="skip")
        return len(self.chunks[index])


def _quiet_worker(_worker_id: int) -> None:
    # The main process repeats the same notes when it reads the faces back; say them once.
    logging.getLogger("kface").setLevel(logging.WARNING)


def _hash_files(paths: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """sha256 of each readable file, and the error of each unreadable one."""
    hashes: dict[str, str] = {}
    errors: dict[str, str] = {}
    for path in dict.fromkeys(paths):
        try:
            hashes[path] = content_hash(read_bytes(path))
        except InputError as exc:
            errors[path] = str(exc)
    return hashes, errors


