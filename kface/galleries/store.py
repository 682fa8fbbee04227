"""The gallery's source of truth: one SQLite file of identities, images (by sha256) and their embeddings.

Everything else about a gallery (the vector index beside it) is rebuilt from this file. The file runs in
WAL mode, so searching processes read a consistent snapshot while another process enrolls, and with
``secure_delete`` on, so that a removed person's embeddings are overwritten, not merely unlinked.
``generation`` counts committed changes; ``epoch`` counts changes that are not appends (removals), so an
index that covers a prefix of the rows of the same epoch can be brought up to date by adding the rest.

Many processes may write one gallery at once (enrolments, removals, a server): every change is one
``BEGIN IMMEDIATE`` transaction, which SQLite serialises across processes, and checks what it depends on
(who a photo is enrolled as) inside that transaction. Creation is idempotent: the file is made whole under a
temp name and hard-linked into place, so two processes creating one gallery both end up with the one file.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..errors import InputError, KfaceError
from ..util.outputs import atomic_path
from .audit import Actor, append_audit, local_actor

FORMAT = "kface-gallery"
SCHEMA_VERSION = 1
#: Seconds a writer waits for another writer's lock before the command fails.
LOCK_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE identities (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    sha256 TEXT NOT NULL,
    source TEXT NOT NULL,
    stage TEXT NOT NULL,
    model TEXT NOT NULL,
    enrolled REAL NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (identity_id, sha256)
);
CREATE INDEX images_sha256 ON images(sha256);
CREATE INDEX images_identity ON images(identity_id);
"""


@dataclass(frozen=True)
class ModelIdentity:
    """What made a gallery's vectors: a key that must match exactly, and how to judge distances."""

    key: str  # e.g. "dlib@55533b28a958" or "checkpoint@<sha256 prefix>"; compared for equality
    name: str  # what load_verifier(model=...) takes to load it again ("dlib", "korean", a path)
    backbone: str
    distance: str  # "euclidean" or "cosine"
    threshold: float  # the model's 1:1 threshold
    dim: int


@dataclass(frozen=True)
class NewImage:
    """One embedding to store."""

    identity: str
    sha256: str
    source: str  # the file name it came from (for listing only; the content hash is the key)
    stage: str
    vector: np.ndarray


@dataclass
class AddResult:
    """What :meth:`GalleryStore.add` did with each image, decided inside its transaction."""

    added: int = 0
    already: int = 0  # this content was enrolled under the same identity before
    conflicts: dict[str, str] = field(default_factory=dict)  # sha256 -> the other identity it is enrolled as


def _connect(path: Path) -> sqlite3.Connection:
    # check_same_thread off: a server's worker threads share one gallery behind their own lock.
    connection = sqlite3.connect(str(path), timeout=LOCK_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA foreign_keys = ON")
    connection.execute("PRAGMA secure_delete = ON")  # removed embeddings are zeroed on disk
    connection.execute("PRAGMA busy_timeout = %d" % int(LOCK_TIMEOUT_S * 1000))
    return connection


class GalleryStore:
    """The SQLite file of one gallery. Open with :meth:`open` (existing) or :meth:`create`."""

    def __init__(self, path: Path, connection: sqlite3.Connection):
        self.path = path
        self.connection = connection

    # -- opening -----------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: os.PathLike) -> "GalleryStore":
        """Open an existing gallery; an :class:`InputError` when the file is missing or not a gallery."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such gallery (kface enroll --gallery {path} creates one)")
        if path.is_dir():
            raise InputError(f"{path}: is a directory, not a gallery file")
        with open(path, "rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":
                raise InputError(f"{path}: not a kface gallery (not an SQLite file)")
        try:
            connection = _connect(path)
            rows = dict(connection.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError:
            raise InputError(f"{path}: not a kface gallery (no gallery tables)") from None
        if rows.get("format") != FORMAT:
            connection.close()
            raise InputError(f"{path}: not a kface gallery (an SQLite file of something else)")
        if int(rows.get("schema", 0)) > SCHEMA_VERSION:
            connection.close()
            raise InputError(f"{path}: gallery schema {rows['schema']} is newer than this kface reads; upgrade kface")
        connection.execute("PRAGMA journal_mode = WAL")
        return cls(path, connection)

    @classmethod
    def create(cls, path: os.PathLike, model: ModelIdentity, open_set: tuple[float, str]) -> "GalleryStore":
        """The gallery at ``path`` for ``model``: a new, empty one (written whole under a temp name, then
        linked into place), or the one another process made first when it is of the same model."""
        path = Path(path)
        if not path.exists():
            try:
                with atomic_path(path, suffix=".sqlite", durable=True, exclusive=True) as temp:
                    connection = sqlite3.connect(str(temp))
                    with connection:
                        connection.executescript(_SCHEMA)
                        connection.executemany("INSERT INTO meta VALUES (?, ?)", [
                            ("format", FORMAT), ("schema", str(SCHEMA_VERSION)), ("created", repr(time.time())),
                            ("model_key", model.key), ("model_name", model.name), ("backbone", model.backbone),
                            ("distance", model.distance), ("threshold", repr(model.threshold)),
                            ("dim", str(model.dim)), ("open_set_threshold", repr(open_set[0])),
                            ("open_set_source", open_set[1]), ("generation", "0"), ("epoch", "0"),
                        ])
                    connection.close()
            except FileExistsError:
                pass  # another process created it first: use theirs
        store = cls.open(path)
        found = store.model()
        if found.key != model.key:
            store.close()
            raise InputError(f"{path}: exists already, with embeddings of model {found.name!r} ({found.key}), "
                             f"not {model.name!r} ({model.key})")
        return store

    def close(self) -> None:
        self.connection.close()

    # -- what the gallery is -----------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        return dict(self.connection.execute("SELECT key, value FROM meta").fetchall())

    def model(self) -> ModelIdentity:
        meta = self.meta()
        return ModelIdentity(meta["model_key"], meta["model_name"], meta["backbone"], meta["distance"],
                             float(meta["threshold"]), int(meta["dim"]))

    def set_meta(self, values: dict[str, str]) -> None:
        with self._write():
            self.connection.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    def version(self) -> tuple[int, int]:
        """``(generation, epoch)`` of the committed state."""
        meta = dict(self.connection.execute(
            "SELECT key, value FROM meta WHERE key IN ('generation', 'epoch')").fetchall())
        return int(meta["generation"]), int(meta["epoch"])

    # -- reading -----------------------------------------------------------------------------------
    def snapshot(self):
        """A context in which every read sees one committed state (a deferred read transaction)."""
        return _ReadTransaction(self.connection)

    def known_hashes(self, identity: Optional[str] = None) -> dict[str, str]:
        """sha256 → identity name of every enrolled image (of one identity when given)."""
        query = ("SELECT images.sha256, identities.name FROM images "
                 "JOIN identities ON identities.id = images.identity_id")
        if identity is None:
            return dict(self.connection.execute(query).fetchall())
        return dict(self.connection.execute(query + " WHERE identities.name = ?", (identity,)).fetchall())

    def vectors(self, after_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of every image with id > ``after_id``, by id."""
        dim = int(self.meta()["dim"])
        rows = self.connection.execute("SELECT id, vector FROM images WHERE id > ? ORDER BY id", (after_id,)).fetchall()
        ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32).reshape(len(rows), dim)
        return ids, vectors

    def identities_of(self, image_ids: Iterable[int]) -> dict[int, tuple[str, str]]:
        """image id → (identity name, source file) for the given ids that exist."""
        ids = [int(i) for i in image_ids]
        found: dict[int, tuple[str, str]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found.update((row[0], (row[1], row[2])) for row in self.connection.execute(
                f"SELECT images.id, identities.name, images.source FROM images JOIN identities "
                f"ON identities.id = images.identity_id WHERE images.id IN ({marks})", chunk))
        return found

    def identities(self) -> list[dict]:
        """Every identity with its image count and first/last enrolment time, by name."""
        rows = self.connection.execute(
            "SELECT identities.name, COUNT(images.id), MIN(images.enrolled), MAX(images.enrolled) FROM identities "
            "LEFT JOIN images ON images.identity_id = identities.id GROUP BY identities.id ORDER BY identities.name")
        return [{"identity": name, "images": count, "first_enrolled": first, "last_enrolled": last}
                for name, count, first, last in rows]

    def counts(self) -> tuple[int, int]:
        """``(identities, images)``."""
        people = self.connection.execute("SELECT COUNT(*) FROM identities").fetchone()[0]
        images = self.connection.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        return int(people), int(images)

    # -- writing -----------------------------------------------------------------------------------
    def add(self, images: list[NewImage], model_key: str, actor: Optional[Actor] = None) -> AddResult:
        """Store ``images`` in one transaction (all or nothing). An image whose content is enrolled as
        another identity is left out (a conflict); one enrolled as the same identity is already there."""
        now = time.time()
        result = AddResult()
        added: dict[str, list[str]] = {}
        with self._write():
            for image in images:
                owners = {row[0] for row in self.connection.execute(
                    "SELECT identities.name FROM images JOIN identities ON identities.id = images.identity_id "
                    "WHERE images.sha256 = ?", (image.sha256,))}
                if image.identity in owners:
                    result.already += 1
                    continue
                if owners:
                    result.conflicts[image.sha256] = sorted(owners)[0]
                    continue
                self.connection.execute("INSERT OR IGNORE INTO identities (name, created) VALUES (?, ?)",
                                        (image.identity, now))
                identity_id = self.connection.execute("SELECT id FROM identities WHERE name = ?",
                                                      (image.identity,)).fetchone()[0]
                self.connection.execute(
                    "INSERT INTO images (identity_id, sha256, source, stage, model, enrolled, vector) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (identity_id, image.sha256, image.source, image.stage, model_key, now,
                     np.ascontiguousarray(image.vector, dtype=np.float32).tobytes()))
                added.setdefault(image.identity, []).append(image.sha256)
                result.added += 1
            if added:
                self._bump(epoch=False)
                for identity, hashes in added.items():
                    append_audit(self.path, actor or local_actor(), "enroll", identity, hashes)
        return result

    def remove(self, identity: str, actor: Optional[Actor] = None) -> int:
        """Delete ``identity`` and all its embeddings (zeroed by secure_delete; :meth:`scrub` then leaves
        no old page anywhere); returns the images removed."""
        with self._write():
            row = self.connection.execute("SELECT id FROM identities WHERE name = ?", (identity,)).fetchone()
            if row is None:
                raise InputError(f"{self.path}: no identity {identity!r} in this gallery")
            hashes = [sha for (sha,) in self.connection.execute(
                "SELECT sha256 FROM images WHERE identity_id = ? ORDER BY id", (row[0],))]
            removed = self.connection.execute("DELETE FROM images WHERE identity_id = ?", (row[0],)).rowcount
            self.connection.execute("DELETE FROM identities WHERE id = ?", (row[0],))
            self._bump(epoch=True)
            append_audit(self.path, actor or local_actor(), "remove", identity, hashes)
        return int(removed)

    def write_lock(self):
        """A context holding the gallery's write lock (no change can commit meanwhile), changing nothing."""
        return self._write()

    def scrub(self) -> None:
        """Leave no trace of deleted rows: fold the WAL into the file, VACUUM, and empty the WAL again.

        Raises :class:`KfaceError` when readers of other processes keep the WAL from being emptied for the
        whole lock timeout (the deleted rows' pages are zeroed in the file already, but older copies of
        them may then remain in the WAL until the next scrub)."""
        try:
            self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.connection.execute("VACUUM")
            busy = self._empty_wal()
        except sqlite3.OperationalError as exc:
            busy, why = 1, str(exc)
        else:
            why = "another process kept reading"
        if busy:
            raise KfaceError(f"{self.path}: removed, but could not empty the write-ahead log ({why}); run kface "
                             f"gallery rebuild --gallery {self.path} when no one is using it") from None

    def _empty_wal(self) -> int:
        """Checkpoint the WAL into the file and truncate it, retrying while another process checkpoints
        (SQLite then answers busy at once, without waiting) or reads, for up to the lock timeout; 1 if it
        never could."""
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            busy = self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy or time.monotonic() > deadline:
                return int(busy)
            time.sleep(0.05)

    def _bump(self, epoch: bool) -> None:
        self.connection.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        if epoch:
            self.connection.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'epoch'")

    def _write(self):
        return _WriteTransaction(self.connection)


class _ReadTransaction:
    def __init__(self, connection: sqlite3.Connection):
        self.connection = connection

    def __enter__(self):
        self.connection.execute("BEGIN")
        # A deferred transaction takes its snapshot at the first read: take it now.
        self.connection.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return self

    def __exit__(self, *exc) -> None:
        self.connection.execute("COMMIT")


class _WriteTransaction:
    def __init__(self, connection: sqlite3.Connection):
        self.connection = connection

    def __enter__(self):
        try:
            self.connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise KfaceError(f"the gallery is locked by another writer ({exc})") from None
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.connection.execute("ROLLBACK" if kind is not None else "COMMIT")


class UnbornStore:
    """A gallery that does not exist yet: empty to every read; :meth:`create` makes the file.

    A new gallery is created only when its first embeddings are about to be stored, so a command whose
    enrolment fails leaves no gallery behind and never has to delete one (which another process may have
    opened meanwhile).
    """

    def __init__(self, path: Path, model: ModelIdentity, open_set: tuple[float, str]):
        self.path = path
        self._model = model
        self.open_set = open_set

    def create(self) -> GalleryStore:
        return GalleryStore.create(self.path, self._model, self.open_set)

    def model(self) -> ModelIdentity:
        return self._model

    def meta(self) -> dict[str, str]:
        return {"open_set_threshold": repr(self.open_set[0]), "open_set_source": self.open_set[1],
                "generation": "0", "epoch": "0", "dim": str(self._model.dim)}

    def version(self) -> tuple[int, int]:
        return 0, 0

    def snapshot(self):
        return contextlib.nullcontext()

    def known_hashes(self, identity: Optional[str] = None) -> dict[str, str]:
        return {}

    def identities(self) -> list[dict]:
        return []

    def counts(self) -> tuple[int, int]:
        return 0, 0

    def close(self) -> None:
        pass
