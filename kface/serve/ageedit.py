"""The page's age-editing section: ``POST /age-edit``, one photo in, its face at each of the 8 age classes out."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..ageedit import AGE_CLASSES
from ..ageedit.editor import CARD_FILE, AgeEditorModel, all_ages
from .pipelines import ServeLimits, png_data_url
from .uploads import (
    ERRORS,
    ApiError,
    ErrorAnswer,
    Upload,
    check_pixels,
    multipart_body,
    named_errors,
    read_uploads,
)

AGE_EDIT_FIELDS = ("image",)
NO_EDITOR_MESSAGE = "this server has no age editor (the shipped one is not installed); reinstall kface"


class AgeEditService:
    """The shipped editor, loaded on the first request; each request finds its face with its own detector."""

    def __init__(self, limits: ServeLimits, device: str = "auto"):
        self.limits = limits
        self.device = device
        self.available = CARD_FILE.is_file()
        self._editor = None

    def edit(self, image: Upload) -> dict:
        check_pixels(image, self.limits.max_pixels)
        if self._editor is None:
            self._editor = AgeEditorModel(device=self.device)
        with named_errors(image):
            chip, edits, source = all_ages(image.data, editor=self._editor, device=self.device)
        return {"image": image.field, "filename": image.filename, "source_class": source, "input": png_data_url(chip),
                "edits": [{"class": name, "chip": png_data_url(edit)} for name, edit in zip(AGE_CLASSES, edits)]}


def add_age_edit_routes(app: FastAPI, limits: ServeLimits, in_worker, device: str = "auto") -> None:
    """``POST /age-edit`` (501 where no editor is installed)."""
    service = AgeEditService(limits, device)

    @app.post("/age-edit", summary="The face in image at each of the 8 Korean age classes (aligned chips, PNG)",
              responses={**ERRORS, 501: {"model": ErrorAnswer, "description": "No age editor is installed."}},
              openapi_extra=multipart_body({"image": "A photo with one face (the largest is used)."}))
    async def age_edit(request: Request) -> JSONResponse:
        if not service.available:
            raise ApiError(501, NO_EDITOR_MESSAGE)
        uploads = await read_uploads(request, AGE_EDIT_FIELDS, limits.max_request_bytes)
        return JSONResponse(await in_worker(service.edit, uploads["image"]))
