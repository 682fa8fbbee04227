"""Running an age editor (ONNX Runtime, no torch): chips to other age classes, and whole photos.

The editor works on small chips (the card's ``size``, 64 px). A larger aligned chip (kface's 150 px) is
edited as a difference: the editor's edit minus its own reconstruction of the chip (the chip decoded at the
class its classifier gives it), enlarged and added to the chip. What the editor changes (the face's shape,
skin, hair) then arrives at full size while the detail it cannot hold at 64 px is kept from the photo.
``detail=False`` returns the enlarged edit instead.

:func:`age_edit` finds the largest face of a photo, edits its aligned chip and pastes it back into the
photo (the chip warped back by the alignment's inverse, blended in with a soft oval mask), or returns the
chip alone. :func:`age_strip` shows one face at every class, side by side.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from ..engines.runtime import OnnxNetwork
from ..errors import InputError
from ..faces.detect import FaceFinder, FaceSettings
from ..faces.images import ImageSource, load_image
from ..models import MODELS_DIR, checked_card
from ..util.outputs import atomic_path
from . import AGE_CLASSES
from .data import shrink

SHIPPED_NAME = "age-editor-korean-v1"
CARD_FILE = MODELS_DIR / f"{SHIPPED_NAME}.json"
#: The aligned chips photos are edited at: every kface model's (dlib's 5-point alignment, padding 0.25).
CHIP_SIZE = 150
CHIP_PADDING = 0.25
#: The pasted chip's oval mask: fully the edit inside this share of the chip's half-side, fading to the
#: photo at :data:`MASK_OUTER` (the chip's border holds background the editor was not trained to keep).
MASK_INNER = 0.62
MASK_OUTER = 0.92
#: The strongest edit asked for: past about 3 the judged age stops moving (docs/age-editing.md).
MAX_STRENGTH = 4.0
#: Other spellings of the classes accepted by --to.
CLASS_ALIASES = {"67-80": "67+", "67": "67+"}


def parse_age_class(text: str | int) -> int:
    """The class index of ``text`` (``"20-30"``, ``"67+"``), or an :class:`InputError` listing the classes."""
    if isinstance(text, (int, np.integer)) and 0 <= int(text) < len(AGE_CLASSES):
        return int(text)
    name = CLASS_ALIASES.get(str(text).strip(), str(text).strip())
    if name not in AGE_CLASSES:
        raise InputError(f"unknown age class {text!r}; choose one of: {', '.join(AGE_CLASSES)}")
    return AGE_CLASSES.index(name)


@cache
def checked_strength(strength: float) -> float:
    """``strength`` (how far an edit is carried), or an :class:`InputError` outside (0, :data:`MAX_STRENGTH`]."""
    if not 0 < strength <= MAX_STRENGTH:
        raise InputError(f"--strength (the edit's strength) is a number in (0, {MAX_STRENGTH:g}], got {strength:g}")
    return strength


def editor_card() -> dict:
    """The shipped editor's card, with its file's sha256 checked."""
    return checked_card(CARD_FILE, "age editor", "--model runs/NAME/editor.onnx (from kface train-age-editor)")


@dataclass
class ChipEdits:
    """Edited chips, and what the editor's classifier makes of the input chips."""

    chips: np.ndarray  # (N, S, S, 3) uint8
    source_probabilities: np.ndarray  # (N, 8) float32

    @property
    def source_classes(self) -> list[str]:
        return [AGE_CLASSES[i] for i in self.source_probabilities.argmax(axis=1)]


class AgeEditorModel:
    """An exported age editor: the shipped one (``path`` None; card and sha256 checked) or a training run's
    ``editor.onnx``."""

    def __init__(self, path: os.PathLike | None = None, device: str = "auto", threads: int | None = None):
        if path is None:
            card = editor_card()
            path = MODELS_DIR / card["file"]
        elif not Path(path).is_file():
            raise InputError(f"{path}: no such editor file")
        self.network = OnnxNetwork(path, device, threads)

    @property
    def size(self) -> int:
        """The side of the chips the network edits."""
        return self.network.chip_size

    def edit_chips(self, chips: np.ndarray, targets: Sequence[int], detail: bool = True,
                   strength: float = 1.0) -> ChipEdits:
        """(N, S, S, 3) uint8 aligned chips edited to ``targets`` (class indices), at their own size S.
        ``strength`` scales the change (the edit minus the reconstruction): above 1 the age moves further and
        less of the person is kept (docs/age-editing.md measures both)."""
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[3] != 3 or chips.shape[1] != chips.shape[2] or chips.dtype != np.uint8:
            raise InputError(f"the editor takes (N, S, S, 3) uint8 RGB chips, got {chips.dtype} {chips.shape}")
        targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        if len(targets) != len(chips) or ((targets < 0) | (targets >= len(AGE_CLASSES))).any():
            raise InputError(f"give one target class (0..{len(AGE_CLASSES) - 1}) per chip")
        checked_strength(strength)
        small = shrink(chips, self.size)
        session = self.network.session
        edited, reconstruction, probabilities = [], [], []
        for start in range(0, len(chips), 64):
            outputs = session.run(None, {"chips": np.ascontiguousarray(small[start:start + 64]),
                                         "target": targets[start:start + 64]})
            edited.append(outputs[0])
            reconstruction.append(outputs[1])
            probabilities.append(outputs[2])
        edited, reconstruction = np.concatenate(edited), np.concatenate(reconstruction)
        probabilities = np.concatenate(probabilities)
        change = strength * (edited - reconstruction)
        side = chips.shape[1]
        if side == self.size:
            out = reconstruction + change
        elif detail:
            out = chips.astype(np.float32) + _enlarge(change, side)
        else:
            out = _enlarge(reconstruction + change, side)
        return ChipEdits(np.clip(np.rint(out), 0, 255).astype(np.uint8), probabilities)


def _enlarge(pixels: np.ndarray, side: int) -> np.ndarray:
    """(N, s, s, 3) float32 -> (N, side, side, 3), bicubic, per channel (PIL's float images are one channel)."""
    from PIL import Image

    out = np.empty((len(pixels), side, side, 3), dtype=np.float32)
    for i, chip in enumerate(pixels):
        for channel in range(3):
            plane = Image.fromarray(np.ascontiguousarray(chip[:, :, channel], dtype=np.float32), mode="F")
            out[i, :, :, channel] = np.asarray(plane.resize((side, side), Image.BICUBIC))
    return out


# --------------------------------------------------------------------------- photos


def chip_to_image(landmarks: np.ndarray, box: tuple, size: int = CHIP_SIZE,
                  padding: float = CHIP_PADDING) -> np.ndarray:
    """The 2 x 3 affine map from a chip's continuous pixel coordinates to the photo's, for the chip
    ``dlib.get_face_chip`` cuts from these landmarks (checked to match its pixels in tests/test_age_editor.py)."""
    import dlib

    points = dlib.points([dlib.point(x, y) for x, y in np.rint(landmarks).astype(int).tolist()])
    details = dlib.get_face_chip_details(dlib.full_object_detection(dlib.rectangle(*[int(v) for v in box]), points),
                                         size, padding)
    rect = details.rect
    scale = (rect.right() - rect.left()) / (size - 1)
    cos, sin = math.cos(details.angle) * scale, math.sin(details.angle) * scale
    centre_x, centre_y = (rect.left() + rect.right()) / 2 - 0.5, (rect.top() + rect.bottom()) / 2 - 0.5
    half = (size - 1) / 2
    return np.array([[cos, -sin, centre_x - cos * half + sin * half],
                     [sin, cos, centre_y - sin * half - cos * half]], dtype=np.float64)


def _oval_mask(size: int) -> np.ndarray:
    centre = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size]
    radius = np.hypot(x - centre, y - centre) / centre
    return np.clip((MASK_OUTER - radius) / (MASK_OUTER - MASK_INNER), 0, 1).astype(np.float32)


def paste_chip(image: np.ndarray, chip: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """``image`` with ``chip`` warped back by ``transform`` (:func:`chip_to_image`) and blended in."""
    from PIL import Image

    inverse = np.linalg.inv(np.vstack([transform, [0, 0, 1]]))[:2].ravel()
    height, width = image.shape[:2]
    warped = np.asarray(Image.fromarray(chip).transform((width, height), Image.AFFINE, tuple(inverse), Image.BICUBIC))
    mask = Image.fromarray(_oval_mask(chip.shape[0]), mode="F")
    alpha = np.asarray(mask.transform((width, height), Image.AFFINE, tuple(inverse), Image.BILINEAR))[:, :, None]
    blended = image.astype(np.float32) * (1 - alpha) + warped.astype(np.float32) * alpha
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


@dataclass
class AgeEdit:
    """One photo's face edited to ``target``: the photo with the face pasted back (``image``), the edited
    aligned chip, the original chip, and the class the editor judged the input to be."""

    image: np.ndarray
    chip: np.ndarray
    original_chip: np.ndarray
    source: str
    target: str
    stage: str  # which detector found the face


def _find_face(source: ImageSource, detector: str, device: str):
    image = load_image(source)
    name = str(source) if not isinstance(source, bytes) else "<image>"
    face = FaceFinder(FaceSettings(detector=detector, chip_size=CHIP_SIZE, chip_padding=CHIP_PADDING),
                      device).find(image, name)
    return image, face


def age_edit(image: ImageSource, to: str | int, *, model: os.PathLike | None = None, paste: bool = True,
             detail: bool = True, detector: str = "auto", device: str = "auto",
             editor: AgeEditorModel | None = None, strength: float = 1.0) -> AgeEdit:
    """The largest face of ``image`` (a path or encoded bytes) shown at age class ``to`` (``"20-30"``).

    ``paste``: also paste the edited chip back into the photo (``AgeEdit.image``; otherwise that is the
    photo unchanged). ``model``: a training run's ``editor.onnx`` instead of the shipped editor. No face
    found is a :class:`~kface.errors.NoFaceError`. ``editor``: one already loaded (many photos in a row).
    ``strength``: how far the edit is carried (:meth:`AgeEditorModel.edit_chips`).
    """
    target = parse_age_class(to)
    editor = editor or AgeEditorModel(model, device)
    picture, face = _find_face(image, detector, device)
    edits = editor.edit_chips(face.chip[None], [target], detail, strength)
    edited = edits.chips[0]
    result = paste_chip(picture, edited, chip_to_image(face.landmarks, face.box)) if paste else picture
    return AgeEdit(result, edited, face.chip, edits.source_classes[0], AGE_CLASSES[target], face.stage)


def all_ages(image: ImageSource, *, model: os.PathLike | None = None, detail: bool = True,
             detector: str = "auto", device: str = "auto", editor: AgeEditorModel | None = None,
             strength: float = 1.0) -> tuple[np.ndarray, np.ndarray, str]:
    """The largest face's aligned chip, the face at each of the 8 classes (8 chips), and the class the editor
    judged the input to be. ``editor``: one already loaded (else ``model`` or the shipped one is loaded)."""
    editor = editor or AgeEditorModel(model, device)
    _, face = _find_face(image, detector, device)
    classes = np.arange(len(AGE_CLASSES))
    edits = editor.edit_chips(np.repeat(face.chip[None], len(classes), axis=0), classes, detail, strength)
    return face.chip, edits.chips, edits.source_classes[0]


def age_strip(image: ImageSource, *, model: os.PathLike | None = None, detail: bool = True,
              detector: str = "auto", device: str = "auto", strength: float = 1.0) -> tuple[np.ndarray, str]:
    """One labelled strip: the largest face's aligned chip, then the face at each of the 8 classes; and the
    class the editor judged the input to be."""
    chip, edits, source = all_ages(image, model=model, detail=detail, detector=detector, device=device,
                                   strength=strength)
    return label_strip([chip, *edits], ["input", *AGE_CLASSES]), source


def label_strip(chips: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
    """Chips side by side, each with its label in a band beneath."""
    from PIL import Image, ImageDraw

    side = chips[0].shape[0]
    band = 18
    canvas = Image.new("RGB", (side * len(chips), side + band), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (chip, label) in enumerate(zip(chips, labels)):
        canvas.paste(Image.fromarray(chip), (i * side, 0))
        draw.text((i * side + 4, side + 3), label, fill="black")
    return np.asarray(canvas)


def write_png(path: os.PathLike, pixels: np.ndarray) -> None:
    """Write RGB pixels as a PNG, atomically."""
    from PIL import Image

    with atomic_path(path, suffix=".png") as temp:
        Image.fromarray(pixels).save(temp, format="PNG")
