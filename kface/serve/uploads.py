"""Multipart uploads read in memory, their pixel limit, and the JSON errors a refused request gets."""
from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..errors import InputError, NoFaceError
from ..faces.images import source_name


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


def megabytes(count: int) -> str:
    return f"{count / (1024 * 1024):.1f} MB"


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
    too_large = (f"the request is over the limit of {megabytes(max_bytes)} (the server's --max-upload-mb); "
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


def check_pixels(upload: Upload, max_pixels: int) -> None:
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
def named_errors(upload: Upload) -> Iterator[None]:
    """The pipeline's errors about an upload as 422 :class:`ApiError` naming its field and file."""
    try:
        yield
    except NoFaceError:
        raise ApiError(422, f"{upload.label}: no face found; use a photo in which one face is clearly visible",
                       field=upload.field) from None
    except InputError as exc:
        message = str(exc)
        # The names the pipeline gives bytes (one upload, or each of a pair).
        for name in (source_name(upload.data), *(source_name(upload.data, index, 2) for index in range(2))):
            if message.startswith(name):
                message = upload.label + message[len(name):]
                break
        raise ApiError(422, message, field=upload.field) from None


class ErrorAnswer(BaseModel):
    detail: str = Field(description="What was wrong, in one line.")
    field: Optional[str] = Field(None, description="The form field it concerns, when one does.")


ERRORS = {status: {"model": ErrorAnswer, "description": text} for status, text in (
    (400, "A missing, unexpected or repeated form field, or a malformed multipart body."),
    (413, "The request is over the byte limit, or an image over the pixel limit."),
    (415, "The body is not multipart/form-data."),
    (422, "An upload is not an image, is corrupt or empty, or shows no face."),
)}


def multipart_body(fields: dict[str, str]) -> dict:
    """The OpenAPI request body of a multipart upload (the handlers parse it themselves, in memory)."""
    properties = {name: {"type": "string", "format": "binary", "description": text} for name, text in fields.items()}
    schema = {"type": "object", "required": list(fields), "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}

