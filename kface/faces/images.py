"""Stage 1: image files to RGB arrays.

Loads JPEG, PNG, WebP and BMP (anything Pillow reads), applies the EXIF orientation, converts every mode
(RGBA, LA, P, 16-bit, grayscale, CMYK) to 8-bit RGB, and refuses images over a pixel limit before
decoding them, so a decompression bomb cannot exhaust memory. Each failure is one :class:`InputError`
naming the file.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import InputError

#: Default pixel limit (width x height): 40 megapixels covers any camera photo, stops bombs.
MAX_PIXELS = 40_000_000

ImageSource = Union[str, os.PathLike, bytes]


def read_bytes(source: ImageSource) -> bytes:
    """Return the raw bytes of an image file (or the bytes themselves), with clear errors."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not data:
        raise InputError(f"{path}: empty file")
    return data


def content_hash(data: bytes) -> str:
    """A stable key for an image's content (sha256, hex)."""
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, name: str = "<image>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an RGB ``uint8`` array of shape (H, W, 3), EXIF orientation applied."""
    if not data:
        raise InputError(f"{name}: empty file")
    # Lazy: a call whose faces are all cached decodes nothing, and skips Pillow's import.
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check is a warning below 2x its limit; ours is an error at max_pixels.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise InputError(
                    f"{name}: image is {width}x{height} = {width * height:,} pixels, over the limit of "
                    f"{max_pixels:,} (raise it with --max-pixels)")
            image.load()
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError:
        raise InputError(f"{name}: image is over Pillow's decompression-bomb limit") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name}: corrupt or truncated image ({exc})") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block must not cost the image; orientation stays as stored
        pass
    return to_rgb_array(image)


def to_rgb_array(image) -> np.ndarray:
    """Convert any Pillow image (any mode) to an 8-bit RGB array."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grayscale: rescale the value range to 8 bits instead of clipping it.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparency onto white: a transparent background then reads as plain paper.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def load_image(source: ImageSource, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Load an image file (path or bytes) as an RGB ``uint8`` array of shape (H, W, 3)."""
    return decode_image(read_bytes(source), source_name(source), max_pixels)


def source_name(source: ImageSource, index: int = 0, count: int = 1) -> str:
    """The name an input goes by in results and errors: its path, or ``<upload>`` (``<upload 2>``... among
    several) for bytes."""
    if isinstance(source, (bytes, bytearray)):
        return "<upload>" if count == 1 else f"<upload {index + 1}>"
    return str(source)

