"""The metrics' shared ground: default settings and the checks every pair input goes through."""
from __future__ import annotations

import math
from typing import Any, Union

import numpy as np

from ..errors import InputError

SampleSize = Union[int, str]  # pairs per class, or "all"
DEFAULT_FAR_LEVELS: tuple[float, ...] = (1e-2, 1e-3)
DEFAULT_GRID_POINTS = 2048
DEFAULT_BINS = "fd"
DEFAULT_SAMPLES = 400  # per class, as in the study
RULE_NAMES = ("intersection", "max-accuracy", "eer", "far=X")
# Where the narrower density's bandwidth is below 4 grid steps the grid is refined, up to this size.
_MAX_GRID_POINTS = 16384
# Keras' default epsilon: BCE clips probabilities to [1e-7, 1 - 1e-7].
_BCE_EPS = 1e-7


def _as_same(labels: Any) -> np.ndarray:
    """Labels (1 = same person, 0 = different) as a non-empty boolean array, checked."""
    raw = np.asarray(labels).ravel()
    if raw.size == 0:
        raise InputError("no pairs to evaluate")
    if not np.all((raw == 0) | (raw == 1)):
        raise InputError("labels must be 1 (same person) or 0 (different people)")
    return raw.astype(bool)


def _as_pairs(distances: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """1-D float64 distances and boolean ``same`` flags, checked."""
    d = np.asarray(distances, dtype=np.float64).ravel()
    same = _as_same(labels)
    if d.size != same.size:
        raise InputError(f"{d.size} distances but {same.size} labels")
    if not np.all(np.isfinite(d)):
        raise InputError("distances contain NaN or infinite values")
    return d, same


def _need_both(same: np.ndarray, what: str, minimum: int = 1) -> None:
    n_same, n_diff = int(same.sum()), int((~same).sum())
    if n_same < minimum or n_diff < minimum:
        raise InputError(
            f"{what} needs at least {minimum} same-person and {minimum} different-person pair(s); "
            f"got {n_same} same and {n_diff} different"
        )


def _far_label(far: float) -> str:
    """1e-3 -> '1e-3', 0.015 -> '1.5e-2': a short key for JSON and tables."""
    mantissa, exponent = f"{far:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _check_far(far: float) -> float:
    try:
        value = float(far)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0 < value < 1):
        raise InputError(f"a false accept rate must be a number strictly between 0 and 1, e.g. 1e-3; got {far!r}")
    return value
