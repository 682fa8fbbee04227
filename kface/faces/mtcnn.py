"""MTCNN face detection without torch: facenet-pytorch's three networks in ONNX, its box logic in numpy.

The networks (``kface/models/mtcnn/*.onnx``, made by ``python -m kface.build.mtcnn_onnx`` from the weights
inside facenet-pytorch's wheel, sha256-checked against ``mtcnn.json``) run through onnxruntime. The rest
follows ``facenet_pytorch.models.utils.detect_face`` step by step for one image: the image pyramid
resized by area averaging (torch's ``interpolate(mode="area")``), PNet's candidate boxes with per-scale
and joint NMS, RNet and ONet refinement with box regression, squaring and the final "Min" NMS. Boxes
match facenet-pytorch's MTCNN to within a pixel (``tests/test_pipeline.py``).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import KfaceError
from ..models import MODELS_DIR
from ..util.hashing import file_sha256

MODEL_DIR = MODELS_DIR / "mtcnn"
#: facenet-pytorch's MTCNN defaults.
MIN_FACE_SIZE = 20
THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709


@lru_cache(maxsize=None)
def _checked_files() -> dict[str, Path]:
    """The three network files, each checked against the sha256 in ``mtcnn.json``."""
    card_path = MODEL_DIR / "mtcnn.json"
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KfaceError(f"{card_path}: MTCNN's model card is unreadable ({exc}); reinstall kface") from None
    files = {}
    for name, entry in card["networks"].items():
        path = MODEL_DIR / entry["file"]
        if not path.is_file() or file_sha256(path) != entry["sha256"]:
            raise KfaceError(f"{path}: missing or its sha256 differs from {card_path.name}; reinstall kface "
                             f"(or remake it: python -m kface.build.mtcnn_onnx)")
        files[name] = path
    return files


#: Images up to this many rows and columns are resized by dense averaging matrices, larger ones by
#: prefix sums: on a 128 px face crop the matrices (BLAS) are 4x faster than numpy's cumulative sum along a
#: strided axis, on an 800 px photo 2.5x slower (their cost grows with the product of the sides).
DENSE_RESIZE_MAX_SIDE = 256


@lru_cache(maxsize=512)
def _bins(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive average pooling's bins of ``n`` inputs into ``size`` outputs: output i averages inputs
    floor(i * n / size) to ceil((i + 1) * n / size) - 1 (neighbouring bins may share an input)."""
    index = np.arange(size)
    start = (index * n) // size
    end = -((-(index + 1) * n) // size)
    start.flags.writeable = end.flags.writeable = False  # shared by every call through the cache
    return start, end


@lru_cache(maxsize=512)
def _membership(n: int, size: int) -> np.ndarray:
    """(size, n) float64 0/1 matrix of :func:`_bins`: its product with integer pixels sums them exactly."""
    start, end = _bins(n, size)
    inputs = np.arange(n)
    member = ((inputs[None, :] >= start[:, None]) & (inputs[None, :] < end[:, None])).astype(np.float64)
    member.flags.writeable = False  # shared by every call through the cache
    return member


def area_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, H, W) float32 resized to (C, height, width) by averaging each output pixel's input area,
    as torch's ``interpolate(mode="area")`` (adaptive average pooling) does."""
    if max(image.shape[1:]) <= DENSE_RESIZE_MAX_SIDE:
        # Sums by 0/1 matrices, then one division per pass: on whole-number pixels (MTCNN's input) the
        # first pass is exact and both ways give the same float32 results (a test checks it).
        rows_start, rows_end = _bins(image.shape[1], height)
        cols_start, cols_end = _bins(image.shape[2], width)
        tall = (_membership(image.shape[1], height) @ image.astype(np.float64)) / (rows_end - rows_start)[:, None]
        return ((tall @ _membership(image.shape[2], width).T) / (cols_end - cols_start)).astype(np.float32)

    def along(array: np.ndarray, axis: int, size: int) -> np.ndarray:
        start, end = _bins(array.shape[axis], size)
        sums = np.cumsum(array, axis=axis, dtype=np.float64)
        sums = np.concatenate([np.zeros_like(np.take(sums, [0], axis=axis)), sums], axis=axis)
        taken = np.take(sums, end, axis=axis) - np.take(sums, start, axis=axis)
        shape = [1] * array.ndim
        shape[axis] = size
        return taken / (end - start).reshape(shape)

    return along(along(image, 1, height), 2, width).astype(np.float32)


@lru_cache(maxsize=None)
def _blas():
    """numpy's BLAS libraries, for :meth:`MTCNN.detect` to run them on one thread."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Indices kept by greedy NMS, best score first.

    ``union``: torchvision's ``nms`` (IoU of areas without the +1); ``min``: facenet-pytorch's numpy
    "Min" NMS (intersection over the smaller area, pixel areas with the +1).
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    plus = 1.0 if method == "min" else 0.0
    area = (x2 - x1 + plus) * (y2 - y1 + plus)
    # torchvision sorts descending; facenet's numpy NMS takes the last of an ascending argsort.
    order = np.argsort(-scores, kind="stable") if method == "union" else np.argsort(scores)[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + plus)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + plus)
        inter = w * h
        if method == "min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.array(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """facenet-pytorch's ``rerec``: each box grown to a square about its centre."""
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = np.maximum(w, h)
    boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, :2] + side[:, None]
    return boxes


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """facenet-pytorch's ``bbreg``: apply the networks' box offsets (in units of the pixel size)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0] = boxes[:, 0] + reg[:, 0] * w
    boxes[:, 1] = boxes[:, 1] + reg[:, 1] * h
    boxes[:, 2] = boxes[:, 2] + reg[:, 2] * w
    boxes[:, 3] = boxes[:, 3] + reg[:, 3] * h
    return boxes


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each box's pixels (clipped to the image, facenet-pytorch's ``pad``) resized to size x size and
    normalised, and the mask of boxes that had any pixels."""
    height, width = image.shape[1:]
    ints = np.trunc(boxes[:, :4]).astype(np.int32)
    x = np.maximum(ints[:, 0], 1)
    y = np.maximum(ints[:, 1], 1)
    ex = np.minimum(ints[:, 2], width)
    ey = np.minimum(ints[:, 3], height)
    keep = (ey > y - 1) & (ex > x - 1)
    crops = [area_resize(image[:, y[k] - 1:ey[k], x[k] - 1:ex[k]], size, size) for k in np.flatnonzero(keep)]
    batch = np.stack(crops) if crops else np.zeros((0, 3, size, size), dtype=np.float32)
    return (batch - 127.5) * 0.0078125, keep


class MTCNN:
    """facenet-pytorch's MTCNN detector (its defaults) on onnxruntime: :meth:`detect` -> boxes, scores.

    Args:
        threads: CPU threads per network (None: onnxruntime's default); worker processes use 1.
        providers: onnxruntime execution providers (default: CPU).
    """

    def __init__(self, threads: Optional[int] = None, providers: Optional[list[str]] = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        files = _checked_files()
        providers = providers or ["CPUExecutionProvider"]
        self._sessions = {name: onnxruntime.InferenceSession(str(path), options, providers=providers)
                          for name, path in files.items()}

    def _run(self, name: str, batch: np.ndarray) -> list[np.ndarray]:
        return self._sessions[name].run(None, {"image": np.ascontiguousarray(batch, dtype=np.float32)})

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Face boxes (N, 4) float32 (left, top, right, bottom) and scores (N,) of an (H, W, 3) uint8
        RGB image, in facenet-pytorch's order (ONet's "Min" NMS order)."""
        # One BLAS thread for the resizing matrices: more cost more CPU than they save on these small
        # products, and take the cores from the networks and from other face-finding processes.
        with _blas().limit(limits=1, user_api="blas"):
            return self._detect(image)

    def _detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pixels = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
        height, width = pixels.shape[1:]
        boxes = self._stage_one(pixels, height, width)
        for name, size, threshold in (("rnet", 24, THRESHOLDS[1]), ("onet", 48, THRESHOLDS[2])):
            if len(boxes) == 0:
                break
            crops, kept = _crops(pixels, boxes, size)
            boxes = boxes[kept]
            outputs = self._run(name, crops)
            reg, score = outputs[0], outputs[-1][:, 1]
            passed = score > threshold
            boxes = np.concatenate([boxes[passed, :4], score[passed, None]], axis=1)
            reg = reg[passed]
            if name == "rnet":
                pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
                boxes = _square(_regress(boxes[pick], reg[pick]))
            else:
                boxes = _regress(boxes, reg)
                boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7, method="min")]
        if len(boxes) == 0:
            return np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.float32)
        return boxes[:, :4].astype(np.float32), boxes[:, 4].astype(np.float32)

    def _stage_one(self, pixels: np.ndarray, height: int, width: int) -> np.ndarray:
        """PNet over the image pyramid: candidate boxes, squared, (N, 5) with their score."""
        m = 12.0 / MIN_FACE_SIZE
        smallest = min(height, width) * m
        scales = []
        scale = m
        while smallest >= 12:
            scales.append(scale)
            scale = scale * FACTOR
            smallest = smallest * FACTOR
        found = []
        for scale in scales:
            resized = area_resize(pixels, int(height * scale + 1), int(width * scale + 1))
            reg, prob = self._run("pnet", ((resized - 127.5) * 0.0078125)[None])
            candidates = _candidates(reg[0], prob[0, 1], scale, THRESHOLDS[0])
            found.append(candidates[nms(candidates[:, :4], candidates[:, 4], 0.5)])
        boxes = np.concatenate(found) if found else np.zeros((0, 9), dtype=np.float32)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        regw = boxes[:, 2] - boxes[:, 0]
        regh = boxes[:, 3] - boxes[:, 1]
        refined = np.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                            boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]], axis=1)
        return _square(refined.astype(np.float32))


def _candidates(reg: np.ndarray, prob: np.ndarray, scale: float, threshold: float) -> np.ndarray:
    """facenet-pytorch's ``generateBoundingBox`` for one image: (N, 9) boxes, score, offsets."""
    stride, cell = 2, 12
    ys, xs = np.nonzero(prob >= threshold)
    if len(ys) == 0:
        return np.zeros((0, 9), dtype=np.float32)
    position = np.stack([xs, ys], axis=1).astype(np.float32)
    scale32 = np.float32(scale)
    top_left = np.floor((stride * position + 1) / scale32)
    bottom_right = np.floor((stride * position + cell - 1 + 1) / scale32)
    return np.concatenate([top_left, bottom_right, prob[ys, xs, None], reg[:, ys, xs].T], axis=1).astype(np.float32)
