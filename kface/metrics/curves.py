"""Threshold-free curves and rates: ROC, AUC, EER, TAR at FAR, accuracy at a threshold, BCE loss."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..distances import Distance
from ..errors import InputError
from .base import _BCE_EPS, _as_pairs, _as_same, _check_far, _need_both


@dataclass(frozen=True)
class Roc:
    """ROC points for the rule ``same iff distance <= threshold``; ``thresholds[0]`` is -inf (accept none)."""

    false_accept_rate: np.ndarray
    true_accept_rate: np.ndarray
    thresholds: np.ndarray


@dataclass(frozen=True)
class Eer:
    """Equal error rate (FAR = FRR, linearly interpolated between ROC points) and the distance where it occurs."""

    rate: float
    threshold: float


@dataclass(frozen=True)
class TarAtFar:
    """True accept rate at a false accept rate; ``tar`` is None (and ``note`` says why) when it cannot be read."""

    far: float
    tar: Optional[float]
    threshold: Optional[float]
    note: Optional[str] = None


def roc(distances: Any, labels: Any) -> Roc:
    """Every ROC point of the distances (scikit-learn's roc_curve on the score ``-distance``)."""
    from sklearn.metrics import roc_curve

    d, same = _as_pairs(distances, labels)
    _need_both(same, "an ROC curve")
    fpr, tpr, scores = roc_curve(same, -d, drop_intermediate=False)
    return Roc(fpr, tpr, -scores)


def auc(distances: Any, labels: Any) -> float:
    """Area under the ROC curve: the chance a random same-person pair is closer than a random different one."""
    from sklearn.metrics import roc_auc_score

    d, same = _as_pairs(distances, labels)
    _need_both(same, "ROC AUC")
    return float(roc_auc_score(same, -d))


def eer(distances: Any, labels: Any) -> Eer:
    """Equal error rate and its threshold, interpolated where FAR - FRR changes sign on the ROC."""
    curve = roc(distances, labels)
    far, thresholds = curve.false_accept_rate, curve.thresholds
    gap = far - (1 - curve.true_accept_rate)  # rises from -1 (accept none) to +1 (accept all)
    i = int(np.argmax(gap >= 0))
    if gap[i] == 0:
        return Eer(float(far[i]), float(thresholds[i]))
    fraction = -gap[i - 1] / (gap[i] - gap[i - 1])
    # Below the first ROC point the threshold is -inf; the smallest distance stands in for it.
    lower = thresholds[i - 1] if np.isfinite(thresholds[i - 1]) else thresholds[i]
    rate = far[i - 1] + fraction * (far[i] - far[i - 1])
    return Eer(float(rate), float(lower + fraction * (thresholds[i] - lower)))


def _far_threshold(d: np.ndarray, same: np.ndarray, far: float) -> tuple[Optional[float], Optional[str]]:
    """The threshold of the operating point with the highest TAR whose FAR <= far, or (None, why not)."""
    d_diff = np.sort(d[~same])
    allowed = math.floor(d_diff.size * far + 1e-9)  # false accepts FAR <= far allows
    if allowed < 1:
        return None, (
            f"FAR {far:g} needs at least {math.ceil(1 / far - 1e-9)} different-person pairs; "
            f"there are {d_diff.size}"
        )
    first_rejected = d_diff[allowed]
    below = d[d < first_rejected]
    if below.size == 0:
        return float(np.nextafter(first_rejected, -np.inf)), None
    # Halfway between the last accepted distance (of either class) and the first rejected negative.
    return float((below.max() + first_rejected) / 2), None


def tar_at_far(distances: Any, labels: Any, far: float) -> TarAtFar:
    """True accept rate at the ROC point with the highest TAR whose false accept rate is <= ``far``.

    Read off the step ROC, not interpolated. Needs at least ``1 / far`` different-person pairs; with
    fewer, ``tar`` is None and ``note`` says so (e.g. FAR 1e-3 on 400 negatives).
    """
    far = _check_far(far)
    d, same = _as_pairs(distances, labels)
    _need_both(same, "TAR at FAR")
    threshold, note = _far_threshold(d, same, far)
    if threshold is None:
        return TarAtFar(far, None, None, note)
    return TarAtFar(far, float(np.mean(Distance.is_same(d[same], threshold))), threshold)


def accuracy_at(distances: Any, labels: Any, threshold: float) -> float:
    """Share of pairs judged correctly by ``same iff distance <= threshold``."""
    d, same = _as_pairs(distances, labels)
    return float(np.mean(Distance.is_same(d, threshold) == same))


def bce_loss(probabilities: Any, labels: Any) -> float:
    """Mean binary cross-entropy of P(same) against the labels, probabilities clipped to [1e-7, 1 - 1e-7].

    The clip (Keras' default epsilon) keeps one confident mistake from making the loss infinite.
    """
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    same = _as_same(labels)
    if p.size != same.size:
        raise InputError(f"{p.size} probabilities but {same.size} labels")
    if not np.all((p >= 0) & (p <= 1)):
        raise InputError("probabilities must lie in [0, 1]")
    p = np.clip(p, _BCE_EPS, 1 - _BCE_EPS)
    return float(-np.mean(np.where(same, np.log(p), np.log1p(-p))))
