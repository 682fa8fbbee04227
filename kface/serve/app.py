"""`kface serve`: the local web page and JSON API (verify, analyze, search, enroll) and the command that runs it."""
from __future__ import annotations

# One process loads the verifier (and an attribute model, when there is one) once, then answers:
# GET / (the page in kface/serve/web/), POST /verify (image_a, image_b; ?chips=true adds the aligned chips),
# POST /analyze (image), /search, /enroll and /gallery (kface/serve/gallery.py), GET /health, GET /distribution
# and the OpenAPI schema at /docs (served offline).
#
# Face photos are biometric data, so uploads are parsed from the request body in memory (never spooled to a
# temporary file, kface/serve/uploads.py), the on-disk cache is replaced by a per-request store dropped when the
# request ends (kface.util.cache.RequestMemory), nothing about an upload is logged, and the server listens on
# 127.0.0.1 unless told otherwise. The blocking work runs in worker threads, each with its own Pipeline
# (dlib's face detector must not be called from two threads at once: it crashes or returns other images' faces).
import ipaddress
import logging
import socket
import sys
from pathlib import Path
from typing import Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..backbones import DEFAULT_BACKBONE
from ..errors import InputError, KfaceError
from ..faces.images import MAX_PIXELS
from .auth import DEFAULT_RATE_PER_MINUTE, MAKE_TOKEN, TOKEN_VARIABLE, TokenGuard, TokenSet
from .distribution import Distribution, load_distances
from .guard import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_IN_FLIGHT, RequestGuard, memory_bound_bytes
from .pipelines import DEFAULT_MAX_REQUEST_MB, DEFAULT_WORKERS, FaceService, Pipeline, ServeLimits, load_pipelines
from .uploads import ERRORS, ApiError, ErrorAnswer, megabytes, multipart_body, read_uploads

__all__ = ["Pipeline", "ServeLimits", "create_app", "is_loopback", "listen", "load_distances", "load_pipelines",
           "run_server"]

log = logging.getLogger("kface")

WEB_DIR = Path(__file__).parent / "web"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
VERIFY_FIELDS = ("image_a", "image_b")
ANALYZE_FIELDS = ("image",)
NO_ATTRIBUTES_MESSAGE = ("this server has no attribute model (the shipped one is not installed): start it with "
                         "--attributes-model FILE (a model from kface train-attributes) to read age group and gender")



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


def _add_error_handlers(app: FastAPI) -> None:
    """Every refused or failed request answers one JSON line, ``{"detail": ...}``, with its status."""

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


def _add_face_routes(app: FastAPI, service: FaceService, in_worker) -> None:
    """``POST /verify`` and ``POST /analyze``."""
    limits = service.limits

    @app.post("/verify", summary="Are the faces in image_a and image_b the same person?",
              responses={200: {"model": VerifyAnswer}, **ERRORS},
              openapi_extra=multipart_body({"image_a": "The first photo.", "image_b": "The second photo."}))
    async def verify(request: Request, chips: bool = False) -> JSONResponse:
        uploads = await read_uploads(request, VERIFY_FIELDS, limits.max_request_bytes)
        answer = await in_worker(service.verify, uploads["image_a"], uploads["image_b"], chips)
        return JSONResponse(answer)

    @app.post("/analyze", summary="Age group and gender of the face in image",
              responses={200: {"model": AnalyzeAnswer}, **ERRORS,
                         501: {"model": ErrorAnswer, "description": "The server has no attribute model."}},
              openapi_extra=multipart_body({"image": "A photo with one face (the largest is used)."}))
    async def analyze(request: Request, all_faces: bool = False, chips: bool = False) -> JSONResponse:
        if not service.has_analyzer:
            raise ApiError(501, NO_ATTRIBUTES_MESSAGE)
        uploads = await read_uploads(request, ANALYZE_FIELDS, limits.max_request_bytes)
        answer = await in_worker(service.analyze, uploads["image"], all_faces, chips)
        return JSONResponse(answer)


def create_app(pipelines: Sequence[Pipeline], limits: ServeLimits = ServeLimits(),
               distribution: Optional[Distribution] = None, gallery: Optional[str] = None) -> FastAPI:
    """The ASGI app serving ``pipelines``: as many requests are worked on at once as there are pipelines.

    Each :class:`Pipeline` holds a :class:`~kface.api.Verifier` and an :class:`~kface.attributes.model.Analyzer`
    (or None: ``/analyze`` then answers 501), all loaded alike (see :func:`load_pipelines`).
    ``distribution``: the labelled distances the page draws (see :func:`load_distances`); without it,
    the val distances a trained model stores (:func:`~kface.serve.distribution.stored_distribution`), if any.
    """
    import anyio
    from fastapi_offline import FastAPIOffline

    from .ageedit import add_age_edit_routes
    from .gallery import add_gallery_routes

    service = FaceService(pipelines, limits, distribution)
    limiter = anyio.CapacityLimiter(service.pool.size)
    app = FastAPIOffline(title="kface", version=__version__,
                         description="Face verification (same person or not) and age group / gender, on this "
                                     "machine. Uploads are processed in memory and never stored.")

    async def in_worker(function, *args):
        return await anyio.to_thread.run_sync(function, *args, limiter=limiter)

    galleries = add_gallery_routes(app, service, gallery, in_worker)  # /search, /enroll (kface/serve/gallery.py)
    _add_error_handlers(app)

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

    _add_face_routes(app, service, in_worker)
    add_age_edit_routes(app, limits, in_worker)  # /age-edit (kface/serve/ageedit.py)
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



def run_server(model: Optional[str] = None, attributes_model: Optional[str] = None, *, host: str = DEFAULT_HOST,
               port: int = DEFAULT_PORT, backbone: str = DEFAULT_BACKBONE, detector: str = "dlib",
               fallback: str = "none", threshold: Optional[float] = None, device: str = "auto",
               max_pixels: Optional[int] = None, max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
               workers: Optional[int] = None, distances: Optional[str] = None,
               distances_split: Optional[str] = None, quiet: bool = False,
               max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
               gallery: Optional[str] = None, tokens: Optional[TokenSet] = None, no_token: bool = False,
               rate_per_minute: Optional[int] = None, answer: Optional[dict] = None) -> None:
    """Load the models once, then serve the page and the API on ``host:port`` until interrupted, behind
    :class:`~kface.serve.guard.RequestGuard` (Host/Origin checks, ``max_in_flight`` requests with a body at
    once, each body within ``body_timeout_s``) and :class:`~kface.serve.auth.TokenGuard` (``tokens``, the
    per-client rate limit: ``rate_per_minute``, by default :data:`~kface.serve.auth.DEFAULT_RATE_PER_MINUTE`
    beyond loopback and none on it). Listening beyond loopback needs a token, unless ``no_token``."""
    import uvicorn

    tokens = tokens or TokenSet()
    if not is_loopback(host) and not tokens and not no_token:
        raise InputError(f"--host {host} lets other machines reach the server: give it a token (--token-file FILE "
                         f"or {TOKEN_VARIABLE}; make one with {MAKE_TOKEN}), or --no-token to serve without one")
    if rate_per_minute is None:
        rate_per_minute = 0 if is_loopback(host) else DEFAULT_RATE_PER_MINUTE
    limits = ServeLimits(int(max_request_mb * 1024 * 1024), max_pixels or MAX_PIXELS)
    from .gallery import check_gallery

    check_gallery(gallery)  # a bad --gallery fails before any model loads
    sock = listen(host, port)
    pipelines = load_pipelines(workers or DEFAULT_WORKERS, model, attributes_model, backbone=backbone,
                               detector=detector, fallback=fallback, threshold=threshold, device=device,
                               max_pixels=limits.max_pixels, answer=answer)
    verifier = pipelines[0].verifier
    distribution = load_distances(distances, distances_split, verifier.threshold) if distances else None
    for note in distribution.notes if distribution else []:
        log.warning("%s: %s", distances, note)
    if not is_loopback(host) and not tokens:
        print(f"warning: listening on {host}, not on this machine only, without a token: anyone who can reach it "
              f"can upload face photos (biometric data), read the answers and enroll into the gallery; use "
              f"--token-file FILE or --host 127.0.0.1 unless you mean it", file=sys.stderr)
    app = create_app(pipelines, limits, distribution, gallery)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    guarded = RequestGuard(TokenGuard(app, tokens, rate_per_minute), listen_host=host, port=bound_port,
                           max_in_flight=max_in_flight,
                           body_timeout_s=body_timeout_s)
    log.info("at most %d uploads in flight, %s of request bodies at once; bodies must arrive within %g s",
             max_in_flight, megabytes(memory_bound_bytes(max_in_flight, limits.max_request_bytes)), body_timeout_s)
    print(f"kface serve: http://{shown}:{bound_port}/ ({verifier.embedder.spec.name}, threshold "
          f"{verifier.threshold:.4f}{', age/gender' if pipelines[0].analyzer else ''}, {len(pipelines)} workers); "
          f"API docs at /docs; Ctrl-C stops it", file=sys.stderr, flush=True)
    config = uvicorn.Config(guarded, log_level="warning" if quiet else "info", access_log=not quiet,
                            server_header=False)
    uvicorn.Server(config).run(sockets=[sock])
