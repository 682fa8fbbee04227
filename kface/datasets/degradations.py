"""Seeded "old album photo" degradations, for measuring robustness without Korean data.

Korean family-album sets are tight 128 px face crops of scanned film photos: grey or sepia, low
resolution, blurred and heavily compressed. :func:`tight_crop` and :func:`old_photo` turn LFW's
deep-funneled 250×250 images into that kind of picture, reproducibly from a seed.

:data:`DEGRADATIONS` names the variants ``bench/domain_shift.py`` can build: ``old-album`` (the
above), ``old-album-lowres`` (the same at 24-40 px, a face in a group photo) and
``kface-conditions`` (one of K-Face's kinds of capture condition first, the same for every
identity: harsh side light, sunglasses, a hat's shadow, or none; then the old photo).
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

#: LFW deep-funneled images put the face at about (70..180, 70..180) of the 250×250 frame.
LFW_FACE_BOX = (68, 68, 182, 182)


def tight_crop(image: np.ndarray, box: tuple[int, int, int, int] = LFW_FACE_BOX, size: int = 128) -> np.ndarray:
    """The face region only (left, top, right, bottom), resized to ``size`` px like dataset crops."""
    left, top, right, bottom = box
    return np.asarray(Image.fromarray(image[top:bottom, left:right]).resize((size, size), Image.BILINEAR))


def old_photo(image: np.ndarray, rng: np.random.Generator, sides: tuple[int, int] = (64, 96)) -> np.ndarray:
    """Grey or sepia, downscaled to ``sides`` px (64-96) and back, blurred, JPEG quality 20-40 (all drawn
    from ``rng``)."""
    picture = Image.fromarray(image)
    height, width = image.shape[:2]
    grey = np.asarray(picture.convert("L"), dtype=np.float32)
    if rng.random() < 0.5:
        tinted = np.stack([grey * 1.07, grey * 0.74 + 20, grey * 0.43 + 10], axis=2)  # sepia
    else:
        tinted = np.repeat(grey[:, :, None], 3, axis=2)
    picture = Image.fromarray(np.clip(tinted, 0, 255).astype(np.uint8))
    side = int(rng.integers(sides[0], sides[1] + 1))
    picture = picture.resize((side, side), Image.BILINEAR).resize((width, height), Image.BILINEAR)
    picture = picture.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5))))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=int(rng.integers(20, 41)))
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def old_album_crop(image: np.ndarray, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """The full degradation: the tight face crop of an old photo."""
    return old_photo(tight_crop(image, size=size), rng)


def capture_condition(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of four conditions drawn from ``rng`` for a tight face crop: none, harsh light from one side
    (brightness 0.2 to 1.3 across the face), sunglasses (the eye band at 12 %), or a hat brim's shadow
    over the top 30 %. Like K-Face's lighting and accessory codes, every identity gets each of them."""
    picture = image.astype(np.float32)
    height, width = picture.shape[:2]
    condition = int(rng.integers(0, 4))
    if condition == 1:
        light = np.linspace(0.2, 1.3, width)[None, :, None]
        picture *= light if rng.random() < 0.5 else light[:, ::-1]
    elif condition == 2:
        picture[int(height * 0.33):int(height * 0.52), int(width * 0.1):int(width * 0.9)] *= 0.12
    elif condition == 3:
        picture[:int(height * 0.3)] = picture[:int(height * 0.3)] * 0.1 + 20
    return np.clip(picture, 0, 255).astype(np.uint8)


#: Named degradations of an LFW deep-funneled image, each ``(image, rng) -> 128 px crop``.
DEGRADATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "old-album": old_album_crop,
    "old-album-lowres": lambda image, rng: old_photo(tight_crop(image), rng, sides=(24, 40)),
    "kface-conditions": lambda image, rng: old_photo(capture_condition(tight_crop(image), rng), rng),
}
