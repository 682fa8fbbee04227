"""The Python API of a gallery: enroll faces under a name, search a face among them, remove a person.

A :class:`Gallery` is a :class:`~kface.galleries.store.GalleryStore` (SQLite, the source of truth), a
:class:`~kface.galleries.index.VectorIndex` rebuilt from it when needed, and the
:class:`~kface.api.Verifier` of the model that made its vectors (loaded only to embed photos). Every
search runs inside one read snapshot of the store, so a search that overlaps another process's enrolment
sees the gallery either before or after each committed batch, never half of one.

The write API here is the one safe way to change a gallery from many processes at once: every change is
one transaction of the store (:mod:`kface.galleries.store`), a new gallery is created at its first commit,
and the index file is replaced only while holding the store's write lock and only by an index of the
committed state, so the file on disk is the current state or is recognised as stale and rebuilt.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ..api import FaceOptions, load_verifier
from ..datasets import load_dataset
from ..errors import InputError, KfaceError
from ..faces.images import ImageSource, content_hash, read_bytes, source_name
from ..models import STOCK_MODEL, card, is_shipped
from ..util.hashing import file_sha256
from .audit import Actor, local_actor
from .index import VectorIndex, build_index, index_path, read_header
from .openset import open_set_threshold
from .store import AddResult, GalleryStore, ModelIdentity, NewImage, UnbornStore

log = logging.getLogger("kface")

#: Images embedded and committed together in a dataset enrolment (an interruption loses at most one).
ENROL_BATCH = 64


@dataclass
class Candidate:
    """One identity of a search's ranked answer: its nearest enrolled image and that distance."""

    identity: str
    distance: float
    image: str
    same_at_threshold: bool  # within the model's 1:1 verification threshold


@dataclass
class SearchAnswer:
    """The answer to one search: ranked identities and the open-set decision."""

    candidates: list[Candidate]
    match: Optional[str]  # the best identity when it is within the open-set threshold, else None
    open_set_threshold: float
    open_set_source: str
    threshold: float  # the model's 1:1 threshold, for reference
    distance_metric: str
    model: str
    gallery_images: int  # the images the search saw (one committed state of the gallery)
    face: dict = field(default_factory=dict)  # path, found, stage, box, n_faces (image searches only)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EnrolmentReport:
    """What an enrolment did, image by image counted."""

    enrolled: int = 0  # new embeddings committed
    already: int = 0  # skipped: this content was enrolled under the same identity before
    conflicts: dict[str, str] = field(default_factory=dict)  # image -> the other identity it is enrolled as
    skipped: dict[str, str] = field(default_factory=dict)  # image -> why (no face, unreadable)
    total: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def model_identity(verifier) -> ModelIdentity:
    """The identity a gallery records for ``verifier``'s vectors (see :class:`ModelIdentity`)."""
    spec = verifier.embedder.spec
    if verifier.model_path:
        key, name = f"checkpoint@{file_sha256(verifier.model_path)[:16]}", str(Path(verifier.model_path).resolve())
    elif verifier.model_name != STOCK_MODEL and is_shipped(verifier.model_name):
        key, name = f"{verifier.model_name}@{card(verifier.model_name)['sha256'][:16]}", verifier.model_name
    else:
        # Stock backbones: every implementation of one family gives the same vectors (dlib-torch ~ dlib).
        key, name = f"{STOCK_MODEL if spec.family.startswith('dlib') else spec.name}@{spec.family}", STOCK_MODEL
    dim = spec.embedding_size if verifier.head is None else int(verifier.head(np.zeros((1, spec.embedding_size),
                                                                                          np.float32)).shape[1])
    return ModelIdentity(key, name, spec.name, verifier.distance.name, float(verifier.threshold), dim)


class Gallery:
    """A searchable collection of enrolled faces, one file (``path``) plus its index (``path.index``).

    Open one with :meth:`open`; ``model`` (a shipped name, or a checkpoint path) must be the gallery's own
    model, which is the default. ``verifier_options`` (detector, fallback, device, cache, progress,
    max_pixels) go to :func:`kface.api.load_verifier` when a photo must be embedded.

    >>> gallery = Gallery.open("people.kgallery", create=True)
    >>> gallery.enroll(["examples/obama.jpg"], identity="obama").enrolled
    1
    >>> gallery.search("examples/obama2.jpg").match
    'obama'
    """

    def __init__(self, store: Union[GalleryStore, UnbornStore], verifier=None,
                 verifier_options: Optional[dict] = None, actor: Optional[Actor] = None):
        self.store = store
        self.path = store.path
        self.model = store.model()
        self.actor = actor or local_actor()  # who the audit log names for changes made without an actor
        self._verifier = verifier
        self._verifier_options = dict(verifier_options or {})
        self._index: Optional[VectorIndex] = None

    # -- opening -----------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: os.PathLike, model: Optional[str] = None, *, create: bool = False, verifier=None,
             **verifier_options) -> "Gallery":
        """Open the gallery at ``path`` (``create``: when it is missing, it is created for ``model`` when
        the first embeddings are stored, by this process or by another one of the same model).

        Raises :class:`InputError` when the file is not a gallery, or when ``model`` (or ``verifier``) is
        not the model the gallery's vectors were made with.
        """
        path = Path(path)
        if not path.exists() and create:
            if verifier is None:
                verifier = load_verifier(model, **_loader_options(verifier_options))
            identity = model_identity(verifier)
            return cls(UnbornStore(path, identity, open_set_threshold(identity)), verifier, verifier_options)
        store = GalleryStore.open(path)
        gallery = cls(store, verifier, verifier_options)
        if verifier is not None or model is not None:
            gallery._check_model(model_identity(gallery.verifier if verifier is not None else
                                                gallery._load_verifier(model)))
        return gallery

    def close(self) -> None:
        if self._verifier is not None:
            self._verifier.embedder.close()
        self.store.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def verifier(self):
        """The gallery model's verifier (loaded on first use)."""
        if self._verifier is None:
            # The gallery's own model, checked all the same: a checkpoint file may have been replaced.
            self._check_model(model_identity(self._load_verifier(None)))
        return self._verifier

    def _load_verifier(self, model: Optional[str]):
        """``model``'s verifier, or (None) the gallery's own, with its recorded backbone and threshold."""
        options = _loader_options(self._verifier_options)
        name = model
        if model is None:
            name = self.model.name
            if os.sep in name and not os.path.isfile(name):
                raise InputError(f"{self.path}: the gallery's model {name} is gone; pass --model with that checkpoint")
            options.setdefault("backbone", self.model.backbone)
            options.setdefault("threshold", self.model.threshold)
        self._verifier = load_verifier(name, **options)
        return self._verifier

    def _check_model(self, identity: ModelIdentity) -> None:
        if identity.key == self.model.key:
            return
        if identity.name == self.model.name:  # the same name, another file: a model rebuilt since
            raise InputError(f"{self.path} holds embeddings of another version of model {self.model.name!r} "
                             f"({self.model.key}; this kface's is {identity.key}), which makes different "
                             f"vectors: enroll the photos again into a new gallery")
        raise InputError(f"{self.path} holds embeddings of model {self.model.name!r} ({self.model.key}); "
                         f"model {identity.name!r} ({identity.key}) makes different vectors: use "
                         f"--model {self.model.name} or another gallery")

    # -- enrolment ---------------------------------------------------------------------------------
    def enroll(self, images: Sequence[ImageSource], identity: Union[str, Sequence[str]], *,
               skip_bad: bool = False, batch: Optional[int] = None,
               on_commit: Optional[Callable[[EnrolmentReport], None]] = None,
               actor: Optional[Actor] = None) -> EnrolmentReport:
        """Enroll ``images`` under ``identity`` (one name, or one per image).

        Images already enrolled (by content) are skipped. Without ``skip_bad`` every image must have a
        face: the first failure raises and nothing is stored. With ``skip_bad`` (datasets) failures are
        reported in ``skipped``, and every ``batch`` images are committed as they are embedded, so an
        interrupted enrolment keeps what it reported (``on_commit`` is called after each commit) and a
        rerun finishes the rest.
        """
        names = [identity] * len(images) if isinstance(identity, str) else list(identity)
        if len(names) != len(images):
            raise ValueError("identity must be one name or one per image")
        for name in set(names):
            if not name or not name.strip():
                raise InputError("an identity name must not be empty")
        report = EnrolmentReport(total=len(images))
        todo = self._new_images(images, names, report, skip_bad)
        if not todo:
            return report
        verifier = self.verifier  # load before the first batch, so a model error stores nothing
        step = len(todo) if not skip_bad else (batch or ENROL_BATCH)
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            vectors, result = verifier.embed([source for source, _, _, _ in chunk],
                                             on_error="skip" if skip_bad else "raise")
            if vectors.shape[1] != self.model.dim:
                raise KfaceError(f"the model made {vectors.shape[1]}-d vectors; {self.path} holds {self.model.dim}-d")
            new, labels = [], {}
            for row, (_, label, sha, name) in enumerate(chunk):
                message = result.errors.get(result.paths[row])
                if message is not None:
                    report.skipped[label] = message
                    continue
                new.append(NewImage(name, sha, label, result.stages[row], vectors[row]))
                labels[sha] = label
            stored = self._store_for_writing().add(new, self.model.key, actor or self.actor)
            report.enrolled += stored.added
            report.already += stored.already
            report.conflicts.update({labels[sha]: owner for sha, owner in stored.conflicts.items()})
            if on_commit is not None:
                on_commit(report)
        self.refresh_index(save=True)
        return report

    def add_images(self, images: Sequence[NewImage], actor: Optional[Actor] = None) -> AddResult:
        """Store embeddings made elsewhere by the gallery's model (e.g. a server's), in one transaction."""
        for image in images:
            if np.asarray(image.vector).shape != (self.model.dim,):
                raise InputError(f"a {np.asarray(image.vector).shape} vector cannot join {self.path}, "
                                 f"which holds {self.model.dim}-d ones")
        stored = self._store_for_writing().add(list(images), self.model.key, actor or self.actor)
        self.refresh_index(save=True)
        return stored

    def _store_for_writing(self) -> GalleryStore:
        """The store, created now when the gallery does not exist yet (or opened, if another process
        created it meanwhile for the same model)."""
        if isinstance(self.store, UnbornStore):
            self.store = self.store.create()
        return self.store

    def _new_images(self, images, names, report: EnrolmentReport, skip_bad: bool) -> list:
        """The images to embed: readable, not enrolled before, each content once."""
        known = self.store.known_hashes()
        todo, seen = [], set()
        for source, name in zip(images, names):
            label = source_name(source)
            try:
                sha = content_hash(read_bytes(source))
            except InputError as exc:
                if not skip_bad:
                    raise
                report.skipped[label] = str(exc)
                continue
            owner = known.get(sha)
            if owner == name or (sha, name) in seen:
                report.already += 1
            elif owner is not None:
                report.conflicts[label] = owner
            else:
                seen.add((sha, name))
                todo.append((source, label, sha, name))
        return todo

    def enroll_dataset(self, kind: str, root: os.PathLike, layout_options: Optional[dict] = None, *,
                       batch: Optional[int] = None, progress: bool = False,
                       on_commit: Optional[Callable[[EnrolmentReport], None]] = None) -> EnrolmentReport:
        """Enroll every image of a dataset under its identity (resumable; see :meth:`enroll`)."""
        index = load_dataset(kind, root, progress=progress, **(layout_options or {}))
        if not any(index.identity_names):
            raise InputError(f"--dataset {kind}: its images carry no identities to enroll")
        paths = [str(index.absolute_path(row)) for row in range(len(index))]
        names = [index.identity_names[code] for code in index.identity_codes]
        return self.enroll(paths, names, skip_bad=True, batch=batch, on_commit=on_commit)

    def remove(self, identity: str, actor: Optional[Actor] = None) -> int:
        """Delete ``identity``'s embeddings for good (SQLite delete with secure_delete, VACUUM, and an
        index rebuilt without them); returns how many images were removed."""
        removed = self._store_for_writing().remove(identity, actor or self.actor)
        self.rebuild()  # first the index file, which holds the vectors too
        self.store.scrub()
        return removed

    # -- searching ---------------------------------------------------------------------------------
    def search(self, image: ImageSource, top: int = 5, open_set_threshold: Optional[float] = None) -> SearchAnswer:
        """The ``top`` identities nearest to the face in ``image`` and the open-set answer.

        Raises :class:`InputError` when the image has no face or the gallery is empty.
        """
        self._require_people()
        vectors, result = self.verifier.embed([image])
        answer = self.search_vectors(vectors, top, open_set_threshold)[0]
        answer.face = result.face(0)
        return answer

    def search_vectors(self, vectors: np.ndarray, top: int = 5,
                       open_set_threshold: Optional[float] = None) -> list[SearchAnswer]:
        """Search embeddings made by the gallery's model; one :class:`SearchAnswer` per row."""
        if top < 1:
            raise InputError(f"--top must be 1 or more, got {top}")
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.shape[1] != self.model.dim:
            raise InputError(f"{vectors.shape[1]}-d vectors cannot search {self.path}, which holds {self.model.dim}-d")
        meta = self.store.meta()
        limit = float(meta["open_set_threshold"]) if open_set_threshold is None else float(open_set_threshold)
        source = meta["open_set_source"] if open_set_threshold is None else "--open-set-threshold"
        if self._index is None:
            self._index = VectorIndex.load(index_path(self.path))  # before the snapshot: never newer than it
        with self.store.snapshot():
            count = self.store.counts()[1]
            if count == 0:
                raise InputError(f"{self.path}: the gallery is empty; enroll someone first")
            index, rebuilt = self._current_index(count)
            ranked = self._ranked(index, vectors, top, count)
        if rebuilt:
            self._save_index()
        answers = []
        for candidates in ranked:
            best = candidates[0] if candidates else None
            match = best.identity if best is not None and best.distance <= limit else None
            answers.append(SearchAnswer(candidates, match, limit, source, self.model.threshold, self.model.distance,
                                        self.model.name, count))
        return answers

    def _ranked(self, index: VectorIndex, vectors: np.ndarray, top: int, count: int) -> list[list[Candidate]]:
        """Per query, the best image of each of the ``top`` nearest identities (inside the snapshot)."""
        k = min(count, 8 * top + 8)  # several images per person: ask for more images than people
        while True:
            distances, ids = index.search(vectors, k)
            owners = self.store.identities_of(np.unique(ids[ids >= 0]))
            ranked = []
            for row in range(len(vectors)):
                best: dict[str, Candidate] = {}
                for distance, image_id in zip(distances[row], ids[row]):
                    if image_id < 0 or int(image_id) not in owners:
                        continue
                    name, source = owners[int(image_id)]
                    if name not in best:
                        best[name] = Candidate(name, round(float(distance), 6), source,
                                               bool(distance <= self.model.threshold))
                ranked.append(list(best.values())[:top])
            if k >= count or all(len(r) >= top for r in ranked):
                return ranked
            k = min(count, 4 * k)

    def _current_index(self, count: int) -> tuple[VectorIndex, bool]:
        """The index at the snapshot's state: kept, brought up to date, or rebuilt (inside a snapshot), and
        whether it was rebuilt (then worth saving, once the snapshot ends)."""
        generation, epoch = self.store.version()
        created = self.store.meta()["created"]
        index = self._index
        stale = (index is None or index.gallery != created or index.epoch != epoch or index.generation > generation
                 or index.dim != self.model.dim or index.distance != self.model.distance
                 or index.needs_rebuild(count))
        if not stale and index.generation < generation:
            ids, vectors = self.store.vectors(after_id=index.max_id)
            index.add(ids, vectors)
            index.generation = generation
        rebuilt = stale or index.count != count
        if rebuilt:
            ids, vectors = self.store.vectors()
            index = build_index(ids, vectors, self.model.distance, self.model.dim, generation, epoch, gallery=created)
        self._index = index
        return index, rebuilt

    def refresh_index(self, save: bool = False) -> Optional[VectorIndex]:
        """Bring the index up to the committed state (``save``: write the index file too); None while the
        gallery does not exist yet."""
        if isinstance(self.store, UnbornStore):
            return None
        if self._index is None:
            self._index = VectorIndex.load(index_path(self.path))
        with self.store.snapshot():
            index, rebuilt = self._current_index(self.store.counts()[1])
        if save or rebuilt:
            self._save_index()
        return index

    def rebuild(self) -> VectorIndex:
        """Rebuild the index file from the store, whatever state it is in."""
        self._index = None
        return self.refresh_index(save=True)

    def _save_index(self) -> None:
        """Write the index file, holding the store's write lock, when the index is of the committed state;
        otherwise a later commit's writer saves its own, and a file of an older epoch (it may hold the
        vectors of someone removed since) is deleted."""
        index, path = self._index, index_path(self.path)
        try:
            with self.store.write_lock():
                generation, epoch = self.store.version()
                if (index.generation, index.epoch) == (generation, epoch):
                    index.save(path)
                else:
                    on_disk = read_header(path)
                    if on_disk is not None and on_disk.get("epoch") != epoch:
                        path.unlink()
        except (OSError, KfaceError) as exc:
            log.info("%s: could not write the index file (%s); searches rebuild it in memory", self.path, exc)

    def _require_people(self) -> None:
        if self.store.counts()[1] == 0:
            raise InputError(f"{self.path}: the gallery is empty; enroll someone first")

    # -- describing --------------------------------------------------------------------------------
    def identities(self) -> list[dict]:
        return self.store.identities()

    def stats(self) -> dict:
        meta = self.store.meta()
        people, images = self.store.counts()
        index_file = index_path(self.path)
        on_disk = VectorIndex.load(index_file)
        generation, _ = self.store.version()
        return {"gallery": str(self.path), "identities": people, "images": images,
                "model": self.model.name, "model_key": self.model.key, "backbone": self.model.backbone,
                "distance": self.model.distance, "dim": self.model.dim, "threshold": self.model.threshold,
                "open_set_threshold": float(meta["open_set_threshold"]), "open_set_source": meta["open_set_source"],
                "generation": generation, "file_bytes": self.path.stat().st_size,
                "index": None if on_disk is None else {
                    "kind": on_disk.kind, "count": on_disk.count, "current": on_disk.generation == generation,
                    "file_bytes": index_file.stat().st_size}}


def _loader_options(options: dict) -> dict:
    """``load_verifier``'s keyword arguments from a gallery's verifier options, without the unset ones: the
    face settings as one :class:`~kface.api.FaceOptions`, ``backbone`` and ``threshold`` beside it."""
    given = {key: value for key, value in options.items() if value is not None}
    faces = {key: given[key] for key in ("detector", "fallback", "device", "cache", "progress", "max_pixels")
             if key in given}
    return {**{key: given[key] for key in ("backbone", "threshold") if key in given}, "options": FaceOptions(**faces)}
