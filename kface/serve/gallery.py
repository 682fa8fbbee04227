"""kface serve's gallery endpoints: ``POST /search`` (who in the gallery is this?) and ``POST /enroll``.

Uploaded photos are embedded in memory by the server's pipelines like every other request and never
stored; only ``/enroll`` writes to the gallery, and only the embedding, its content hash and the file
name. The gallery must hold embeddings of the served model (checked when the server starts). One
:class:`~kface.galleries.Gallery` (one SQLite connection, the index in memory) is shared by the worker
threads behind a lock; a search is a fraction of a millisecond next to the face detection before it.
"""
from __future__ import annotations

import threading
from typing import Optional

from fastapi import Request  # module level: FastAPI reads the handlers' annotations from these globals
from fastapi.responses import JSONResponse

from ..faces.images import content_hash, source_name
from ..galleries import Gallery
from ..galleries.audit import Actor
from ..galleries.gallery import model_identity
from ..galleries.store import GalleryStore, NewImage
from .auth import request_token_id
from .uploads import ERRORS, ApiError, ErrorAnswer, check_pixels, multipart_body, named_errors, read_uploads

SEARCH_FIELDS = ("image",)
ENROLL_FIELDS = ("image", "identity")
MAX_TOP = 50


class GalleryService:
    """The gallery a server searches and enrolls into, beside its :class:`~kface.serve.pipelines.FaceService`."""

    def __init__(self, service, path: str):
        self.service = service
        served = service.pool.first.verifier
        self.gallery = Gallery.open(path)
        self.gallery._check_model(model_identity(served))  # the served model must be the gallery's
        self.lock = threading.Lock()

    def _embed(self, upload):
        check_pixels(upload, self.service.limits.max_pixels)
        with self.service.pool.checkout() as pipeline:
            with named_errors(upload):
                vectors, result = pipeline.verifier.embed([upload.data])
        face = {"path": upload.field, "filename": upload.filename,
                **result.face(0, path=upload.field)}
        return vectors, result, face

    def search(self, upload, top: int = 5) -> dict:
        if not 1 <= top <= MAX_TOP:
            raise ApiError(422, f"top must be between 1 and {MAX_TOP}, got {top}")
        vectors, _, face = self._embed(upload)
        with self.lock:
            answer = self.gallery.search_vectors(vectors, top)[0]
        answer.face = face
        return answer.to_dict()

    def enroll(self, upload, identity_field, actor=None) -> dict:
        """Enroll the face in ``upload`` under the name in ``identity_field``; ``actor`` (a
        :class:`~kface.galleries.audit.Actor`) is who the gallery's audit log names."""
        try:
            identity = identity_field.data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ApiError(422, "identity must be UTF-8 text", field="identity") from None
        if not identity or len(identity) > 200:
            raise ApiError(422, "identity must be a name of 1 to 200 characters", field="identity")
        vectors, result, face = self._embed(upload)
        image = NewImage(identity, content_hash(upload.data), upload.filename or source_name(upload.data),
                         result.stages[0], vectors[0])
        with self.lock:
            stored = self.gallery.add_images([image], actor)
            people, images = self.gallery.store.counts()
        if stored.conflicts:
            owner = stored.conflicts[image.sha256]
            raise ApiError(409, f"{upload.label}: this photo is already enrolled as {owner!r}", field="image")
        return {"identity": identity, "enrolled": stored.added, "already": stored.already, "face": face,
                "gallery": {"identities": people, "images": images}}

    def health(self) -> dict:
        with self.lock:
            people, images = self.gallery.store.counts()
        meta = self.gallery.store.meta()
        return {"path": str(self.gallery.path), "identities": people, "images": images,
                "model": self.gallery.model.name, "open_set_threshold": float(meta["open_set_threshold"]),
                "open_set_source": meta["open_set_source"]}


def add_gallery_routes(app, service, gallery_path: Optional[str], in_worker) -> Optional[GalleryService]:
    """Mount ``/search`` and ``/enroll`` on ``app`` when the server has a gallery (else they answer 501)."""
    galleries = GalleryService(service, gallery_path) if gallery_path else None
    missing = {501: {"model": ErrorAnswer, "description": "The server has no gallery (start it with --gallery)."}}
    no_gallery = "this server has no gallery: start it with --gallery FILE (made by kface enroll)"

    @app.post("/search", summary="Who in the gallery is the face in image? Ranked identities and the open-set answer",
              responses={**ERRORS, **missing},
              openapi_extra=multipart_body({"image": "A photo with one face (the largest is used)."}))
    async def search(request: Request, top: int = 5) -> JSONResponse:
        if galleries is None:
            raise ApiError(501, no_gallery)
        uploads = await read_uploads(request, SEARCH_FIELDS, service.limits.max_request_bytes)
        return JSONResponse(await in_worker(galleries.search, uploads["image"], top))

    @app.post("/enroll", summary="Enroll the face in image under identity (only its embedding is stored)",
              responses={**ERRORS, **missing, 409: {"model": ErrorAnswer,
                                                    "description": "The photo is enrolled as someone else."}},
              openapi_extra=multipart_body({"image": "A photo of the person.", "identity": "Their name (text)."}))
    async def enroll(request: Request) -> JSONResponse:
        if galleries is None:
            raise ApiError(501, no_gallery)
        uploads = await read_uploads(request, ENROLL_FIELDS, service.limits.max_request_bytes)
        return JSONResponse(await in_worker(galleries.enroll, uploads["image"], uploads["identity"],
                                            request_actor(request)))

    @app.get("/gallery", summary="The served gallery: people, images, model and open-set threshold")
    async def gallery_info() -> dict:
        if galleries is None:
            raise ApiError(501, no_gallery)
        return galleries.health()

    return galleries


def request_actor(request: Request) -> Actor:
    """Who the audit log names for a request: its client address and the id of the token it showed."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
    return Actor(client, token_id=request_token_id(request.scope))


def check_gallery(path: Optional[str]) -> None:
    """Fail before any model loads when ``--gallery`` is not a gallery file."""
    if path:
        GalleryStore.open(path).close()
