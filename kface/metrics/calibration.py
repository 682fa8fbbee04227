"""Distance -> calibrated probability that two faces are one person: isotonic and Platt fits, ECE, reliability.

A fitted mapping is stored as plain numbers (a model card's JSON) and applied with numpy alone, so an
answer needs neither scikit-learn nor torch; scikit-learn is imported only to fit. Pairs are weighted so
that each class (same, different) of each pair kind carries equal weight: the probability is the one for
a pair drawn with even odds of being one person, whatever the mix of the pairs it was fitted on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

METHODS = ("isotonic", "platt")
#: Bins of the expected calibration error and the reliability diagram (equal width on [0, 1]).
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Calibration:
    """A fitted distance -> P(same) mapping: ``isotonic`` (a non-increasing step curve through ``knots``,
    interpolated linearly) or ``platt`` (``sigmoid(slope * (offset - distance))``)."""

    method: str
    knots: tuple[tuple[float, float], ...] = ()
    slope: float = 0.0
    offset: float = 0.0

    def __call__(self, distances) -> np.ndarray:
        d = np.asarray(distances, dtype=np.float64)
        if self.method == "platt":
            return 1.0 / (1.0 + np.exp(-self.slope * (self.offset - d)))
        x, y = (np.array(column) for column in zip(*self.knots))
        return np.interp(d, x, y)

    def to_dict(self) -> dict:
        if self.method == "platt":
            return {"method": "platt", "slope": self.slope, "offset": self.offset}
        return {"method": "isotonic", "knots": [[round(x, 6), round(y, 6)] for x, y in self.knots]}

    @classmethod
    def from_dict(cls, body: dict) -> Calibration:
        if body.get("method") == "platt":
            return cls("platt", slope=float(body["slope"]), offset=float(body["offset"]))
        if body.get("method") == "isotonic":
            return cls("isotonic", knots=tuple((float(x), float(y)) for x, y in body["knots"]))
        raise InputError(f"unknown calibration method {body.get('method')!r}; expected one of {', '.join(METHODS)}")


def balanced_weights(labels, kinds=None) -> np.ndarray:
    """Per-pair weights giving each (kind, class) cell the same total weight, summing to the pair count."""
    labels = np.asarray(labels)
    kinds = np.zeros(len(labels)) if kinds is None else np.asarray(kinds)
    weights = np.zeros(len(labels), dtype=np.float64)
    cells = [(kind, label) for kind in np.unique(kinds) for label in (0, 1)
             if np.any((kinds == kind) & (labels == label))]
    for kind, label in cells:
        members = (kinds == kind) & (labels == label)
        weights[members] = len(labels) / (len(cells) * members.sum())
    return weights


def fit_calibration(distances, labels, method: str = "isotonic", weights: np.ndarray | None = None) -> Calibration:
    """Fit ``method`` (isotonic or platt) on labelled distances (1 = same person), weighted by ``weights``."""
    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(np.unique(y)) < 2:
        raise InputError("calibration needs both same-person and different-person pairs")
    w = np.ones(len(d)) if weights is None else np.asarray(weights, dtype=np.float64)
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        fitted = LogisticRegression(C=1e6).fit(d[:, None], y, sample_weight=w)
        slope = -float(fitted.coef_[0, 0])
        return Calibration("platt", slope=slope, offset=float(fitted.intercept_[0]) / slope)
    if method != "isotonic":
        raise InputError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(increasing=False, y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(d, y, sample_weight=w)
    return Calibration("isotonic", knots=tuple(zip(map(float, fitted.X_thresholds_), map(float, fitted.y_thresholds_))))


def reliability(probabilities, labels, weights: np.ndarray | None = None, bins: int = CALIBRATION_BINS) -> list[dict]:
    """The reliability diagram's rows: per probability bin, the pairs in it, their mean predicted probability
    and the (weighted) share that are one person."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    w = np.ones(len(p)) if weights is None else np.asarray(weights, dtype=np.float64)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    rows = []
    for b in range(bins):
        members = which == b
        if not members.any():
            continue
        total = w[members].sum()
        rows.append({"low": b / bins, "high": (b + 1) / bins, "pairs": int(members.sum()),
                     "weight": float(total / w.sum()), "mean_probability": float(np.average(p[members],
                                                                                            weights=w[members])),
                     "share_same": float(np.average(y[members], weights=w[members]))})
    return rows


def expected_calibration_error(probabilities, labels, weights: np.ndarray | None = None,
                               bins: int = CALIBRATION_BINS) -> float:
    """ECE: the weight-averaged gap between mean predicted probability and the share of same-person pairs,
    over ``bins`` equal-width probability bins."""
    return float(sum(row["weight"] * abs(row["mean_probability"] - row["share_same"])
                     for row in reliability(probabilities, labels, weights, bins)))


def probability_band(calibration: Calibration, level: float, low: float, high: float) -> tuple[float, float] | None:
    """The distances in [low, high] where the calibrated probability lies strictly between ``1 - level`` and
    ``level`` (the answer would be right less often than ``level``), as (first, last), or None if none."""
    grid = np.linspace(low, high, 4001)
    p = calibration(grid)
    unsure = (p > 1 - level) & (p < level)
    if not unsure.any():
        return None
    inside = grid[unsure]
    return float(inside.min()), float(inside.max())
