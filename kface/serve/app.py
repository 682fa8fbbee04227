"""`kface serve`: a local web page and JSON API for verify and analyze.

One process loads the verifier (and, when given, an attribute model) once, then answers:

- ``GET /`` — the page (``kface/serve/web/``): two drop zones, the verdict, the distance drawn against the
  threshold and, when known, the model's same/different distance distributions (from ``--distances``,
  else the val distances a trained model stores); a third zone for age group and gender. English and
  Korean labels.
- ``POST /verify`` (multipart fields ``image_a``, ``image_b``) — the fields of ``kface verify --json``;
  ``?chips=true`` adds the aligned face chips that were compared, as PNG data URLs.
- ``POST /analyze`` (field ``image``) — the fields of ``kface analyze --json``.
- ``GET /health``, ``GET /distribution``, and the OpenAPI schema at ``/docs`` (served offline).

Face photos are biometric data, so uploads are parsed from the request body in memory (never spooled
to a temporary file), the on-disk cache is replaced by a per-request store that is dropped when the
request ends, nothing about an upload is logged, and the server listens on 127.0.0.1 unless told
otherwise. Requests are capped in bytes and images in pixels; every bad upload is a JSON error with a
4xx status and a readable message. The blocking work (decoding, detection, embedding) runs in worker
threads, so the event loop keeps serving the page and other requests meanwhile; each worker has its own
:class:`Pipeline` (dlib's face detector must not be called from two threads at once: it crashes or
returns other images' faces).
"""
from __future__ import annotations

import base64
import csv
import io
import ipaddress
import logging
import os
import platform
import queue
import socket
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import InputError, KfaceError, NoFaceError
from ..images import MAX_PIXELS
from .guard import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_IN_FLIGHT, RequestGuard, memory_bound_bytes

log = logging.getLogger("kface")

WEB_DIR = Path(__file__).parent / "web"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: A phone photo is 3-12 MB; two of them with multipart overhead fit well under 20 MB.
DEFAULT_MAX_REQUEST_MB = 20.0
#: Points of the density curves sent to the page (the KDE grid itself is much finer).
CURVE_POINTS = 240
VERIFY_FIELDS = ("image_a", "image_b")
ANALYZE_FIELDS = ("image",)
NO_ATTRIBUTES_MESSAGE = ("this server has no attribute model (the shipped one is not installed): start it with "
                         "--attributes-model FILE (a model from kface train-attributes) to read age group and gender")


# --------------------------------------------------------------------------- limits and errors


#: Requests worked on at once by default: one per core, at most 4 (each holds its own models).
DEFAULT_WORKERS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class ServeLimits:
    """What one request may send."""

    max_request_bytes: int = int(DEFAULT_MAX_REQUEST_MB * 1024 * 1024)
    max_pixels: int = MAX_PIXELS

    def to_dict(self) -> dict:
        return {"max_request_bytes": self.max_request_bytes, "max_pixels": self.max_pixels}


class ApiError(Exception):
    """A request the server refuses: an HTTP status and a one-line message for the person or script."""

    def __init__(self, status: int, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())
        self.field = field

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"detail": self.message}
        if self.field:
            body["field"] = self.field
        return JSONResponse(body, status_code=self.status)


def _megabytes(count: int) -> str:
    return f"{count / (1024 * 1024):.1f} MB"


# --------------------------------------------------------------------------- uploads, in memory


@dataclass
class Upload:
    """One uploaded file: the form field it came in, the browser's file name, and its bytes."""

    field: str
    filename: str
    data: bytes

    @property
    def label(self) -> str:
        """How messages name it: ``image_b (notes.txt)``."""
        return f"{self.field} ({self.filename})" if self.filename else self.field


class _PartCollector:
    """python-multipart callbacks that gather each part's headers and bytes in memory."""

    def __init__(self):
        self.parts: list[tuple[dict[str, str], bytes]] = []
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._data = bytearray()

    @property
    def callbacks(self) -> dict[str, Callable]:
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_part_data": self._part_data, "on_part_end": self._end}

    def _begin(self) -> None:
        self._headers, self._data = {}, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value.decode("utf-8", "replace")
        self._field, self._value = bytearray(), bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]

    def _end(self) -> None:
        self.parts.append((self._headers, bytes(self._data)))


def _fields_text(fields: Sequence[str]) -> str:
    return " and ".join(f"'{name}'" for name in fields)


async def read_uploads(request: Request, fields: Sequence[str], max_bytes: int) -> dict[str, Upload]:
    """The files of a multipart/form-data request, one per name in ``fields``, read into memory.

    Starlette's own form parser spools files over 1 MB to a temporary file on disk; this one never
    does. The body is counted as it arrives and refused past ``max_bytes``.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    endpoint = f"{request.method} {request.url.path}"
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(415, f"{endpoint} takes multipart/form-data with the file field(s) {_fields_text(fields)}")
    too_large = (f"the request is over the limit of {_megabytes(max_bytes)} (the server's --max-upload-mb); "
                 f"send smaller photos")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, too_large)
    collector = _PartCollector()
    parser = MultipartParser(options[b"boundary"], collector.callbacks)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise ApiError(413, too_large)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, f"malformed multipart/form-data body ({exc})") from None
    uploads: dict[str, Upload] = {}
    for headers, data in collector.parts:
        _, disposition = parse_options_header(headers.get("content-disposition", ""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if name not in fields:
            raise ApiError(400, f"unexpected field '{name}': {endpoint} takes the file field(s) {_fields_text(fields)}",
                           field=name or None)
        if name in uploads:
            raise ApiError(400, f"field '{name}' was sent twice; send one file in it", field=name)
        filename = Path(disposition.get(b"filename", b"").decode("utf-8", "replace")).name
        uploads[name] = Upload(name, filename, data)
    missing = [name for name in fields if name not in uploads]
    if missing:
        raise ApiError(400, f"missing file field(s) {_fields_text(missing)}: {endpoint} takes {_fields_text(fields)}",
                       field=missing[0])
    return uploads


def _check_pixels(upload: Upload, max_pixels: int) -> None:
    """Refuse an image over the pixel limit from its header alone (413), before anything is decoded."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(upload.data)) as image:
                width, height = image.size
    except Exception:  # not an image Pillow can open: the pipeline names the problem
        return
    if width * height > max_pixels:
        raise ApiError(413, f"{upload.label}: image is {width}x{height} = {width * height:,} pixels, over the "
                            f"server's limit of {max_pixels:,}; send a smaller photo", field=upload.field)


@contextmanager
def _named_errors(upload: Upload) -> Iterator[None]:
    """The pipeline's errors about an upload as 422 :class:`ApiError` naming its field and file."""
    try:
        yield
    except NoFaceError:
        raise ApiError(422, f"{upload.label}: no face found; use a photo in which one face is clearly visible",
                       field=upload.field) from None
    except InputError as exc:
        message = str(exc)
        for name in ("<upload>", "<upload 1>", "<upload 2>"):
            if message.startswith(name):
                message = upload.label + message[len(name):]
                break
        raise ApiError(422, message, field=upload.field) from None


# --------------------------------------------------------------------------- pipelines


class RequestMemory:
    """A pipeline's cache while serving: the current request's faces and embeddings, in memory only.

    It replaces the embedders' on-disk cache, so uploads never reach the disk, and :meth:`request`
    drops what a request stored when it ends, so they never outlive it. Within a request it lets the
    chips shown on the page and the verdict come from one detection.
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

    def get_many(self, table: str, keys) -> dict:
        stored = (self._tables or {}).get(table, {})
        return {key: stored[key] for key in keys if key in stored}

    def put_many(self, table: str, items: dict) -> None:
        if self._tables is not None:
            self._tables.setdefault(table, {}).update(items)

    def close(self) -> None:
        pass


def base_embedder(embedder):
    """The :class:`~kface.embeddings.Embedder` that finds faces (a trained model's wraps one)."""
    return getattr(embedder, "embedder", embedder)


class Pipeline:
    """One verifier (and analyzer, when the server has an attribute model) with its request memory.

    A pipeline serves one request at a time (:class:`PipelinePool`), and its verifier and analyzer
    belong to it alone: their embedders' cache is swapped for the pipeline's memory (Embedder takes
    only caching on or off).
    """

    def __init__(self, verifier, analyzer=None):
        self.verifier = verifier
        self.analyzer = analyzer
        self.memory = RequestMemory()
        for embedder in [verifier.embedder] + ([analyzer.embedder] if analyzer is not None else []):
            base = base_embedder(embedder)
            base.close()
            base._cache = self.memory


class PipelinePool:
    """Hands each request a pipeline no other request is using."""

    def __init__(self, pipelines: Sequence[Pipeline]):
        if not pipelines:
            raise ValueError("a server needs at least one pipeline")
        self.first = pipelines[0]
        self.size = len(pipelines)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for pipeline in pipelines:
            self._free.put(pipeline)

    @contextmanager
    def checkout(self) -> Iterator[Pipeline]:
        pipeline = self._free.get()
        try:
            with pipeline.memory.request():
                yield pipeline
        finally:
            self._free.put(pipeline)


def warm_up(embedder) -> None:
    """Load the detector, landmark and backbone models now, not on the first request."""
    from PIL import Image

    base = base_embedder(embedder)
    blank = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(blank, format="PNG")
    base.faces([blank.getvalue()], on_error="skip")
    size = base.spec.input_size
    base.backbone.embed_chips(np.zeros((1, size, size, 3), dtype=np.uint8))


def png_data_url(chip: np.ndarray) -> str:
    """An RGB uint8 array as a ``data:image/png;base64,...`` URL."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chip, dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- distance distributions


@dataclass
class Distribution:
    """Same-person and different-person distances of labelled pairs scored by the served model."""

    same: np.ndarray
    different: np.ndarray
    source: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self, threshold: float, metric: str) -> dict:
        """What the page draws: both densities on one grid of ``CURVE_POINTS`` x values, and the counts."""
        from ..metrics import kde_densities, overlap_area

        densities = kde_densities(self.same, self.different)
        higher = np.maximum(densities.same, densities.diff)
        visible = densities.x[higher > 1e-3 * higher.max()]
        low = min(float(visible[0]), float(min(self.same.min(), self.different.min())))
        high = max(float(visible[-1]), float(max(self.same.max(), self.different.max())))
        x = np.linspace(low, high, CURVE_POINTS)
        return {"available": True, "source": self.source, "notes": self.notes, "distance_metric": metric,
                "threshold": threshold, "n_same": int(self.same.size), "n_diff": int(self.different.size),
                "overlap": overlap_area(self.same, self.different),
                "x": [round(float(v), 5) for v in x],
                "same": [round(float(v), 5) for v in np.interp(x, densities.x, densities.same)],
                "different": [round(float(v), 5) for v in np.interp(x, densities.x, densities.diff)]}


def load_distances(path: os.PathLike, split: Optional[str] = None,
                   threshold: Optional[float] = None) -> Distribution:
    """Labelled distances from a CSV with ``label`` and ``distance`` columns (``split`` optional).

    ``kface verify --pairs FILE --model M --out results.csv`` writes one; rows without a distance (an
    image that failed) are left out, and ``split`` keeps only that split's rows. With ``threshold``,
    a note says when the file was scored at another threshold (another model's scores, likely).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    columns = set(rows[0]) if rows else set()
    if not {"label", "distance"} <= columns:
        raise InputError(f"{path}: needs 'label' and 'distance' columns (as kface verify --pairs --out writes); "
                         f"found {', '.join(sorted(columns)) or 'no rows'}")
    if split is not None:
        if "split" not in columns:
            raise InputError(f"{path}: has no 'split' column to pick --distances-split {split} from")
        rows = [row for row in rows if row["split"] == split]
    rows = [row for row in rows if (row.get("distance") or "").strip()]
    try:
        labels = np.array([int(row["label"]) for row in rows], dtype=np.int64)
        distances = np.array([float(row["distance"]) for row in rows], dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{path}: a label or distance is not a number ({exc})") from None
    same, different = distances[labels == 1], distances[labels == 0]
    problem = _too_few(same, different)
    if problem:
        where = f" in split {split}" if split is not None else ""
        raise InputError(f"{path}: needs at least two distinct distances of each label{where} ({problem})")
    notes = []
    if threshold is not None and "threshold" in columns:
        scored_at = {round(float(row["threshold"]), 6) for row in rows if (row.get("threshold") or "").strip()}
        if scored_at and scored_at != {round(float(threshold), 6)}:
            notes.append(f"these distances were scored at threshold {', '.join(map(str, sorted(scored_at)))}, "
                         f"the server's is {threshold:.6g}: were they made with another model?")
    return Distribution(same, different, f"{path.name}{f' (split {split})' if split else ''}", notes)


def _too_few(same: np.ndarray, different: np.ndarray) -> Optional[str]:
    """Why the densities of ``same`` and ``different`` cannot be estimated, or None when they can."""
    if len(np.unique(same)) < 2 or len(np.unique(different)) < 2:
        return f"found {same.size} same-person and {different.size} different-person pairs"
    return None


#: How the page and /health name the distances a trained model stores.
STORED_SOURCE = "val pairs of the training run"


def stored_distribution(model: Optional[os.PathLike]) -> Optional[Distribution]:
    """The val distances that the model checkpoint ``model`` stores (``kface train`` measured them in the
    epoch it saved), or None: no model (a base backbone), or a checkpoint written before they were stored."""
    if model is None:
        return None
    from ..training.checkpoints import load_checkpoint, stored_val_distances

    stored = stored_val_distances(load_checkpoint(model))
    if stored is None:
        return None
    distances, labels, record = stored
    kept = np.isfinite(distances)  # a diverged epoch can hold NaN distances; the densities need numbers
    same, different = distances[kept & (labels == 1)], distances[kept & (labels == 0)]
    problem = _too_few(same, different)
    if problem:
        log.warning("%s: its stored val distances cannot be drawn (%s)", model, problem)
        return None
    notes = [] if kept.all() else [f"{int((~kept).sum())} val pairs without a finite distance are left out"]
    return Distribution(same, different, f"{STORED_SOURCE} (epoch {record['epoch']}, {record['split']} split)", notes)


# --------------------------------------------------------------------------- the service


class FaceService:
    """The pipelines and what each endpoint does with them (run in worker threads)."""

    def __init__(self, pipelines: Sequence[Pipeline], limits: ServeLimits = ServeLimits(),
                 distribution: Optional[Distribution] = None):
        self.pool = PipelinePool(pipelines)
        self.limits = limits
        first = self.pool.first.verifier
        self.has_analyzer = self.pool.first.analyzer is not None
        if distribution is None:
            distribution = stored_distribution(first.model_path)
        self.distribution = (distribution.to_dict(first.threshold, first.distance.name) if distribution
                             else {"available": False, "source": None,
                                   "note": "this model has no stored distance distributions; start the server with "
                                           "--distances results.csv (from kface verify --pairs FILE --out "
                                           "results.csv with this model) to draw them"})

    def _face(self, embedder, upload: Upload):
        """The upload's face entry (chip, box, stage), kept in the request's memory for what follows."""
        _check_pixels(upload, self.limits.max_pixels)
        with _named_errors(upload):
            entries, _ = base_embedder(embedder).faces([upload.data])
        return entries[0]

    def verify(self, image_a: Upload, image_b: Upload, chips: bool = False) -> dict:
        uploads = (image_a, image_b)
        with self.pool.checkout() as pipeline:
            verifier = pipeline.verifier
            entries = [self._face(verifier.embedder, upload) for upload in uploads]
            answer = verifier.verify(image_a.data, image_b.data).to_dict()
        for face, upload in zip(answer["faces"], uploads):
            face["path"], face["filename"] = upload.field, upload.filename
        if chips:
            answer["chips"] = [png_data_url(entry.chip) for entry in entries]
        return answer

    def analyze(self, image: Upload, all_faces: bool = False, chips: bool = False) -> dict:
        """Needs an analyzer in every pipeline (the endpoint answers 501 without one)."""
        with self.pool.checkout() as pipeline:
            analyzer = pipeline.analyzer
            if all_faces:
                _check_pixels(image, self.limits.max_pixels)
                entry = None
            else:
                entry = self._face(analyzer.embedder, image)
            with _named_errors(image):
                answer = analyzer.analyze(image.data, all_faces=all_faces)
        answer["image"], answer["filename"] = image.field, image.filename
        if chips and entry is not None:
            answer["chips"] = [png_data_url(entry.chip)]
        return answer

    def health(self) -> dict:
        verifier, analyzer = self.pool.first.verifier, self.pool.first.analyzer
        base = base_embedder(verifier.embedder)
        attributes = None
        if analyzer is not None:
            model = analyzer.model
            attributes = {"model": analyzer.model_path, "tasks": model.tasks, "backbone": model.backbone,
                          "age_groups": model.age_labels}
        return {"status": "ok", "backbone": base.spec.name, "model": verifier.model_path,
                "trained": verifier.model_path is not None, "threshold": verifier.threshold,
                "threshold_source": verifier.threshold_source, "distance_metric": verifier.distance.name,
                "detector": base.settings.detector, "fallback": base.settings.fallback, "attributes": attributes,
                "distribution": self.distribution["available"],
                "distribution_source": self.distribution["source"],
                "limits": {**self.limits.to_dict(), "workers": self.pool.size}, "versions": versions()}


def versions() -> dict:
    """kface's version and those of the libraries it serves with (read from metadata, nothing imported)."""
    found = {"kface": __version__, "python": platform.python_version()}
    for package in ("fastapi", "uvicorn", "numpy", "dlib-bin", "torch"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


# --------------------------------------------------------------------------- the app


class FaceAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")
    path: str = Field(description="The form field the image came in (image_a, image_b, image).")
    filename: str = Field(description="The uploaded file's name, as the client sent it.")
    found: bool = Field(description="A detector found the face (False: the whole image was used).")
    stage: str = Field(description="What found it: hog, hog-padded, mtcnn, whole-image.")
    box: Optional[list[int]] = Field(description="The face box in the image: left, top, right, bottom.")
    n_faces: int = Field(description="Faces found in the image (the largest is used).")


class VerifyAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")
    same: bool = Field(description="distance <= threshold")
    distance: float
    threshold: float
    threshold_source: str = Field(description="Where the threshold comes from: its rule and data.")
    backbone: str
    distance_metric: str
    faces: list[FaceAnswer]
    chips: Optional[list[str]] = Field(None, description="With ?chips=true: the aligned faces compared, as "
                                                         "PNG data URLs.")


class AnalyzeAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")
    age_group: Optional[str] = Field(None, description="e.g. 20-29 (None when the model has no age head)")
    age_probs: Optional[dict[str, float]] = None
    expected_age: Optional[float] = None
    gender: Optional[str] = Field(None, description="female or male (None when the model has no gender head)")
    gender_prob: Optional[float] = None
    gender_probs: Optional[dict[str, float]] = None
    box: Optional[list[int]] = None
    stage: Optional[str] = None
    found: Optional[bool] = None


class ErrorAnswer(BaseModel):
    detail: str = Field(description="What was wrong, in one line.")
    field: Optional[str] = Field(None, description="The form field it concerns, when one does.")


ERRORS = {status: {"model": ErrorAnswer, "description": text} for status, text in (
    (400, "A missing, unexpected or repeated form field, or a malformed multipart body."),
    (413, "The request is over the byte limit, or an image over the pixel limit."),
    (415, "The body is not multipart/form-data."),
    (422, "An upload is not an image, is corrupt or empty, or shows no face."),
)}


def _multipart_body(fields: dict[str, str]) -> dict:
    """The OpenAPI request body of a multipart upload (the handlers parse it themselves, in memory)."""
    properties = {name: {"type": "string", "format": "binary", "description": text} for name, text in fields.items()}
    schema = {"type": "object", "required": list(fields), "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def create_app(pipelines: Sequence[Pipeline], limits: ServeLimits = ServeLimits(),
               distribution: Optional[Distribution] = None, gallery: Optional[str] = None) -> FastAPI:
    """The ASGI app serving ``pipelines``: as many requests are worked on at once as there are pipelines.

    Each :class:`Pipeline` holds a :class:`~kface.api.Verifier` and an :class:`~kface.attributes.model.Analyzer`
    (or None: ``/analyze`` then answers 501), all loaded alike (see :func:`load_pipelines`).
    ``distribution``: the labelled distances the page draws (see :func:`load_distances`); without it,
    the val distances a trained model stores (:func:`stored_distribution`), if any.
    """
    import anyio
    from fastapi_offline import FastAPIOffline

    service = FaceService(pipelines, limits, distribution)
    limiter = anyio.CapacityLimiter(service.pool.size)
    app = FastAPIOffline(title="kface", version=__version__,
                         description="Face verification (same person or not) and age group / gender, on this "
                                     "machine. Uploads are processed in memory and never stored.")

    async def in_worker(function, *args):
        return await anyio.to_thread.run_sync(function, *args, limiter=limiter)

    from .gallery import add_gallery_routes

    galleries = add_gallery_routes(app, service, gallery, in_worker)  # /search, /enroll (kface/serve/gallery.py)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(KfaceError)
    async def kface_error(request: Request, exc: KfaceError):
        return ApiError(422 if isinstance(exc, InputError) else 500, str(exc)).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                             for error in exc.errors())
        return ApiError(422, f"bad request parameters: {problems}").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception):
        # The operator's console gets the traceback (it holds no upload); the client one line.
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return ApiError(500, f"internal error ({type(exc).__name__}); the server keeps running").response()

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/health", summary="The served model, its threshold and rule, limits and versions")
    async def health() -> dict:
        return {**service.health(), "gallery": galleries.health() if galleries else None}

    @app.get("/distribution", summary="The model's same/different distance densities, for the page's plot")
    async def distribution_route() -> dict:
        return service.distribution

    @app.post("/verify", summary="Are the faces in image_a and image_b the same person?",
              responses={200: {"model": VerifyAnswer}, **ERRORS},
              openapi_extra=_multipart_body({"image_a": "The first photo.", "image_b": "The second photo."}))
    async def verify(request: Request, chips: bool = False) -> JSONResponse:
        uploads = await read_uploads(request, VERIFY_FIELDS, limits.max_request_bytes)
        answer = await in_worker(service.verify, uploads["image_a"], uploads["image_b"], chips)
        return JSONResponse(answer)

    @app.post("/analyze", summary="Age group and gender of the face in image",
              responses={200: {"model": AnalyzeAnswer}, **ERRORS,
                         501: {"model": ErrorAnswer, "description": "The server has no attribute model."}},
              openapi_extra=_multipart_body({"image": "A photo with one face (the largest is used)."}))
    async def analyze(request: Request, all_faces: bool = False, chips: bool = False) -> JSONResponse:
        if not service.has_analyzer:
            raise ApiError(501, NO_ATTRIBUTES_MESSAGE)
        uploads = await read_uploads(request, ANALYZE_FIELDS, limits.max_request_bytes)
        answer = await in_worker(service.analyze, uploads["image"], all_faces, chips)
        return JSONResponse(answer)

    return app


# --------------------------------------------------------------------------- the command


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one), or a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise KfaceError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def load_pipelines(count: int, model: Optional[str] = None, attributes_model: Optional[str] = None, *,
                   backbone: str = "dlib-resnet", detector: str = "dlib", fallback: str = "none",
                   threshold: Optional[float] = None, device: str = "auto",
                   max_pixels: Optional[int] = None) -> list[Pipeline]:
    """``count`` alike pipelines, their models loaded and warmed up, caching nothing on disk."""
    from ..api import load_verifier

    pipelines = []
    for _ in range(count):
        verifier = load_verifier(model, backbone, detector, threshold, fallback, device, cache=False,
                                 max_pixels=max_pixels)
        analyzer = None
        from ..models.attributes import has_shipped_attributes

        if attributes_model is not None or has_shipped_attributes():  # default: the shipped Korean heads
            from ..attributes.model import load_analyzer

            analyzer = load_analyzer(attributes_model, detector=detector, fallback=fallback, device=device,
                                     cache=False, max_pixels=max_pixels)
        for embedder in [verifier.embedder] + ([analyzer.embedder] if analyzer else []):
            warm_up(embedder)
        pipelines.append(Pipeline(verifier, analyzer))
    return pipelines


def run_server(model: Optional[str] = None, attributes_model: Optional[str] = None, *, host: str = DEFAULT_HOST,
               port: int = DEFAULT_PORT, backbone: str = "dlib-resnet", detector: str = "dlib",
               fallback: str = "none", threshold: Optional[float] = None, device: str = "auto",
               max_pixels: Optional[int] = None, max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
               workers: Optional[int] = None, distances: Optional[str] = None,
               distances_split: Optional[str] = None, quiet: bool = False,
               max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
               gallery: Optional[str] = None) -> None:
    """Load the models once, then serve the page and the API on ``host:port`` until interrupted, behind
    :class:`~kface.serve.guard.RequestGuard` (Host/Origin checks, ``max_in_flight`` requests with a body at
    once, each body within ``body_timeout_s``)."""
    import uvicorn

    limits = ServeLimits(int(max_request_mb * 1024 * 1024), max_pixels or MAX_PIXELS)
    from .gallery import check_gallery

    check_gallery(gallery)  # a bad --gallery fails before any model loads
    sock = listen(host, port)
    pipelines = load_pipelines(workers or DEFAULT_WORKERS, model, attributes_model, backbone=backbone,
                               detector=detector, fallback=fallback, threshold=threshold, device=device,
                               max_pixels=limits.max_pixels)
    verifier = pipelines[0].verifier
    distribution = load_distances(distances, distances_split, verifier.threshold) if distances else None
    for note in distribution.notes if distribution else []:
        log.warning("%s: %s", distances, note)
    if not is_loopback(host):
        print(f"warning: listening on {host}, not on this machine only: anyone who can reach it can upload face "
              f"photos (biometric data) and read the answers; use --host 127.0.0.1 unless you mean it",
              file=sys.stderr)
    app = create_app(pipelines, limits, distribution, gallery)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    guarded = RequestGuard(app, listen_host=host, port=bound_port, max_in_flight=max_in_flight,
                           body_timeout_s=body_timeout_s)
    log.info("at most %d uploads in flight, %s of request bodies at once; bodies must arrive within %g s",
             max_in_flight, _megabytes(memory_bound_bytes(max_in_flight, limits.max_request_bytes)), body_timeout_s)
    print(f"kface serve: http://{shown}:{bound_port}/ ({verifier.embedder.spec.name}, threshold "
          f"{verifier.threshold:.4f}{', age/gender' if pipelines[0].analyzer else ''}, {len(pipelines)} workers); "
          f"API docs at /docs; Ctrl-C stops it", file=sys.stderr, flush=True)
    config = uvicorn.Config(guarded, log_level="warning" if quiet else "info", access_log=not quiet,
                            server_header=False)
    uvicorn.Server(config).run(sockets=[sock])
