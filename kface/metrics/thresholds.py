"""Threshold rules (intersection, max-accuracy, eer, far=X) and choosing a threshold on one set of pairs."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..errors import InputError
from .base import DEFAULT_GRID_POINTS, _as_pairs, _need_both
from .curves import _far_threshold, eer
from .overlap import kde_densities


@dataclass(frozen=True)
class Rule:
    """A parsed threshold rule: ``intersection``, ``max-accuracy``, ``eer`` or ``far`` (with ``far`` set)."""

    name: str
    far: Optional[float] = None

    def __str__(self) -> str:
        return f"far={self.far:g}" if self.name == "far" else self.name


def parse_rule(rule: str | Rule) -> Rule:
    """Parse ``intersection``, ``max-accuracy``, ``eer`` or ``far=X`` (0 < X < 1, e.g. ``far=1e-3``)."""
    if isinstance(rule, Rule):
        return rule
    text = str(rule).strip()
    if text in ("intersection", "max-accuracy", "eer"):
        return Rule(text)
    if text.startswith("far="):
        value = text[len("far="):]
        try:
            far = float(value)
        except ValueError:
            raise InputError(f"rule {text!r}: X in far=X must be a number such as 1e-3") from None
        if not (math.isfinite(far) and 0 < far < 1):
            raise InputError(f"rule {text!r}: X in far=X must lie strictly between 0 and 1")
        return Rule("far", far)
    raise InputError(
        f"unknown threshold rule {text!r}; choose intersection, max-accuracy, eer or far=X (0 < X < 1)"
    )


@dataclass(frozen=True)
class Threshold:
    """A chosen threshold: its value, the rule that chose it, the split it was chosen on, and any caveat."""

    value: float
    rule: str
    split: Optional[str] = None
    note: Optional[str] = None

    def to_dict(self) -> dict:
        """The keys a checkpoint or metrics.json stores."""
        return {
            "threshold": self.value,
            "rule": self.rule,
            "threshold_chosen_on": self.split,
            "threshold_note": self.note,
        }


def _max_accuracy_threshold(d: np.ndarray, same: np.ndarray) -> float:
    order = np.argsort(d, kind="stable")
    d_sorted, same_sorted = d[order], same[order]
    # Cut k judges the k smallest distances "same": correct = same pairs before it + different pairs after it.
    same_before = np.concatenate([[0], np.cumsum(same_sorted)])
    diff_before = np.concatenate([[0], np.cumsum(~same_sorted)])
    correct = same_before + (diff_before[-1] - diff_before)
    # A cut between two equal distances cannot be made with a threshold.
    possible = np.ones(d.size + 1, dtype=bool)
    possible[1:-1] = d_sorted[1:] != d_sorted[:-1]
    k = int(np.argmax(np.where(possible, correct, -1)))  # ties: the smallest threshold
    if k == 0:
        return float(np.nextafter(d_sorted[0], -np.inf))
    if k == d.size:
        return float(d_sorted[-1])
    return float((d_sorted[k - 1] + d_sorted[k]) / 2)


def _balanced_error(d: np.ndarray, same: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """False reject rate + false accept rate at each candidate threshold (classes weighted equally)."""
    sorted_same, sorted_diff = np.sort(d[same]), np.sort(d[~same])
    accepted_same = np.searchsorted(sorted_same, candidates, side="right") / sorted_same.size
    accepted_diff = np.searchsorted(sorted_diff, candidates, side="right") / sorted_diff.size
    return (1 - accepted_same) + accepted_diff


def _intersection_threshold(d: np.ndarray, same: np.ndarray, grid: int) -> tuple[float, Optional[str]]:
    densities = kde_densities(d[same], d[~same], grid)
    low, high = sorted((float(np.median(d[same])), float(np.median(d[~same]))))
    x, gap = densities.x, densities.same - densities.diff
    # Crossings where the same-person density hands over to the different-person one, interpolated.
    i = np.flatnonzero((gap[:-1] > 0) & (gap[1:] <= 0))
    crossings = x[i] + gap[i] / (gap[i] - gap[i + 1]) * (x[i + 1] - x[i])
    crossings = crossings[(crossings >= low) & (crossings <= high)]
    if crossings.size:
        # Several crossings (bumpy densities): keep the one that separates the classes best.
        return float(crossings[np.argmin(_balanced_error(d, same, crossings))]), None
    between = x[(x >= low) & (x <= high)]
    candidates = between if between.size else np.array([(low + high) / 2])
    note = (
        "the two densities do not cross between the class medians; used the point between them "
        "with the lowest balanced error"
    )
    return float(candidates[np.argmin(_balanced_error(d, same, candidates))]), note


def choose_threshold(
    distances: Any,
    labels: Any,
    rule: str | Rule = "intersection",
    *,
    split: Optional[str] = None,
    grid: int = DEFAULT_GRID_POINTS,
) -> Threshold:
    """Choose a distance threshold on these pairs by ``rule``; apply it to *other* pairs.

    - ``intersection`` (the study's): where the two classes' KDEs cross between the class medians
      (with several crossings, the one with the lowest balanced error; with none, the point between
      the medians with the lowest balanced error, and ``note`` says so).
    - ``max-accuracy``: the midpoint between the two adjacent distances where accuracy here is
      highest (ties: the smallest threshold).
    - ``eer``: the interpolated equal-error-rate threshold (:func:`eer`).
    - ``far=X``: the largest threshold whose false accept rate here is <= X (halfway into the gap to
      the first rejected negative); needs at least ``1 / X`` different-person pairs.

    :param split: the split these pairs come from, recorded in the result.
    :raises InputError: on a bad rule, or pairs that cannot support it.
    """
    parsed = parse_rule(rule)
    d, same = _as_pairs(distances, labels)
    note = None
    if parsed.name == "intersection":
        _need_both(same, "the intersection rule", minimum=2)
        value, note = _intersection_threshold(d, same, grid)
    elif parsed.name == "max-accuracy":
        value = _max_accuracy_threshold(d, same)
    elif parsed.name == "eer":
        value = eer(d, same).threshold
    else:
        _need_both(same, f"rule {parsed}")
        value, why_not = _far_threshold(d, same, parsed.far)
        if value is None:
            where = f" on the {split} split" if split else ""
            raise InputError(
                f"cannot choose a threshold by {parsed}{where}: {why_not} (use more pairs or a larger X)"
            )
    return Threshold(float(value), str(parsed), split, note)
