"""A whole dataset into a Parquet dataset of embeddings, batch by batch, resumably (one machine).

:func:`embed_items` is the per-batch work: each image is read and hashed, skipped where its row is
already written, and the rest go through the verifier's Embedder (face stage and network) with bad
files and faceless photos kept as rows with their error. The single-process path
(:func:`embed_dataset`) runs it here on batches of :data:`SHARD_ROWS` and writes one shard per batch;
the Ray pipeline (:mod:`kface.scale`) runs the very same function in its actors.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Collection, Optional, Sequence, Union

import numpy as np

from ..api import FaceOptions, Verifier, load_verifier
from ..backbones import DEFAULT_BACKBONE, backbone_for_engine
from ..datasets import load_dataset
from ..embeddings.embedder import Embedder
from ..embeddings.parquet import DatasetWriter, error_kind, rows_table, summarize, verifier_model_key
from ..errors import InputError
from ..faces.images import content_hash, read_bytes
from ..models import STOCK_MODEL, default_model
from ..util.cache import CacheSetting
from ..util.progress import progress_bar

#: Images per shard on the single-process path (a killed run loses at most one batch's work).
SHARD_ROWS = 512


@dataclass(frozen=True)
class DatasetItem:
    """One input image: ``path`` as its row names it, ``file`` where it is read, and its labels."""

    path: str
    file: str
    identity: Optional[str] = None
    family: Optional[str] = None
    age: Optional[int] = None
    gender: Optional[str] = None


@dataclass(frozen=True)
class EmbedSettings:
    """What makes the vectors: the model and the face stage (the same on every path and worker)."""

    model: Optional[str] = None
    backbone: str = DEFAULT_BACKBONE
    detector: str = "auto"
    fallback: str = "none"
    tta: str = "none"
    weights: Optional[str] = None
    device: str = "auto"
    max_pixels: Optional[int] = None
    engine: str = "onnx"

    def verifier(self, cache: Union[bool, CacheSetting] = True, workers: Optional[int] = None):
        """A :class:`kface.api.Verifier` that embeds with these settings (``workers``: face-finding processes)."""
        model = self.model or (default_model() if self.backbone == DEFAULT_BACKBONE else STOCK_MODEL)
        if model != STOCK_MODEL:
            options = FaceOptions(detector=self.detector, fallback=self.fallback, device=self.device, cache=cache,
                                  max_pixels=self.max_pixels)
            verifier = load_verifier(model, engine=self.engine, options=options)
        else:  # a backbone as it is: no threshold is needed to embed
            embedder = Embedder(backbone_for_engine(self.backbone, self.engine), detector=self.detector,
                                fallback=self.fallback, tta=self.tta, device=self.device, weights=self.weights,
                                cache=cache, max_pixels=self.max_pixels)
            verifier = Verifier(embedder, threshold=0.0, threshold_source="not used to embed",
                                model_name=self.backbone if self.backbone != DEFAULT_BACKBONE else STOCK_MODEL)
        if workers is not None:  # the Embedder that finds the faces (a trained model's wraps one)
            getattr(verifier.embedder, "embedder", verifier.embedder).workers = workers
        return verifier


def dataset_items(kind: str, root: os.PathLike, layout_options: Optional[dict] = None,
                  progress: bool = False) -> list[DatasetItem]:
    """The images of a dataset (:func:`kface.datasets.load_dataset`) with their labels, in path order."""
    index = load_dataset(kind, root, progress=progress, **(layout_options or {}))
    items = []
    for row, record in enumerate(index):
        age = record.attributes.get("age")
        items.append(DatasetItem(record.path, str(index.absolute_path(row)), record.identity or None,
                                 record.attributes.get("family"), int(age) if age is not None else None,
                                 record.gender))
    return items


def image_items(images: Sequence[str]) -> list[DatasetItem]:
    """Image arguments as items (no labels), each named as given."""
    return [DatasetItem(str(image), str(image)) for image in images]


def vector_size(verifier) -> int:
    """The length of ``verifier``'s vectors (after its head, where it has one)."""
    embedder = verifier.embedder
    size = getattr(embedder, "empty_size", None) or embedder.spec.embedding_size
    if verifier.head is None:
        return int(size)
    return int(verifier.head(np.zeros((1, size), np.float32)).shape[1])


def embed_items(verifier, items: Sequence[DatasetItem], done: Collection[tuple[str, str]],
                model_key: str) -> list[dict]:
    """The rows of ``items`` not yet written (``done``: their (path, sha256)), one per image, in order.

    An unreadable, truncated or non-image file and a photo with no face are rows with their error.
    """
    faces = _faces_key(verifier)
    precision = verifier.embedder.precision
    rows, todo = [], []
    for item in items:
        try:
            sha = content_hash(read_bytes(item.file))
        except InputError as exc:
            if (item.path, "") not in done:
                rows.append(_row(item, None, model_key, precision, faces, error=str(exc)))
            continue
        if (item.path, sha) not in done:
            todo.append((item, sha))
    if not todo:
        return rows
    vectors, result = verifier.embed([item.file for item, _ in todo], on_error="skip")
    for i, (item, sha) in enumerate(todo):
        message = result.errors.get(result.paths[i])
        if message is not None:
            rows.append(_row(item, sha, model_key, precision, faces, error=message))
            continue
        rows.append(_row(item, sha, model_key, precision, faces, found=bool(result.found[i]), stage=result.stages[i],
                         box=list(result.boxes[i]) if result.boxes[i] else None, embedding=vectors[i]))
    return rows


def _faces_key(verifier) -> str:
    embedder = verifier.embedder
    return f"{embedder.settings.key()};fb={embedder.settings.fallback}"


def _row(item: DatasetItem, sha: Optional[str], model_key: str, precision: str, faces: str, *, found: bool = False,
         stage: str = "error", box=None, embedding=None, error: Optional[str] = None) -> dict:
    kind = error_kind(error) if error else None
    return {"path": item.path, "identity": item.identity, "family": item.family, "age": item.age,
            "gender": item.gender, "sha256": sha, "found": found, "stage": "none" if kind == "no-face" else stage,
            "box": box, "error": error, "error_kind": kind,
            "embedding": None if embedding is None else np.asarray(embedding, dtype=np.float32),
            "model": model_key, "precision": precision, "faces": faces}


def check_strict(rows: Sequence[dict]) -> None:
    """``--strict``: the first row with an error ends the run as that error."""
    for row in rows:
        if row["error"]:
            raise InputError(row["error"])


def embed_dataset(items: Sequence[DatasetItem], out: os.PathLike, settings: EmbedSettings, *, strict: bool = False,
                  cache: Union[bool, CacheSetting] = True, workers: Optional[int] = None, progress: bool = False,
                  shard_rows: int = SHARD_ROWS, on_shard: Optional[Callable[[int], None]] = None) -> dict:
    """Embed ``items`` into the Parquet dataset ``out`` in this process (faces found in ``workers``
    processes), one shard per ``shard_rows`` images; rows already there are skipped.

    Returns the dataset's summary (rows, paths, found, vectors, errors by kind) with ``computed`` (rows
    written by this call) and ``model`` (the model key). ``strict``: the first error aborts the run.
    """
    verifier = settings.verifier(cache=cache, workers=workers)
    key = verifier_model_key(verifier)
    dim = vector_size(verifier)
    writer = DatasetWriter(out, key, dim)
    done = writer.done()
    computed = 0
    bar = progress_bar(len(items), f"embedding ({verifier.model_name})", enabled=progress)
    try:
        for start in range(0, len(items), shard_rows):
            batch = items[start:start + shard_rows]
            rows = embed_items(verifier, batch, done, key)
            if strict:
                check_strict(rows)
            writer.write(rows_table(rows, dim))
            computed += len(rows)
            bar.update(len(batch))
            if on_shard is not None:
                on_shard(computed)
    except BaseException:
        writer.forget_if_empty()
        raise
    finally:
        bar.close()
        writer.close()
        verifier.embedder.close()
    return {**summarize(out), "computed": computed, "model": key}
