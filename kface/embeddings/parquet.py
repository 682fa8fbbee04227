"""Embeddings of a whole dataset as a Parquet dataset: a folder of shards, one row per input image.

Every input has exactly one row, whether it gave a vector or not: its path, the dataset's labels
(identity, family, age, gender where the layout has them), the sha256 of its bytes, what the face stage
found (``found``, ``stage``, ``box``), its error (message and kind) where it has one, its embedding (a
fixed-size list of float32, null without a face), and the model key and precision that made it.

Shards are written whole (temp file, fsync, rename; :func:`kface.util.outputs.atomic_path`), so a killed
writer leaves complete shards and nothing half-written; the rows already written are found again by
(path, sha256, model key) and skipped by the next run (:meth:`DatasetWriter.done`), so a rerun finishes
the job with every image exactly once. One writer at a time: a writer holds the folder's lock
(:func:`kface.util.locks.file_lock`) while it lives, and a second driver pointed at the same folder is
refused with one line instead of writing the same rows again (or deleting the first one's temp shards).
Readers (:func:`read_vectors`) return the vectors of one model key.
pyarrow is imported inside the functions: ``kface --help`` and ``verify`` never load it.
"""
from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from ..util.hashing import file_sha256
from ..util.locks import file_lock
from ..util.outputs import atomic_path

#: Columns of every row, in the order they are written.
COLUMNS = ("path", "identity", "family", "age", "gender", "sha256", "found", "stage", "box", "error",
           "error_kind", "embedding", "model", "precision", "faces")
#: Shard file names: ``part-<time ns>-<random>.parquet`` (time first: newer shards sort last).
SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".parquet"
#: The lock file a writer holds in the folder while it writes (kface.util.locks).
WRITER_LOCK = ".lock"
#: Error kinds, from an error's message (the first phrase that matches names it).
ERROR_KINDS = (
    ("no face found", "no-face"), ("corrupt or truncated", "truncated"), ("not an image file", "not-an-image"),
    ("empty file", "empty"), ("no such file", "missing"), ("decompression-bomb", "too-large"),
    ("pixels", "too-large"), ("cannot read", "unreadable"), ("is a directory", "unreadable"),
)


def error_kind(message: str) -> str:
    """The kind of an image's error (``no-face``, ``truncated``, ``not-an-image``...; ``other``)."""
    lowered = message.lower()
    for phrase, kind in ERROR_KINDS:
        if phrase in lowered:
            return kind
    return "other"


def verifier_model_key(verifier) -> str:
    """What makes a verifier's vectors (a :class:`kface.api.Verifier`): the network's identity (backbone,
    weights, the shipped file's precision and sha256, flip averaging; ``Embedder.vector_tag``) and, for a
    trained checkpoint, the file's sha256. Rows of one key are vectors of one embedding space, whichever
    name loaded the model (``korean`` and the backbone ``kface-korean-v4`` are one key)."""
    key = verifier.embedder.vector_tag
    if verifier.model_path:
        key += f";checkpoint@{file_sha256(verifier.model_path)[:16]}"
    return key


def schema(dim: int):
    """The Arrow schema of a dataset whose embeddings have ``dim`` values."""
    import pyarrow as pa

    return pa.schema([
        ("path", pa.string()), ("identity", pa.string()), ("family", pa.string()), ("age", pa.int32()),
        ("gender", pa.string()), ("sha256", pa.string()), ("found", pa.bool_()), ("stage", pa.string()),
        ("box", pa.list_(pa.int32(), 4)), ("error", pa.string()), ("error_kind", pa.string()),
        ("embedding", pa.list_(pa.float32(), dim)), ("model", pa.string()), ("precision", pa.string()),
        ("faces", pa.string()),
    ])


def rows_table(rows: list[dict], dim: int):
    """An Arrow table of ``rows`` (dicts with the :data:`COLUMNS`; embedding a (dim,) array or None)."""
    import pyarrow as pa

    columns = {name: [row.get(name) for row in rows] for name in COLUMNS}
    flat = np.zeros((len(rows), dim), dtype=np.float32)
    present = np.zeros(len(rows), dtype=bool)
    for i, vector in enumerate(columns["embedding"]):
        if vector is not None:
            flat[i] = vector
            present[i] = True
    values = pa.array(flat.reshape(-1), type=pa.float32())
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(~present))
    return pa.table({name: columns[name] for name in COLUMNS}, schema=schema(dim))


def shard_files(folder: os.PathLike) -> list[Path]:
    """The finished shards of a dataset folder, oldest first (temp files of a killed writer excluded)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir()
                  if path.name.startswith(SHARD_PREFIX) and path.name.endswith(SHARD_SUFFIX))


def _read_columns(folder: os.PathLike, columns: list[str]):
    """The given columns of every shard as one Arrow table (None when there is no shard)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = shard_files(folder)
    if not shards:
        return None
    try:
        return pa.concat_tables([pq.read_table(shard, columns=columns) for shard in shards])
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{folder}: not a readable kface Parquet dataset ({exc})") from None


class DatasetWriter:
    """Writes rows of one model key into the Parquet dataset folder ``folder``, one whole shard per call.

    ``done()`` gives the (path, sha256) pairs already written for that key; a folder holding another
    model's rows is refused (one folder, one embedding space). The writer holds the folder's lock until
    :meth:`close`: another writer of the folder meanwhile raises :class:`~kface.util.locks.LockHeld`.
    """

    def __init__(self, folder: os.PathLike, model_key: str, dim: int):
        self.folder = Path(folder)
        self.model_key = model_key
        self.dim = dim
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder}: exists and is not a folder; a .parquet output is a folder of shards")
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(file_lock(self.folder / WRITER_LOCK, wait=False, what=str(self.folder),
                                           holder="kface embed"))
        for stale in self.folder.glob(f".{SHARD_PREFIX}*"):  # temp shards of a killed run: never finished
            stale.unlink(missing_ok=True)

    def done(self) -> set[tuple[str, str]]:
        """(path, sha256) of every row already written ("" for a file that could not be read)."""
        table = _read_columns(self.folder, ["path", "sha256", "model"])
        if table is None:
            return set()
        keys = set(table.column("model").unique().to_pylist())
        if keys - {self.model_key}:
            other = min(keys - {self.model_key})
            raise InputError(f"{self.folder} holds embeddings of model key {other!r}, not {self.model_key!r}: "
                             f"write to another --out")
        return set(zip(table.column("path").to_pylist(), (sha or "" for sha in table.column("sha256").to_pylist())))

    def forget_if_empty(self) -> None:
        """Remove the folder this writer created where no shard was written (a run that failed at once)."""
        if self.created and not any(path.name != WRITER_LOCK for path in self.folder.iterdir()):
            (self.folder / WRITER_LOCK).unlink(missing_ok=True)
            self.folder.rmdir()
        self.close()

    def close(self) -> None:
        """Let another writer have the folder."""
        self._lock.close()

    def write(self, table) -> Optional[Path]:
        """Write ``table`` (rows of :func:`schema`) as one new shard, atomically and durably."""
        import pyarrow.parquet as pq

        if table.num_rows == 0:
            return None
        target = self.folder / f"{SHARD_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{SHARD_SUFFIX}"
        with atomic_path(target, durable=True) as temp:
            pq.write_table(table, temp)
        return target


@dataclass
class StoredVectors:
    """The rows of one model key that have a vector: paths, labels and the (N, D) float32 vectors."""

    paths: list[str]
    identities: list[Optional[str]]
    families: list[Optional[str]]
    stages: list[str]
    sha256: list[str]
    vectors: np.ndarray
    model_key: str


def read_vectors(folder: os.PathLike, model_key: Optional[str] = None) -> StoredVectors:
    """The vectors stored in the dataset ``folder`` for ``model_key`` (None: the one key it holds).

    Rows without a vector (errors, no face) are left out; where a path has several rows (a file that
    changed between runs), the newest shard's counts. Raises :class:`InputError` for a folder that is no
    such dataset, or holds no vectors of that key.
    """
    if not Path(folder).is_dir():
        raise InputError(f"{folder}: no such Parquet dataset folder (made by kface embed --out NAME.parquet)")
    table = _read_columns(folder, ["path", "identity", "family", "stage", "sha256", "embedding", "model"])
    if table is None:
        raise InputError(f"{folder}: holds no shards (part-*.parquet)")
    keys = sorted(set(table.column("model").unique().to_pylist()))
    if model_key is None:
        if len(keys) != 1:
            raise InputError(f"{folder} holds several model keys ({', '.join(keys)}); name one")
        model_key = keys[0]
    elif model_key not in keys:
        raise InputError(f"{folder} holds embeddings of model key {keys[0]!r}; this model's is {model_key!r}: "
                         f"embed with that model, or use its own model here")
    columns = {name: table.column(name).to_pylist() for name in ("path", "identity", "family", "stage", "sha256",
                                                                 "model")}
    newest = {path: i for i, path in enumerate(columns["path"])}  # later rows (newer shards) win
    embedding = table.column("embedding").combine_chunks()
    rows = [i for i in sorted(newest.values()) if columns["model"][i] == model_key and embedding[i].is_valid]
    if not rows:
        raise InputError(f"{folder}: no row of model key {model_key!r} has a vector")
    dim = embedding.type.list_size
    flat = embedding.take(rows).flatten().to_numpy(zero_copy_only=False)
    return StoredVectors(paths=[columns["path"][i] for i in rows], identities=[columns["identity"][i] for i in rows],
                         families=[columns["family"][i] for i in rows], stages=[columns["stage"][i] for i in rows],
                         sha256=[columns["sha256"][i] for i in rows],
                         vectors=np.asarray(flat, dtype=np.float32).reshape(len(rows), dim), model_key=model_key)


def summarize(folder: os.PathLike) -> dict:
    """Counts over a dataset folder: rows, faces found, vectors, errors by kind, distinct paths."""
    table = _read_columns(folder, ["path", "found", "error_kind", "embedding"])
    if table is None:
        return {"rows": 0, "paths": 0, "found": 0, "vectors": 0, "errors": {}}
    kinds: dict[str, int] = {}
    for kind in table.column("error_kind").to_pylist():
        if kind is not None:
            kinds[kind] = kinds.get(kind, 0) + 1
    return {"rows": table.num_rows, "paths": len(set(table.column("path").to_pylist())),
            "found": int(sum(bool(value) for value in table.column("found").to_pylist())),
            "vectors": table.num_rows - table.column("embedding").null_count, "errors": dict(sorted(kinds.items()))}
