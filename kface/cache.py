"""The on-disk cache of face chips and embeddings, keyed by image content and pipeline settings.

One SQLite file (``<cache dir>/cache-v1.sqlite``) with two tables: ``faces`` (aligned chip, box,
landmarks, stage) keyed by the image's sha256 + face settings, and ``embeddings`` keyed by the face key +
backbone + test-time augmentation. Every command (embed, verify, train, overlap-report,
train-attributes) shares it without knowing about the others; renaming or moving an image keeps its
entries, editing it does not. The folder is ``$KFACE_CACHE_DIR``, else ``$XDG_CACHE_HOME/kface``, else
``~/.cache/kface``; ``--no-cache`` bypasses it.
"""
from __future__ import annotations

import io
import os
import sqlite3
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from .errors import KfaceError

SCHEMA_VERSION = 1


def cache_dir() -> Path:
    """The user cache folder (created on first use)."""
    root = os.environ.get("KFACE_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kface"
    return Path(root)


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


class Cache:
    """A key → arrays store per table. Writes are batched in transactions; reads are by key lists."""

    TABLES = ("faces", "embeddings")

    def __init__(self, folder: Optional[os.PathLike] = None):
        folder = Path(folder) if folder is not None else cache_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.path = folder / f"cache-v{SCHEMA_VERSION}.sqlite"
            # Several processes (DDP ranks, loader workers) may share the file: wait for locks.
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            for table in self.TABLES:
                self._db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, value BLOB)")
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise KfaceError(f"cannot open the cache in {folder} ({exc}); set KFACE_CACHE_DIR or use --no-cache")

    def get_many(self, table: str, keys: Iterable[str]) -> dict[str, dict[str, np.ndarray]]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, dict[str, np.ndarray]] = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(f"SELECT key, value FROM {table} WHERE key IN ({marks})", chunk):
                found[key] = unpack(blob)
        return found

    def put_many(self, table: str, items: dict[str, dict[str, np.ndarray]]) -> None:
        if not items:
            return
        with self._db:
            self._db.executemany(f"INSERT OR REPLACE INTO {table} (key, value) VALUES (?, ?)",
                                 [(key, pack(arrays)) for key, arrays in items.items()])

    def close(self) -> None:
        self._db.close()


class NullCache:
    """The cache's interface with nothing stored (``--no-cache``)."""

    path = None

    def get_many(self, table: str, keys: Iterable[str]) -> dict:
        return {}

    def put_many(self, table: str, items: dict) -> None:
        pass

    def close(self) -> None:
        pass


def open_cache(enabled: bool = True, folder: Optional[os.PathLike] = None):
    """A :class:`Cache`, or a :class:`NullCache` when caching is off."""
    return Cache(folder) if enabled else NullCache()
