"""The caches of face chips and embeddings: on disk (keyed by image content and settings), none, or one request's.

One SQLite file (``<cache dir>/cache-v1.sqlite``) with two tables: ``faces`` (aligned chip, box,
landmarks, stage) keyed by the image's sha256 + face settings, and ``embeddings`` keyed by the face key +
backbone + test-time augmentation. Every command (embed, verify, train, overlap-report,
train-attributes) shares it without knowing about the others; renaming or moving an image keeps its
entries, editing it does not. The folder is ``$KFACE_CACHE_DIR``, else ``$XDG_CACHE_HOME/kface``, else
``~/.cache/kface``, or the folder of a command's ``--cache-dir``; ``--no-cache`` bypasses it (both reach
the code as one :class:`CacheSetting`).
"""
from __future__ import annotations

import io
import logging
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Protocol, Union

import numpy as np

log = logging.getLogger("kface")

SCHEMA_VERSION = 1
#: Seconds a write waits for another process's lock before the cache is left alone for this command.
LOCK_TIMEOUT_S = 10.0


def cache_dir() -> Path:
    """The user cache folder (created on first use)."""
    root = os.environ.get("KFACE_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kface"
    return Path(root)


@dataclass(frozen=True)
class CacheSetting:
    """Whether a command uses the disk caches and where they live (``--no-cache``, ``--cache-dir``): one value,
    passed down as ``cache=`` to everything that opens a cache (faces and embeddings, training's feature
    store, exported checkpoints)."""

    enabled: bool = True
    folder: Optional[Path] = None  # None: the user cache folder, cache_dir()

    @property
    def root(self) -> Path:
        return Path(self.folder) if self.folder is not None else cache_dir()


def cache_setting(cache: Union[bool, CacheSetting, "CacheStore"]) -> CacheSetting:
    """``cache`` as a :class:`CacheSetting`: True (the disk cache), False (none), a setting, or a cache object
    (whose own storage serves faces and embeddings; the other caches stay in the user cache folder)."""
    if isinstance(cache, CacheSetting):
        return cache
    return CacheSetting(enabled=cache) if isinstance(cache, bool) else CacheSetting()


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


class CacheUnavailable(Exception):
    """The cache file or folder cannot be used (read-only, locked, not a database)."""


class Cache:
    """A key → arrays store per table. Writes are batched in transactions; reads are by key lists.

    A cache is never the reason a command fails: a row that does not unpack is a miss (and is deleted),
    and when the file stops working (read-only, locked past :data:`LOCK_TIMEOUT_S`, damaged) a note
    says so once and the command carries on without it.
    """

    TABLES = ("faces", "embeddings")

    def __init__(self, folder: Optional[os.PathLike] = None):
        folder = Path(folder) if folder is not None else cache_dir()
        self.path = folder / f"cache-v{SCHEMA_VERSION}.sqlite"
        self._db: Optional[sqlite3.Connection] = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # Several processes (DDP ranks, loader workers) may share the file: wait for locks, a while.
            self._db = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_S)
            self._db.execute("PRAGMA journal_mode=WAL")
            # No fsync per transaction: WAL keeps the file whole through a crash at this level, and a
            # power cut can cost only the last entries, which a cache recomputes.
            self._db.execute("PRAGMA synchronous=NORMAL")
            for table in self.TABLES:
                self._db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, value BLOB)")
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise CacheUnavailable(f"{folder}: {_reason(exc)}") from None
        self._writable = True

    def get_many(self, table: str, keys: Iterable[str]) -> dict[str, dict[str, np.ndarray]]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, dict[str, np.ndarray]] = {}
        if self._db is None:
            return found
        bad: list[str] = []
        try:
            for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for key, blob in self._db.execute(f"SELECT key, value FROM {table} WHERE key IN ({marks})", chunk):
                    try:
                        found[key] = unpack(blob)
                    except Exception:  # noqa: BLE001 - np.load raises many types for a damaged blob
                        bad.append(key)
        except sqlite3.Error as exc:
            self._give_up(f"cannot read it ({_reason(exc)})")
            return {}
        if bad:
            log.info("cache: %d damaged entr%s in %s, recomputed", len(bad), "y" if len(bad) == 1 else "ies",
                     self.path)
            self._delete(table, bad)
        return found

    def put_many(self, table: str, items: dict[str, dict[str, np.ndarray]]) -> None:
        if not items or self._db is None or not self._writable:
            return
        try:
            with self._db:
                self._db.executemany(f"INSERT OR REPLACE INTO {table} (key, value) VALUES (?, ?)",
                                     [(key, pack(arrays)) for key, arrays in items.items()])
        except sqlite3.Error as exc:
            # Reads may still work (a read-only file): keep them, stop writing.
            self._writable = False
            log.warning("cache: cannot write %s (%s); carrying on without storing new entries",
                        self.path, _reason(exc))

    def _delete(self, table: str, keys: list[str]) -> None:
        if not self._writable:
            return
        try:
            with self._db:
                self._db.executemany(f"DELETE FROM {table} WHERE key = ?", [(key,) for key in keys])
        except sqlite3.Error:
            self._writable = False  # the put that follows would fail the same way; the note comes from it

    def _give_up(self, why: str) -> None:
        log.warning("cache: %s: %s; carrying on without the cache", self.path, why)
        self.close()

    def close(self) -> None:
        # Closing never raises: a cache error must not hide the error that ended the command.
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class NullCache:
    """The cache's interface with nothing stored (``--no-cache``)."""

    path = None

    def get_many(self, table: str, keys: Iterable[str]) -> dict:
        return {}

    def put_many(self, table: str, items: dict) -> None:
        pass

    def close(self) -> None:
        pass


class RequestMemory:
    """The cache's interface in memory, one request at a time (``kface serve``): nothing reaches the disk.

    Outside :meth:`request` nothing is stored; what a request stored is dropped when it ends, so uploads
    never outlive it. Within a request it lets the chips shown on the page and the verdict come from one
    detection.
    """

    path = None

    def __init__(self):
        self._tables: Optional[dict[str, dict]] = None

    @contextmanager
    def request(self) -> Iterator[None]:
        self._tables = {}
        try:
            yield
        finally:
            self._tables = None

    def get_many(self, table: str, keys: Iterable[str]) -> dict:
        stored = (self._tables or {}).get(table, {})
        return {key: stored[key] for key in keys if key in stored}

    def put_many(self, table: str, items: dict) -> None:
        if self._tables is not None:
            self._tables.setdefault(table, {}).update(items)

    def close(self) -> None:
        pass


class CacheStore(Protocol):
    """What :class:`~kface.embeddings.embedder.Embedder` needs of a cache: :class:`Cache`, :class:`NullCache` or
    :class:`RequestMemory`."""

    path: Optional[Path]

    def get_many(self, table: str, keys: Iterable[str]) -> dict: ...

    def put_many(self, table: str, items: dict) -> None: ...

    def close(self) -> None: ...


def open_cache(cache: Union[bool, CacheSetting, CacheStore] = True) -> CacheStore:
    """The face and embedding cache that ``cache`` names (see :func:`cache_setting`): a :class:`Cache`, or a
    :class:`NullCache` when caching is off or the cache cannot be used (a note on stderr says why); a cache
    object is used as it is."""
    if not isinstance(cache, (bool, CacheSetting)):
        return cache
    setting = cache_setting(cache)
    if not setting.enabled:
        return NullCache()
    try:
        return Cache(setting.root)
    except CacheUnavailable as exc:
        log.warning("cache: cannot use %s; carrying on without the cache (set KFACE_CACHE_DIR or --cache-dir "
                    "to use another folder)", exc)
        return NullCache()
