"""Stage 2: faces in an image — detect, find 5-point landmarks, cut the aligned chip.

Detectors (``--detector``):

- ``dlib``: dlib's HOG detector (``upsample`` times upsampled); on a miss the image is padded and
  searched again, which recovers tight dataset crops whose face touches the border.
- ``mtcnn``: facenet-pytorch's MTCNN (weights ship inside its wheel).
- ``auto``: ``dlib``, then MTCNN on the images HOG missed.
- ``none``: the whole image is the face (pre-cropped datasets).

Whatever found the box, dlib's 5-point landmark model places the landmarks and ``dlib.get_face_chip``
cuts the aligned chip, so every detector feeds the backbone the same kind of chip. With
``fallback="whole-image"`` an image where nothing was found is treated as a face (``found`` is then
False); with ``fallback="none"`` it is a :class:`NoFaceError`. Each :class:`Face` records the ``stage``
that found it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .errors import InputError, NoFaceError
from .models_path import DLIB_LANDMARKS_5, model_file

DETECTORS = ("dlib", "mtcnn", "auto", "none")
FALLBACKS = ("none", "whole-image")
#: Each side is padded by this share of the image's longer side before the second HOG pass.
PAD_FRACTION = 0.35
#: HOG runs on a copy downscaled to this longer side (a 2,300 px portrait takes 1.6 s at full size);
#: landmarks and the chip still come from the full-resolution image.
DETECT_MAX_SIDE = 800

Box = tuple[int, int, int, int]  # left, top, right, bottom in image pixels


@dataclass
class Face:
    """One face: its box, its 5 landmarks, the aligned chip, and which stage found it."""

    box: Box
    landmarks: np.ndarray  # (5, 2) float32, dlib's 5-point order, image coordinates
    chip: np.ndarray  # (S, S, 3) uint8 RGB aligned chip
    stage: str  # "hog", "hog-padded", "mtcnn", "label", "whole-image"
    n_faces: int = 1  # faces the detector saw in the image

    @property
    def found(self) -> bool:
        """True when a detector (or a label file) located the face, False for the whole-image fallback."""
        return self.stage != "whole-image"


@dataclass(frozen=True)
class FaceSettings:
    """Everything that decides which chip comes out of an image (part of every cache key)."""

    detector: str = "dlib"
    upsample: int = 1
    fallback: str = "none"
    chip_size: int = 150
    chip_padding: float = 0.25

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise InputError(f"unknown detector {self.detector!r}; choose one of: {', '.join(DETECTORS)}")
        if self.fallback not in FALLBACKS:
            raise InputError(f"unknown fallback {self.fallback!r}; choose one of: {', '.join(FALLBACKS)}")
        if not 0 <= self.upsample <= 3:
            raise InputError(f"upsample must be 0..3, got {self.upsample}")

    def key(self) -> str:
        """What decides the detected face; the fallback is not part of it (it only acts on a miss)."""
        return f"det={self.detector};up={self.upsample};chip={self.chip_size};pad={self.chip_padding}"


def _largest(boxes: Sequence[Box]) -> int:
    return int(np.argmax([(r - l) * (b - t) for l, t, r, b in boxes]))


class FaceFinder:
    """Finds the largest face of an image and cuts its aligned chip, per :class:`FaceSettings`.

    dlib's models load on first use; MTCNN loads only when it is asked for (``mtcnn``) or when HOG
    misses (``auto``), so the default path never imports torch.
    """

    def __init__(self, settings: FaceSettings = FaceSettings(), device: str = "auto"):
        self.settings = settings
        self.device = device
        self._hog = None
        self._landmarks = None
        self._mtcnn = None

    # -- models, loaded lazily -------------------------------------------------------------------
    def _dlib(self):
        if self._hog is None:
            import dlib

            self._hog = dlib.get_frontal_face_detector()
        return self._hog

    def _landmark_model(self):
        if self._landmarks is None:
            import dlib

            self._landmarks = dlib.shape_predictor(str(model_file(DLIB_LANDMARKS_5)))
        return self._landmarks

    def _mtcnn_model(self):
        if self._mtcnn is None:
            from facenet_pytorch import MTCNN

            from .devices import resolve_device

            self._mtcnn = MTCNN(keep_all=True, device=resolve_device(self.device), post_process=False)
        return self._mtcnn

    # -- detectors: image -> list of boxes -------------------------------------------------------
    def _hog_boxes(self, image: np.ndarray) -> list[Box]:
        detector = self._dlib()
        scale = min(1.0, DETECT_MAX_SIDE / max(image.shape[:2]))
        if scale < 1.0:
            from PIL import Image

            height, width = image.shape[:2]
            small = Image.fromarray(image).resize((round(width * scale), round(height * scale)), Image.BILINEAR)
            image = np.asarray(small)
        rects = detector(image, self.settings.upsample)
        return [tuple(int(round(v / scale)) for v in (r.left(), r.top(), r.right(), r.bottom())) for r in rects]

    def _mtcnn_boxes(self, image: np.ndarray) -> list[Box]:
        boxes, _ = self._mtcnn_model().detect(image)
        if boxes is None:
            return []
        return [tuple(int(round(v)) for v in box) for box in boxes]

    # -- public ----------------------------------------------------------------------------------
    def find(self, image: np.ndarray, name: str = "<image>", box: Optional[Box] = None) -> Face:
        """The largest face of ``image`` as a :class:`Face`.

        ``box`` (left, top, right, bottom), e.g. from a dataset's label file, skips detection.
        Raises :class:`NoFaceError` when nothing is found and the fallback is ``none``.
        """
        image = np.ascontiguousarray(image)  # dlib takes only C-contiguous arrays (slices are views)
        if box is not None:
            return self._face(image, box, "label", 1)
        detector = self.settings.detector
        if detector in ("dlib", "auto"):
            boxes = self._hog_boxes(image)
            if boxes:
                return self._pick(image, boxes, "hog", name)
            face = self._find_padded(image, name)
            if face is not None:
                return face
        if detector in ("mtcnn", "auto"):
            boxes = self._mtcnn_boxes(image)
            if boxes:
                return self._pick(image, boxes, "mtcnn", name)
        if detector == "none" or self.settings.fallback == "whole-image":
            return self.whole_image(image)
        raise NoFaceError(f"{name}: no face found (detector {detector}; try --detector auto, or "
                          f"--fallback whole-image for pre-cropped faces)")

    def whole_image(self, image: np.ndarray) -> Face:
        """The whole image taken as the face (landmarks still placed by dlib's 5-point model)."""
        height, width = image.shape[:2]
        return self._face(np.ascontiguousarray(image), (0, 0, width - 1, height - 1), "whole-image", 0)

    def find_all(self, image: np.ndarray, name: str = "<image>") -> list[Face]:
        """Every face in ``image``, largest first, each with its own landmarks and chip.

        The detectors run as in :meth:`find` (HOG, its padded retry, which yields only its largest face,
        then MTCNN for ``auto``); with nothing found, the whole image when the detector is ``none`` or
        the fallback ``whole-image``, else :class:`NoFaceError`.
        """
        image = np.ascontiguousarray(image)
        detector = self.settings.detector
        boxes: list[Box] = []
        stage = ""
        if detector in ("dlib", "auto"):
            boxes, stage = self._hog_boxes(image), "hog"
            if not boxes:
                face = self._find_padded(image, name)
                if face is not None:
                    return [face]
        if not boxes and detector in ("mtcnn", "auto"):
            boxes, stage = self._mtcnn_boxes(image), "mtcnn"
        if boxes:
            largest_first = sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
            return [self._face(image, box, stage, len(boxes)) for box in largest_first]
        if detector == "none" or self.settings.fallback == "whole-image":
            return [self.whole_image(image)]
        raise NoFaceError(f"{name}: no face found (detector {detector}; try --detector auto, or "
                          f"--fallback whole-image for pre-cropped faces)")

    def _find_padded(self, image: np.ndarray, name: str) -> Optional[Face]:
        """Second HOG pass on the image padded with its mean colour: HOG needs context around a face."""
        height, width = image.shape[:2]
        pad = int(round(PAD_FRACTION * max(height, width)))
        fill = image.reshape(-1, 3).mean(axis=0).astype(np.uint8)
        padded = np.empty((height + 2 * pad, width + 2 * pad, 3), dtype=np.uint8)
        padded[:] = fill
        padded[pad:pad + height, pad:pad + width] = image
        boxes = self._hog_boxes(padded)
        if not boxes:
            return None
        face = self._pick(padded, boxes, "hog-padded", name)
        l, t, r, b = face.box
        face.box = (l - pad, t - pad, r - pad, b - pad)
        face.landmarks = face.landmarks - np.float32(pad)
        return face

    def _pick(self, image: np.ndarray, boxes: list[Box], stage: str, name: str) -> Face:
        return self._face(image, boxes[_largest(boxes)], stage, len(boxes))

    def _face(self, image: np.ndarray, box: Box, stage: str, n_faces: int) -> Face:
        import dlib

        shape = self._landmark_model()(image, dlib.rectangle(*[int(v) for v in box]))
        landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        chip = dlib.get_face_chip(image, shape, size=self.settings.chip_size, padding=self.settings.chip_padding)
        return Face(tuple(int(v) for v in box), landmarks, np.ascontiguousarray(chip), stage, n_faces)


def mirror(chips: np.ndarray) -> np.ndarray:
    """Chips flipped left-right (for flip averaging)."""
    return np.ascontiguousarray(chips[:, :, ::-1])
