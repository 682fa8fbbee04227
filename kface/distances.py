"""Stage 6: distances between embeddings, each knowing its own direction.

Everything downstream of this module (thresholds, ROC, overlap, mining, verify) speaks one convention:
**a distance, where smaller means more alike**, and a pair is judged "same person" iff
``distance <= threshold``. A measure that is naturally a similarity (cosine) says so with
``is_inverted = True`` and is turned into a distance here, once, as ``1 - similarity``; no caller ever
needs to know which measure is in use.

Every function accepts NumPy arrays or torch tensors and returns the same kind (a tensor keeps its
graph, so the same objects serve training). torch is never imported by this module: a tensor can only
exist if the caller already imported torch, so it is looked up in ``sys.modules``.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .errors import InputError

# Guards the cosine denominator for zero vectors (the value torch.nn.functional.cosine_similarity uses).
_COSINE_EPS = 1e-8


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _check_shapes(a: Any, b: Any, *, all_pairs: bool) -> None:
    if a.ndim not in (1, 2) or b.ndim not in (1, 2):
        raise InputError(
            f"embeddings must be (D,) or (N, D) arrays; got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[-1] != b.shape[-1]:
        raise InputError(
            f"embedding sizes differ: {a.shape[-1]} vs {b.shape[-1]} (were both made with the same backbone?)"
        )
    if not all_pairs and a.ndim == 2 and b.ndim == 2 and a.shape[0] != b.shape[0]:
        raise InputError(f"row-wise distances need the same number of rows; got {a.shape[0]} and {b.shape[0]}")


class Distance:
    """A distance between embeddings (template: subclasses provide the raw measure, this class the rest).

    Subclasses set ``name`` and ``is_inverted`` (True when the raw measure is a similarity bounded
    above by 1, larger = more alike) and implement ``_raw_pairwise`` and ``_raw_matrix`` for NumPy
    and torch inputs alike.
    """

    name: str = ""
    is_inverted: bool = False
    description: str = ""

    def pairwise(self, a: Any, b: Any) -> Any:
        """Row-wise distances: ``a[i]`` against ``b[i]``.

        :param a: (N, D) or (D,) embeddings, NumPy array or torch tensor.
        :param b: same shape as ``a``, or (D,) to compare every row of ``a`` with one embedding.
        :return: (N,) distances (a 0-d value for two (D,) inputs), same kind as the inputs.
        """
        a, b = self._as_same_kind(a, b)
        _check_shapes(a, b, all_pairs=False)
        return self._to_distance(self._raw_pairwise(a, b))

    def matrix(self, a: Any, b: Any) -> Any:
        """All-pairs distances: (N, D) x (M, D) -> (N, M), entry [i, j] = distance(a[i], b[j])."""
        a, b = self._as_same_kind(a, b)
        _check_shapes(a, b, all_pairs=True)
        if a.ndim == 1:
            a = a[None, :]
        if b.ndim == 1:
            b = b[None, :]
        return self._to_distance(self._raw_matrix(a, b))

    @staticmethod
    def is_same(distances: Any, threshold: float) -> Any:
        """The decision every kface command makes: same person iff ``distance <= threshold``."""
        return distances <= threshold

    @staticmethod
    def score(distances: Any) -> Any:
        """A score where larger means more alike (``-distance``), for ROC code that expects one."""
        return -distances

    def _to_distance(self, raw: Any) -> Any:
        return 1 - raw if self.is_inverted else raw

    @staticmethod
    def _as_same_kind(a: Any, b: Any) -> tuple[Any, Any]:
        if _is_tensor(a) or _is_tensor(b):
            torch = sys.modules["torch"]
            reference = a if _is_tensor(a) else b
            return (torch.as_tensor(a, device=reference.device), torch.as_tensor(b, device=reference.device))
        return np.asarray(a), np.asarray(b)

    def _raw_pairwise(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def _raw_matrix(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class EuclideanDistance(Distance):
    """L2 distance ``||a - b||`` on the embeddings as given (dlib's 0.6 threshold is on this scale)."""

    name = "euclidean"
    is_inverted = False
    description = "L2 distance ||a - b||, in [0, inf)"

    def _raw_pairwise(self, a: Any, b: Any) -> Any:
        if _is_tensor(a):
            # vector_norm's gradient at a - b == 0 is 0, not NaN, so identical pairs are safe in training.
            return sys.modules["torch"].linalg.vector_norm(a - b, dim=-1)
        return np.linalg.norm(a - b, axis=-1)

    def _raw_matrix(self, a: Any, b: Any) -> Any:
        if _is_tensor(a):
            return sys.modules["torch"].cdist(a, b)
        from scipy.spatial.distance import cdist

        return cdist(a, b).astype(np.result_type(a.dtype, b.dtype, np.float32), copy=False)


class CosineDistance(Distance):
    """Cosine distance ``1 - cos(a, b)``, in [0, 2]; insensitive to the embeddings' lengths."""

    name = "cosine"
    is_inverted = True
    description = "1 - cosine similarity, in [0, 2]"

    def _raw_pairwise(self, a: Any, b: Any) -> Any:
        if _is_tensor(a):
            return sys.modules["torch"].nn.functional.cosine_similarity(a, b, dim=-1, eps=_COSINE_EPS)
        return (_unit_rows(a) * _unit_rows(b)).sum(axis=-1)

    def _raw_matrix(self, a: Any, b: Any) -> Any:
        if _is_tensor(a):
            normalize = sys.modules["torch"].nn.functional.normalize
            return normalize(a, dim=-1, eps=_COSINE_EPS) @ normalize(b, dim=-1, eps=_COSINE_EPS).T
        return _unit_rows(a) @ _unit_rows(b).T


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, _COSINE_EPS)


DISTANCES: dict[str, Distance] = {d.name: d for d in (EuclideanDistance(), CosineDistance())}


def get_distance(name: str | Distance) -> Distance:
    """The distance called ``name`` (``euclidean`` or ``cosine``); a Distance is returned unchanged.

    Raises :class:`InputError` naming the valid choices for an unknown name.
    """
    if isinstance(name, Distance):
        return name
    try:
        return DISTANCES[name]
    except KeyError:
        raise InputError(f"unknown distance {name!r}; choose one of: {', '.join(DISTANCES)}") from None


def pairwise(a: Any, b: Any, distance: str | Distance = "euclidean") -> Any:
    """Row-wise distances between ``a`` and ``b`` under the named distance (see :meth:`Distance.pairwise`)."""
    return get_distance(distance).pairwise(a, b)


def same_probability(distances: np.ndarray, offset: float, log_sharpness: float) -> np.ndarray:
    """P(same) of ``distances`` under a trained model's mapping, sigmoid(exp(log_sharpness) * (offset - d)):
    the inference form of :class:`kface.training.heads.DistanceToProbability`, whose two parameters these are
    (float32 in, float32 out; no torch)."""
    sharpness = np.float32(np.exp(log_sharpness))
    return 1.0 / (1.0 + np.exp(-sharpness * (np.float32(offset) - np.asarray(distances, dtype=np.float32))))
