"""Stage 2: faces in an image — detect, find 5-point landmarks, cut the aligned chip.

Detectors (``--detector``):

- ``dlib``: dlib's HOG detector, run at a scale sized to the image (``policy="sized"``, below); on a
  miss it retries harder (``upsample`` times upsampled, the image's longer side first brought to
  :data:`DETECT_MAX_SIDE`), then on the image padded with its mean colour, which recovers tight
  dataset crops whose face touches the border. ``policy="fixed"`` skips the sized pass.
- ``mtcnn``: facenet-pytorch's MTCNN, its networks exported to ONNX and run without torch
  (:mod:`kface.faces.mtcnn`).
- ``auto``: HOG's sized and hard passes, then MTCNN on the images they missed, then HOG on the padded
  image, the last resort: on tight 128 px album crops the padded pass costs 12 ms against MTCNN's
  10, and of 73 crops the first passes missed in a sample of 600 it found 11, MTCNN all 73.
- ``none``: the whole image is the face (pre-cropped datasets).

Whatever found the box, dlib's 5-point landmark model places the landmarks and ``dlib.get_face_chip``
cuts the aligned chip, so every detector feeds the backbone the same kind of chip. With
``fallback="whole-image"`` an image where nothing was found is treated as a face (``found`` is then
False); with ``fallback="none"`` it is a :class:`NoFaceError`. Each :class:`Face` records the ``stage``
that found it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError, NoFaceError
from ..models import MODELS_DIR
from ..models.dlib_files import DLIB_LANDMARKS_5, model_file
from .mtcnn import MTCNN

DETECTORS = ("dlib", "mtcnn", "auto", "none")
FALLBACKS = ("none", "whole-image")
#: Each side is padded by this share of the image's longer side before the second HOG pass.
PAD_FRACTION = 0.35
#: HOG runs on a copy downscaled to this longer side (a 2,300 px portrait takes 1.6 s at full size);
#: landmarks and the chip still come from the full-resolution image.
DETECT_MAX_SIDE = 800
#: dlib's frontal face detector, saved by ``python -m kface.build.dlib_onnx``: loading it takes
#: 2 ms, against 0.7 s for ``dlib.get_frontal_face_detector()``, which decodes the copy compiled into
#: dlib (a third of a cold ``kface verify``). The same detector: tests/test_detection_policy.py.
HOG_DETECTOR_FILE = MODELS_DIR / "dlib-frontal-face-detector.svm"
#: HOG policies: ``sized`` first runs HOG at the scale where the smallest face worth finding first
#: (see below) just fills dlib's detection window, and retries harder only on a miss; ``fixed`` runs
#: only the hard pass (upsampled ``upsample`` times at :data:`DETECT_MAX_SIDE`), as kface did before.
HOG_POLICIES = ("sized", "fixed")
#: dlib's HOG detector finds faces down to about 80 px across at the scale it runs at.
HOG_WINDOW = 80
#: The sized pass looks for faces at least this share of the image's shorter side, and at least
#: :data:`MIN_FACE_PX` pixels: a face to verify fills a good part of its photo (a 910 x 1137 portrait's
#: face is 260 px, LFW's about 110 of 250). Smaller faces are found by the harder retry.
MIN_FACE_SHARE = 0.2
MIN_FACE_PX = 40
#: The sized pass runs only where it searches at most this share of the hard pass's resolution (a
#: quarter of its pixels): on smaller images (LFW's 250 px: 0.8) a miss would cost both passes for
#: little saving, and the chips stay exactly the fixed policy's.
SIZED_MAX_SHARE = 0.5
#: A face crop (shorter side at most this many pixels, e.g. an album's 128 px crops) is first searched
#: at its own size, for faces of at least HOG_WINDOW pixels: the face fills such a frame, and the pass
#: costs a quarter of the hard pass's upsampled one.
CROP_MAX_SIDE = 160
#: Bumped whenever the sized policy's passes change, so cached chips of the old passes are not reused.
SIZED_POLICY_VERSION = 2
#: Bumped whenever the order of ``auto``'s detectors changes (2: MTCNN before HOG's padded pass).
AUTO_ORDER_VERSION = 2

Box = tuple[int, int, int, int]  # left, top, right, bottom in image pixels


@dataclass
class Face:
    """One face: its box, its 5 landmarks, the aligned chip, and which stage found it."""

    box: Box
    landmarks: np.ndarray  # (5, 2) float32, dlib's 5-point order, image coordinates
    chip: np.ndarray  # (S, S, 3) uint8 RGB aligned chip
    stage: str  # "hog", "hog-padded", "mtcnn", "label", "whole-image"
    n_faces: int = 1  # faces the detector saw (the sized HOG pass sees faces of its minimum size and up)

    @property
    def found(self) -> bool:
        """True when a detector (or a label file) located the face, False for the whole-image fallback."""
        return self.stage != "whole-image"


def stage_counts(stages: Sequence[str]) -> dict[str, int]:
    """How many images each face stage (``Face.stage``, or ``none``/``error``) served, in first-seen order."""
    counts: dict[str, int] = {}
    for stage in stages:
        counts[stage] = counts.get(stage, 0) + 1
    return counts


@dataclass(frozen=True)
class FaceSettings:
    """Everything that decides which chip comes out of an image (part of every cache key)."""

    detector: str = "dlib"
    upsample: int = 1
    fallback: str = "none"
    chip_size: int = 150
    chip_padding: float = 0.25
    policy: str = "sized"  # HOG policy, see HOG_POLICIES

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise InputError(f"unknown detector {self.detector!r}; choose one of: {', '.join(DETECTORS)}")
        if self.fallback not in FALLBACKS:
            raise InputError(f"unknown fallback {self.fallback!r}; choose one of: {', '.join(FALLBACKS)}")
        if not 0 <= self.upsample <= 3:
            raise InputError(f"upsample must be 0..3, got {self.upsample}")
        if self.policy not in HOG_POLICIES:
            raise InputError(f"unknown HOG policy {self.policy!r}; choose one of: {', '.join(HOG_POLICIES)}")

    def key(self) -> str:
        """What decides the detected face; the fallback is not part of it (it only acts on a miss)."""
        # "fixed" keeps the key chips had before policies existed, so their cache entries stay valid.
        policy = ("" if self.policy == "fixed" or self.detector in ("mtcnn", "none")
                  else f";hog={self.policy}{SIZED_POLICY_VERSION}")
        order = f";order={AUTO_ORDER_VERSION}" if self.detector == "auto" else ""
        return (f"det={self.detector};up={self.upsample}{policy}{order};chip={self.chip_size};"
                f"pad={self.chip_padding}")


def hog_passes(height: int, width: int, settings: FaceSettings) -> list[tuple[float, int]]:
    """The HOG passes for an image, in order, as (resize factor, dlib upsampling); the next runs only
    when the ones before found nothing.

    The hard pass is the fixed policy's: the longer side brought down to :data:`DETECT_MAX_SIDE`, then
    upsampled ``settings.upsample`` times. The sized policy runs first at the factor where a face of
    ``max(MIN_FACE_SHARE * shorter side, MIN_FACE_PX)`` is :data:`HOG_WINDOW` pixels wide, e.g. 0.44
    for a 910 x 1137 portrait (a tenth of the hard pass's pixels), where that is at most
    :data:`SIZED_MAX_SHARE` of the hard pass's factor; otherwise the hard pass alone runs. A face crop
    (shorter side at most :data:`CROP_MAX_SIDE`) is first searched unupsampled, then by the hard pass.
    """
    hard = (min(1.0, DETECT_MAX_SIDE / max(height, width)), settings.upsample)
    if settings.policy == "fixed":
        return [hard]
    if min(height, width) <= CROP_MAX_SIDE and hard[1] > 0:
        return [(hard[0], 0), hard]
    smallest_face = max(MIN_FACE_SHARE * min(height, width), MIN_FACE_PX)
    sized = min(HOG_WINDOW / smallest_face, DETECT_MAX_SIDE / max(height, width))
    if sized > SIZED_MAX_SHARE * hard[0] * 2 ** hard[1]:
        return [hard]
    return [(sized, 0), hard]


def hog_detector():
    """dlib's frontal face detector, from :data:`HOG_DETECTOR_FILE` where it ships, else built by dlib."""
    import dlib

    if HOG_DETECTOR_FILE.is_file():
        try:
            return dlib.fhog_object_detector(str(HOG_DETECTOR_FILE))
        except RuntimeError:
            pass  # damaged: dlib's own copy is the same detector, only slower to build
    return dlib.get_frontal_face_detector()


def _largest(boxes: Sequence[Box]) -> int:
    return int(np.argmax([(right - left) * (bottom - top) for left, top, right, bottom in boxes]))


def no_face_message(name: str, detector: str) -> str:
    """The one-line error of an image in which ``detector`` found no face."""
    return (f"{name}: no face found (detector {detector}; try --detector auto, or --fallback whole-image for "
            f"pre-cropped faces)")


class FaceFinder:
    """Finds the largest face of an image and cuts its aligned chip, per :class:`FaceSettings`.

    dlib's models load on first use; MTCNN (onnxruntime, never torch) loads only when it is asked for
    (``mtcnn``) or when HOG misses (``auto``).
    """

    def __init__(self, settings: FaceSettings = FaceSettings(), device: str = "auto", threads: Optional[int] = None):
        self.settings = settings
        self.device = device
        self.threads = threads  # CPU threads for MTCNN's networks (None: onnxruntime's default)
        self._hog = None
        self._landmarks = None
        self._mtcnn = None

    # -- models, loaded lazily -------------------------------------------------------------------
    def _dlib(self):
        if self._hog is None:
            self._hog = hog_detector()
        return self._hog

    def _landmark_model(self):
        if self._landmarks is None:
            import dlib

            self._landmarks = dlib.shape_predictor(str(model_file(DLIB_LANDMARKS_5)))
        return self._landmarks

    def _mtcnn_model(self):
        if self._mtcnn is None:
            # facenet-pytorch's networks exported to ONNX, its box logic in numpy: no torch here.
            self._mtcnn = MTCNN(threads=self.threads)
        return self._mtcnn

    # -- detectors: image -> list of boxes -------------------------------------------------------
    def _hog_boxes(self, image: np.ndarray) -> list[Box]:
        """Boxes of the first HOG pass (:func:`hog_passes`) that finds any."""
        for scale, upsample in hog_passes(*image.shape[:2], self.settings):
            boxes = self._hog_pass(image, scale, upsample)
            if boxes:
                return boxes
        return []

    def _fixed_hog_pass(self, image: np.ndarray) -> list[Box]:
        """The fixed policy's (hard) pass alone."""
        return self._hog_pass(image, *hog_passes(*image.shape[:2], replace(self.settings, policy="fixed"))[0])

    def _hog_pass(self, image: np.ndarray, scale: float, upsample: int) -> list[Box]:
        """HOG on ``image`` resized by ``scale`` and upsampled ``upsample`` times; boxes in ``image``'s pixels."""
        detector = self._dlib()
        if scale != 1.0:
            from PIL import Image

            height, width = image.shape[:2]
            resized = Image.fromarray(image).resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                                    Image.BILINEAR)
            image = np.asarray(resized)
        rects = detector(image, upsample)
        return [tuple(int(round(v / scale)) for v in (r.left(), r.top(), r.right(), r.bottom())) for r in rects]

    def _mtcnn_boxes(self, image: np.ndarray) -> list[Box]:
        boxes, _ = self._mtcnn_model().detect(image)
        return [tuple(int(round(float(v))) for v in box) for box in boxes]

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
        if detector in ("mtcnn", "auto"):
            boxes = self._mtcnn_boxes(image)
            if boxes:
                return self._pick(image, boxes, "mtcnn", name)
        if detector in ("dlib", "auto"):
            face = self._find_padded(image, name)
            if face is not None:
                return face
        if detector == "none" or self.settings.fallback == "whole-image":
            return self.whole_image(image)
        raise NoFaceError(no_face_message(name, detector))

    def whole_image(self, image: np.ndarray) -> Face:
        """The whole image taken as the face (landmarks still placed by dlib's 5-point model)."""
        height, width = image.shape[:2]
        return self._face(np.ascontiguousarray(image), (0, 0, width - 1, height - 1), "whole-image", 0)

    def find_all(self, image: np.ndarray, name: str = "<image>") -> list[Face]:
        """Every face in ``image``, largest first, each with its own landmarks and chip.

        The detectors run as in :meth:`find` (HOG, MTCNN for ``auto``, then HOG's padded retry, which
        yields only its largest face); with nothing found, the whole image when the detector is ``none`` or
        the fallback ``whole-image``, else :class:`NoFaceError`.
        """
        image = np.ascontiguousarray(image)
        detector = self.settings.detector
        boxes: list[Box] = []
        stage = ""
        if detector in ("dlib", "auto"):
            # Every face is wanted here, small ones too: the fixed passes, never the sized one.
            boxes, stage = self._fixed_hog_pass(image), "hog"
        if not boxes and detector in ("mtcnn", "auto"):
            boxes, stage = self._mtcnn_boxes(image), "mtcnn"
        if not boxes and detector in ("dlib", "auto"):
            face = self._find_padded(image, name)
            if face is not None:
                return [face]
        if boxes:
            largest_first = sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
            return [self._face(image, box, stage, len(boxes)) for box in largest_first]
        if detector == "none" or self.settings.fallback == "whole-image":
            return [self.whole_image(image)]
        raise NoFaceError(no_face_message(name, detector))

    def _find_padded(self, image: np.ndarray, name: str) -> Optional[Face]:
        """Second HOG pass on the image padded with its mean colour: HOG needs context around a face."""
        height, width = image.shape[:2]
        pad = int(round(PAD_FRACTION * max(height, width)))
        fill = image.reshape(-1, 3).mean(axis=0).astype(np.uint8)
        padded = np.empty((height + 2 * pad, width + 2 * pad, 3), dtype=np.uint8)
        padded[:] = fill
        padded[pad:pad + height, pad:pad + width] = image
        # The last retry: straight to the hard pass (the sized one has already missed on the crop).
        boxes = self._fixed_hog_pass(padded)
        if not boxes:
            return None
        face = self._pick(padded, boxes, "hog-padded", name)
        left, top, right, bottom = face.box
        face.box = (left - pad, top - pad, right - pad, bottom - pad)
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
