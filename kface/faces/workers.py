"""Face finding for many images at once: decode, detect and align in worker processes.

:class:`~kface.embeddings.embedder.Embedder` hands each image that has no cached face to :func:`find_faces`,
which yields the results as they are ready, in completion order. Below :data:`POOL_MIN_IMAGES` images (a
two-photo ``verify``, a web upload) or with ``workers=0`` the work runs here, in this process, with no
pool to start; above it, in ``workers`` processes (default: the CPU cores), while this process runs the
network on the chips already found. Workers are forked before the network loads (or come from a fork
server where this process already holds torch or onnxruntime) and import no torch: MTCNN runs through
onnxruntime (:mod:`kface.faces.mtcnn`).

A task's result holds the cache arrays (see :class:`FaceEntry`) of the detected face
and, where the fallback asks for it, of the whole-image chip, or the task's one-line input error.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np

from ..errors import InputError, NoFaceError
from .detect import Box, Face, FaceFinder, FaceSettings
from .images import decode_image

Arrays = dict[str, np.ndarray]

#: Fewer images than this are found in this process: a pool costs about 0.3 s to start.
POOL_MIN_IMAGES = 24
#: Tasks in flight per worker: enough to keep each busy, few enough that finished chips (67 kB each)
#: never pile up while the network is slower than detection.
IN_FLIGHT_PER_WORKER = 8


@dataclass
class FaceTask:
    """One image to find a face in: its bytes and what is still missing from the cache."""

    index: int
    name: str
    data: bytes
    box: Optional[Box]  # a label box (replaces detection)
    detect: bool  # run the detector (its result is not cached yet)
    whole_image: bool  # cut the whole-image chip if the detector misses (the fallback wants it)


@dataclass
class FaceResult:
    """What a task found: cache arrays for the face key and the whole-image key, or an input error."""

    index: int
    detected: Optional[Arrays] = None
    whole_image: Optional[Arrays] = None
    error: Optional[str] = None


def default_workers() -> int:
    """Worker processes by default: the CPU cores this process may use; none inside a daemon process
    (a DataLoader worker, a pool worker), which may not have children."""
    multiprocessing = sys.modules.get("multiprocessing")  # a daemon worker has it imported; others need not
    if multiprocessing is not None and multiprocessing.current_process().daemon:
        return 0
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class FaceEntry:
    """A face as the face cache stores it: the chip and where it came from (chip is None when no face).

    :meth:`to_arrays` and :meth:`from_arrays` are the one layout of the cache's face records (``stage``,
    ``n_faces``, and ``chip`` and ``box`` where a face was found); an embedding record is the same without
    the chip, plus its ``embedding``.
    """

    chip: Optional[np.ndarray]
    box: Optional[Box]
    stage: str  # see Face.stage; "none" when nothing was found
    n_faces: int

    @property
    def found(self) -> bool:
        return self.stage not in ("none", "whole-image")

    @classmethod
    def of(cls, face: Optional[Face]) -> "FaceEntry":
        """The entry of a face, or of a miss (``None``)."""
        if face is None:
            return cls(None, None, "none", 0)
        return cls(face.chip, face.box, face.stage, face.n_faces)

    def to_arrays(self, chip: bool = True) -> Arrays:
        arrays = {"stage": np.array(self.stage), "n_faces": np.array(self.n_faces)}
        if self.chip is not None:
            if chip:
                arrays["chip"] = self.chip
            arrays["box"] = np.array(self.box, dtype=np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Arrays) -> "FaceEntry":
        chip = arrays.get("chip")
        box = tuple(int(v) for v in arrays["box"]) if chip is not None else None
        return cls(chip, box, str(arrays["stage"]), int(arrays["n_faces"]))


def face_arrays(face: Optional[Face]) -> Arrays:
    """A face (or a miss, ``None``) as the arrays the face cache stores."""
    return FaceEntry.of(face).to_arrays()


def run_task(finder: FaceFinder, task: FaceTask, max_pixels: Optional[int]) -> FaceResult:
    """Decode one image and find its face (and, on a miss, its whole-image chip where wanted)."""
    result = FaceResult(task.index)
    try:
        kwargs = {"max_pixels": max_pixels} if max_pixels else {}
        image = decode_image(task.data, task.name, **kwargs)
        missed = not task.detect  # the caller asks for no detection only where a miss is cached
        if task.detect:
            try:
                result.detected = face_arrays(finder.find(image, task.name, task.box))
            except NoFaceError:
                result.detected = face_arrays(None)
                missed = True
        if task.whole_image and missed:
            result.whole_image = face_arrays(finder.whole_image(image))
    except InputError as exc:
        result.error = str(exc)
    return result


# -- worker processes ------------------------------------------------------------------------------
_worker: dict = {}


def _start_worker(settings: FaceSettings, max_pixels: Optional[int]) -> None:
    # The parent says each note once, when it reads the faces back.
    logging.getLogger("kface").setLevel(logging.WARNING)
    # Parallelism is across processes: one thread each for MTCNN's networks.
    _worker["finder"] = FaceFinder(settings, device="cpu", threads=1)
    _worker["max_pixels"] = max_pixels


def _run_in_worker(task: FaceTask) -> FaceResult:
    return run_task(_worker["finder"], task, _worker["max_pixels"])


def _context():
    """Fork while this process holds no threaded native runtime (the usual case: the pool starts before
    the network loads), which costs nothing and re-imports nothing; else a fork server, a lean process
    forked once before any of that (it re-imports ``__main__``, which must then be guarded)."""
    import multiprocessing  # lazy: a call that starts no pool does not pay for it

    methods = multiprocessing.get_all_start_methods()
    heavy = any(name in sys.modules for name in ("torch", "onnxruntime"))
    if "fork" in methods and not heavy:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["kface.faces.workers"])
        return context
    return multiprocessing.get_context("spawn")


def find_faces(tasks: list[FaceTask], finder: FaceFinder, settings: FaceSettings, workers: int,
               max_pixels: Optional[int] = None) -> Iterator[FaceResult]:
    """Results of ``tasks`` as they are ready: here with ``finder`` for few tasks or ``workers=0``,
    else in ``workers`` processes, each with its own :class:`FaceFinder` for ``settings``."""
    if workers <= 0 or len(tasks) < POOL_MIN_IMAGES:
        for task in tasks:
            yield run_task(finder, task, max_pixels)
        return
    workers = min(workers, len(tasks))
    # A bounded window of tasks in flight: the pool's feeder thread waits on it, the consumer frees it.
    window = threading.Semaphore(workers * IN_FLIGHT_PER_WORKER)
    stopped = threading.Event()

    def fed() -> Iterable[FaceTask]:
        for task in tasks:
            window.acquire()
            if stopped.is_set():
                return
            yield task

    with _context().Pool(workers, initializer=_start_worker, initargs=(settings, max_pixels)) as pool:
        try:
            for result in pool.imap_unordered(_run_in_worker, fed()):
                window.release()
                yield result
        finally:
            # A consumer that stops early (an error, Ctrl-C) must not leave the feeder waiting, or the
            # pool's shutdown would wait for it forever.
            stopped.set()
            window.release(len(tasks))
