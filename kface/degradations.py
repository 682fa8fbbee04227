"""Seeded "old album photo" degradations, for measuring robustness without Korean data.

Korean family-album sets are tight 128 px face crops of scanned film photos: grey or sepia, low
resolution, blurred and heavily compressed. :func:`tight_crop` and :func:`old_photo` turn LFW's
deep-funneled 250×250 images into that kind of picture, reproducibly from a seed.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

#: LFW deep-funneled images put the face at about (70..180, 70..180) of the 250×250 frame.
LFW_FACE_BOX = (68, 68, 182, 182)


def tight_crop(image: np.ndarray, box: tuple[int, int, int, int] = LFW_FACE_BOX, size: int = 128) -> np.ndarray:
    """The face region only (left, top, right, bottom), resized to ``size`` px like dataset crops."""
    left, top, right, bottom = box
    return np.asarray(Image.fromarray(image[top:bottom, left:right]).resize((size, size), Image.BILINEAR))


def old_photo(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey or sepia, downscaled to 64-96 px and back, blurred, JPEG quality 20-40 (all drawn from ``rng``)."""
    picture = Image.fromarray(image)
    height, width = image.shape[:2]
    grey = np.asarray(picture.convert("L"), dtype=np.float32)
    if rng.random() < 0.5:
        tinted = np.stack([grey * 1.07, grey * 0.74 + 20, grey * 0.43 + 10], axis=2)  # sepia
    else:
        tinted = np.repeat(grey[:, :, None], 3, axis=2)
    picture = Image.fromarray(np.clip(tinted, 0, 255).astype(np.uint8))
    side = int(rng.integers(64, 97))
    picture = picture.resize((side, side), Image.BILINEAR).resize((width, height), Image.BILINEAR)
    picture = picture.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5))))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=int(rng.integers(20, 41)))
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def old_album_crop(image: np.ndarray, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """The full degradation: the tight face crop of an old photo."""
    return old_photo(tight_crop(image, size=size), rng)
