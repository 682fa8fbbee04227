"""The gallery's vector index (faiss), a cache of the SQLite store that is rebuilt whenever in doubt.

Small galleries are searched exactly (``IndexFlat``); from :data:`APPROXIMATE_FROM` embeddings on, an
inverted-file index (``IndexIVFFlat``, about sqrt(N) lists, :data:`NPROBE` of them searched), which
``bench/gallery_search.py`` measured against exact search and against HNSW (see docs/galleries.md). The index
file (``<gallery>.index``) starts with a JSON header line naming the store state it covers (the gallery's
creation time, generation, epoch, the last image id) and the sha256 of the faiss bytes after it; a missing, damaged or
stale file is
rebuilt from the store, and one that covers an older state of the same epoch is brought up to date by
adding the newer rows.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..util.outputs import atomic_path

log = logging.getLogger("kface")

MAGIC = "kface-gallery-index"
#: Embeddings from which the approximate index is used: exact search of 128-d vectors took p50 0.09 ms
#: at 10k but 24.5 ms at 100k on this (shared) CPU, IVF 0.37 ms at 100k (bench/gallery_search.py).
APPROXIMATE_FROM = 20_000
#: Inverted lists searched per query: recall@1 99.5% of exact at 10k and 100k, 100% at 1M, p50 0.79 ms
#: at 1M (bench/gallery_search.py; HNSW, M=32 efSearch=64, reached 81.5% at 100k after an 88 s build).
NPROBE = 24
#: An approximate index is retrained when the gallery has grown this many times past its training set.
RETRAIN_GROWTH = 4.0
KINDS = ("exact", "ivf", "hnsw")
#: Searches of fewer queries than this run on one thread.
SERIAL_QUERIES = 32


@contextlib.contextmanager
def faiss_threads(count: Optional[int] = None) -> Iterator[None]:
    """Run faiss on ``count`` OpenMP threads (None: the cores the load average leaves idle, at least 1).

    OpenMP's workers spin while they wait, which on a busy CPU costs far more than it gains: one query at
    10k took 84 ms on 2 threads against 0.11 ms on 1 here, and an IVF build 3.1 s against 0.37 s, with
    the machine shared with a training run (bench/gallery_search.py).
    """
    import faiss

    if count is None:
        cores = os.cpu_count() or 1
        count = max(1, min(cores, cores - int(round(os.getloadavg()[0]))))
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def index_path(gallery: os.PathLike) -> Path:
    return Path(f"{os.fspath(gallery)}.index")


def choose_kind(count: int) -> str:
    return "exact" if count < APPROXIMATE_FROM else "ivf"


def ivf_lists(count: int) -> int:
    """Inverted lists for ``count`` vectors: about sqrt(N), at least 16 (faiss wants ~39 points per list)."""
    return int(max(16, min(65536, round(np.sqrt(count)), count // 39)))


@dataclass
class VectorIndex:
    """A faiss index over a gallery's vectors (ids = image ids) and the store state it covers."""

    kind: str
    distance: str  # "euclidean" or "cosine"
    dim: int
    faiss_index: object
    generation: int
    epoch: int
    max_id: int
    trained_on: int  # vectors the approximate index was trained on (0 for exact)
    gallery: str = ""  # the store's "created" stamp: an index left from a deleted gallery of that name is stale

    @property
    def count(self) -> int:
        return int(self.faiss_index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            with faiss_threads():
                self.faiss_index.add_with_ids(_prepare(vectors, self.distance), ids.astype(np.int64))
            self.max_id = max(self.max_id, int(ids.max()))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, ids)``, each (Q, k), nearest first, in the gallery's distance; id -1 where fewer."""
        k = max(1, min(k, self.count))
        with faiss_threads(1 if len(queries) < SERIAL_QUERIES else None):
            raw, ids = self.faiss_index.search(_prepare(queries, self.distance), k)
        if self.distance == "cosine":
            distances = 1.0 - raw
        else:
            distances = np.sqrt(np.maximum(raw, 0.0))  # faiss's L2 is squared
        return distances.astype(np.float32), ids

    def needs_rebuild(self, count: int) -> bool:
        """Whether an index of this kind and training no longer suits ``count`` vectors."""
        if choose_kind(count) != self.kind and self.kind != "hnsw":
            return True
        return self.kind == "ivf" and count > RETRAIN_GROWTH * max(self.trained_on, 1)

    # -- the file ------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        import faiss

        body = faiss.serialize_index(self.faiss_index).tobytes()
        header = {"magic": MAGIC, "kind": self.kind, "distance": self.distance, "dim": self.dim,
                  "generation": self.generation, "epoch": self.epoch, "max_id": self.max_id,
                  "count": self.count, "trained_on": self.trained_on, "gallery": self.gallery,
                  "sha256": hashlib.sha256(body).hexdigest()}
        with atomic_path(path, suffix=".index") as temp:
            with open(temp, "wb") as handle:
                handle.write(json.dumps(header).encode("utf-8") + b"\n")
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())

    @classmethod
    def load(cls, path: Path) -> Optional["VectorIndex"]:
        """The index in ``path``, or None (with a note) when it is missing or damaged."""
        import faiss

        if not path.is_file():
            return None
        try:
            with open(path, "rb") as handle:
                header = json.loads(handle.readline().decode("utf-8"))
                body = handle.read()
            if header.get("magic") != MAGIC or hashlib.sha256(body).hexdigest() != header["sha256"]:
                raise ValueError("checksum or header mismatch")
            faiss_index = faiss.deserialize_index(np.frombuffer(body, dtype=np.uint8))
            if faiss_index.ntotal != header["count"] or header["kind"] not in KINDS:
                raise ValueError("size mismatch")
        except (OSError, ValueError, KeyError, RuntimeError, UnicodeDecodeError) as exc:
            log.info("%s: damaged index file (%s); rebuilding it from the gallery", path, exc)
            return None
        if header["kind"] == "ivf":
            faiss_index.nprobe = NPROBE
        return cls(header["kind"], header["distance"], int(header["dim"]), faiss_index, int(header["generation"]),
                   int(header["epoch"]), int(header["max_id"]), int(header["trained_on"]),
                   str(header.get("gallery", "")))


def read_header(path: Path) -> Optional[dict]:
    """The header line of the index file at ``path`` (None when it is missing or unreadable)."""
    try:
        with open(path, "rb") as handle:
            header = json.loads(handle.readline().decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return header if isinstance(header, dict) and header.get("magic") == MAGIC else None


def build_index(ids: np.ndarray, vectors: np.ndarray, distance: str, dim: int, generation: int, epoch: int,
                kind: Optional[str] = None, seed: int = 0, gallery: str = "") -> VectorIndex:
    """A fresh index of ``kind`` (default: by size, :func:`choose_kind`) over ``vectors`` of the store
    state ``gallery`` (its creation stamp), ``generation``, ``epoch``.

    The IVF's k-means is trained on a seeded sample of at most 64 vectors per list.
    """
    with faiss_threads():
        return _build(ids, vectors, distance, dim, generation, epoch, kind or choose_kind(len(ids)), seed, gallery)


def _build(ids, vectors, distance, dim, generation, epoch, kind, seed, gallery) -> VectorIndex:
    import faiss

    metric = faiss.METRIC_INNER_PRODUCT if distance == "cosine" else faiss.METRIC_L2
    prepared = _prepare(vectors, distance)
    trained_on = 0
    if kind == "exact":
        flat = faiss.IndexFlatIP(dim) if distance == "cosine" else faiss.IndexFlatL2(dim)
        faiss_index = faiss.IndexIDMap2(flat)
    elif kind == "ivf":
        lists = ivf_lists(len(ids))
        quantizer = faiss.IndexFlatIP(dim) if distance == "cosine" else faiss.IndexFlatL2(dim)
        faiss_index = faiss.IndexIVFFlat(quantizer, dim, lists, metric)
        sample_size = min(len(ids), 64 * lists)
        rng = np.random.default_rng(seed)
        sample = prepared[np.sort(rng.choice(len(ids), size=sample_size, replace=False))]
        faiss_index.cp.seed = seed
        faiss_index.train(sample)
        faiss_index.nprobe = NPROBE
        trained_on = len(ids)
    elif kind == "hnsw":
        graph = faiss.IndexHNSWFlat(dim, 32, metric)
        graph.hnsw.efSearch = 64
        faiss_index = faiss.IndexIDMap2(graph)
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    index = VectorIndex(kind, distance, dim, faiss_index, generation, epoch, 0, trained_on, gallery)
    index.add(ids, vectors)
    return index


def _prepare(vectors: np.ndarray, distance: str) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if distance == "cosine":
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = np.ascontiguousarray(vectors / np.maximum(norms, 1e-8))
    return vectors
