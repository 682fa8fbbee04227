"""The protocols: per-class sampling, scoring at a threshold chosen elsewhere (val/test, k-fold)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import InputError
from .base import (
    DEFAULT_BINS,
    DEFAULT_FAR_LEVELS,
    DEFAULT_GRID_POINTS,
    DEFAULT_SAMPLES,
    SampleSize,
    _as_pairs,
    _as_same,
    _far_label,
    _need_both,
)
from .curves import TarAtFar, accuracy_at, auc, bce_loss, eer, tar_at_far
from .overlap import overlap_area
from .thresholds import Rule, Threshold, choose_threshold, parse_rule


@dataclass(frozen=True)
class Sample:
    """A seeded per-class subsample: ``indices`` into the original pairs (sorted) and how it was drawn."""

    indices: np.ndarray
    samples: SampleSize
    seed: int
    n_same: int
    n_diff: int
    available_same: int
    available_diff: int

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "seed": self.seed,
            "n_same": self.n_same,
            "n_diff": self.n_diff,
            "available_same": self.available_same,
            "available_diff": self.available_diff,
        }


def parse_samples(text: str | int) -> SampleSize:
    """``"all"`` or a positive pair count per class (the ``--samples`` option)."""
    if isinstance(text, str) and text.strip().lower() == "all":
        return "all"
    try:
        count = int(str(text).strip())
    except ValueError:
        raise InputError(f"samples must be a positive number of pairs per class or 'all'; got {text!r}") from None
    if count < 1:
        raise InputError(f"samples must be a positive number of pairs per class or 'all'; got {text!r}")
    return count


def sample_per_class(labels: Any, samples: SampleSize = DEFAULT_SAMPLES, seed: int = 0) -> Sample:
    """Draw up to ``samples`` same-person and up to ``samples`` different-person pairs, without replacement.

    Takes only the labels, so pairs can be sampled before any embedding is computed. A class with
    fewer pairs is taken whole; ``"all"`` takes every pair. The draw depends only on ``seed``.
    """
    same = _as_same(labels)
    count = parse_samples(samples)
    rng = np.random.default_rng(seed)
    chosen = []
    for mask in (same, ~same):
        indices = np.flatnonzero(mask)
        if count != "all" and indices.size > count:
            indices = rng.choice(indices, size=count, replace=False)
        chosen.append(indices)
    return Sample(
        np.sort(np.concatenate(chosen)),
        count,
        seed,
        n_same=int(chosen[0].size),
        n_diff=int(chosen[1].size),
        available_same=int(same.sum()),
        available_diff=int((~same).sum()),
    )


@dataclass(frozen=True)
class Separation:
    """How well the distances separate the classes, whatever the threshold (AUC, EER, TAR@FAR, overlap)."""

    n_same: int
    n_diff: int
    auc: float
    eer: float
    eer_threshold: float
    tar_at_far: tuple[TarAtFar, ...]
    overlap: Optional[float]  # Gaussian-KDE estimate; None (see notes) when a class has no spread
    overlap_histogram: float
    notes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        result: dict[str, Any] = {
            "n_same": self.n_same,
            "n_diff": self.n_diff,
            "auc": self.auc,
            "eer": self.eer,
            "eer_threshold": self.eer_threshold,
        }
        for point in self.tar_at_far:
            result[f"tar_at_far_{_far_label(point.far)}"] = point.tar
        result["overlap"] = self.overlap
        result["overlap_histogram"] = self.overlap_histogram
        return result


def separation(
    distances: Any,
    labels: Any,
    *,
    far_levels: Sequence[float] = DEFAULT_FAR_LEVELS,
    grid: int = DEFAULT_GRID_POINTS,
    bins: int | str = DEFAULT_BINS,
) -> Separation:
    """The threshold-free metrics of one set of pairs: AUC, EER, TAR at each FAR level, both overlaps."""
    d, same = _as_pairs(distances, labels)
    _need_both(same, "evaluation")
    notes: dict[str, str] = {}
    points = tuple(tar_at_far(d, same, far) for far in far_levels)
    for point in points:
        if point.note:
            notes[f"tar_at_far_{_far_label(point.far)}"] = point.note
    try:
        overlap: Optional[float] = overlap_area(d[same], d[~same], "kde", grid=grid)
    except InputError as error:
        overlap, notes["overlap"] = None, str(error)
    equal_error = eer(d, same)
    return Separation(
        n_same=int(same.sum()),
        n_diff=int((~same).sum()),
        auc=auc(d, same),
        eer=equal_error.rate,
        eer_threshold=equal_error.threshold,
        tar_at_far=points,
        overlap=overlap,
        overlap_histogram=overlap_area(d[same], d[~same], "histogram", bins=bins),
        notes=notes,
    )


@dataclass(frozen=True)
class Metrics:
    """Everything measured on one split at a threshold chosen elsewhere.

    ``split`` is where every number here was measured; ``threshold.split`` where the threshold was
    chosen. ``samples``/``seed`` record a per-class subsample, when one was drawn.
    """

    split: Optional[str]
    threshold: Threshold
    accuracy: float
    loss: Optional[float]
    separation: Separation
    samples: Optional[SampleSize] = None
    seed: Optional[int] = None

    def to_dict(self) -> dict:
        """A flat, JSON-ready dict (the body of metrics.json)."""
        notes = dict(self.separation.notes)
        if self.loss is None:
            notes["loss"] = "no probabilities given: the loss needs a trained model's P(same)"
        if self.threshold.note:
            notes["threshold"] = self.threshold.note
        threshold = {key: value for key, value in self.threshold.to_dict().items() if key != "threshold_note"}
        return {
            "split": self.split,
            "accuracy": self.accuracy,
            "loss": self.loss,
            **self.separation.to_dict(),
            **threshold,
            "samples": self.samples,
            "seed": self.seed,
            "notes": notes,
        }


def evaluate(
    distances: Any,
    labels: Any,
    threshold: Threshold | float,
    *,
    probabilities: Any = None,
    split: Optional[str] = None,
    far_levels: Sequence[float] = DEFAULT_FAR_LEVELS,
    grid: int = DEFAULT_GRID_POINTS,
    bins: int | str = DEFAULT_BINS,
) -> Metrics:
    """Score pairs at a threshold chosen on other pairs.

    :param threshold: a :class:`Threshold` from :func:`choose_threshold`, or a plain value (rule "fixed").
    :param probabilities: P(same) per pair from a trained model, for the BCE loss; None for none.
    :param split: the split these pairs come from, recorded.
    :raises InputError: if the threshold was chosen on this very split.
    """
    if not isinstance(threshold, Threshold):
        threshold = Threshold(float(threshold), "fixed")
    if split is not None and threshold.split == split:
        raise InputError(f"the threshold was chosen on the {split} split; score it on a different split")
    d, same = _as_pairs(distances, labels)
    return Metrics(
        split=split,
        threshold=threshold,
        accuracy=accuracy_at(d, same, threshold.value),
        loss=None if probabilities is None else bce_loss(probabilities, same),
        separation=separation(d, same, far_levels=far_levels, grid=grid, bins=bins),
    )


def select_and_score(
    val_distances: Any,
    val_labels: Any,
    test_distances: Any,
    test_labels: Any,
    rule: str | Rule = "intersection",
    *,
    samples: SampleSize = DEFAULT_SAMPLES,
    seed: int = 0,
    test_probabilities: Any = None,
    val_split: str = "val",
    test_split: str = "test",
    far_levels: Sequence[float] = DEFAULT_FAR_LEVELS,
    grid: int = DEFAULT_GRID_POINTS,
    bins: int | str = DEFAULT_BINS,
) -> Metrics:
    """The study's protocol: sample each split per class, choose the threshold on val, score test.

    Both splits are subsampled with :func:`sample_per_class` (``samples`` per class, ``seed``),
    which the result records; ``test_probabilities`` (P(same), for the loss) follow the test sample.
    """
    if val_split == test_split:
        raise InputError(f"the threshold must be chosen on a different split than the one scored ({test_split})")
    val_d, val_same = _as_pairs(val_distances, val_labels)
    test_d, test_same = _as_pairs(test_distances, test_labels)
    val_sample = sample_per_class(val_same, samples, seed)
    test_sample = sample_per_class(test_same, samples, seed)
    chosen = val_sample.indices
    threshold = choose_threshold(val_d[chosen], val_same[chosen], rule, split=val_split, grid=grid)
    probabilities = None
    if test_probabilities is not None:
        probabilities = np.asarray(test_probabilities, dtype=np.float64).ravel()
        if probabilities.size != test_d.size:
            raise InputError(f"{probabilities.size} probabilities for {test_d.size} test pairs")
        probabilities = probabilities[test_sample.indices]
    metrics = evaluate(
        test_d[test_sample.indices],
        test_same[test_sample.indices],
        threshold,
        probabilities=probabilities,
        split=test_split,
        far_levels=far_levels,
        grid=grid,
        bins=bins,
    )
    return replace(metrics, samples=test_sample.samples, seed=seed)


@dataclass(frozen=True)
class FoldResult:
    """One held-out fold: the threshold chosen on the other folds and the accuracy it gets here."""

    fold: int
    threshold: float
    accuracy: float
    n_pairs: int
    note: Optional[str] = None


@dataclass(frozen=True)
class KFoldResult:
    """Cross-validated accuracy (mean, sample std with ddof=1, standard error) plus pooled separation metrics."""

    rule: str
    folds: tuple[FoldResult, ...]
    mean_accuracy: float
    std_accuracy: float
    standard_error: float
    separation: Separation  # over all pairs of all folds

    def to_dict(self) -> dict:
        """A JSON-ready dict; ``accuracy``/``accuracy_std`` are the headline ``mean +- std``."""
        return {
            "protocol": f"{len(self.folds)}-fold: threshold chosen on the other folds, scored on the held-out one",
            "rule": self.rule,
            "accuracy": self.mean_accuracy,
            "accuracy_std": self.std_accuracy,
            "accuracy_standard_error": self.standard_error,
            "fold_accuracies": [fold.accuracy for fold in self.folds],
            "fold_thresholds": [fold.threshold for fold in self.folds],
            **self.separation.to_dict(),
            "notes": {
                **self.separation.notes,
                **{f"fold_{fold.fold}": fold.note for fold in self.folds if fold.note},
            },
        }


def kfold_protocol(
    distances: Any,
    labels: Any,
    folds: Any,
    rule: str | Rule = "max-accuracy",
    *,
    far_levels: Sequence[float] = DEFAULT_FAR_LEVELS,
    grid: int = DEFAULT_GRID_POINTS,
    bins: int | str = DEFAULT_BINS,
) -> KFoldResult:
    """Cross-validated verification accuracy, as in LFW View 2 (10 folds, max-accuracy threshold).

    For each fold the threshold is chosen by ``rule`` on all *other* folds and applied to this one.
    The standard deviation uses ``ddof=1`` and the standard error is ``std / sqrt(folds)``, as the LFW
    protocol defines them. AUC, EER, TAR@FAR and the overlaps are computed once over all pairs.

    :param folds: the fold id of each pair (any integers; at least two distinct).
    """
    parsed = parse_rule(rule)
    d, same = _as_pairs(distances, labels)
    fold_ids = np.asarray(folds).ravel()
    if fold_ids.size != d.size:
        raise InputError(f"{fold_ids.size} fold ids for {d.size} pairs")
    unique = np.unique(fold_ids)
    if unique.size < 2:
        raise InputError("the k-fold protocol needs at least two folds")
    results = []
    for fold in unique:
        held_out = fold_ids == fold
        threshold = choose_threshold(d[~held_out], same[~held_out], parsed, grid=grid)
        results.append(
            FoldResult(
                fold=int(fold),
                threshold=threshold.value,
                accuracy=accuracy_at(d[held_out], same[held_out], threshold.value),
                n_pairs=int(held_out.sum()),
                note=threshold.note,
            )
        )
    accuracies = np.array([result.accuracy for result in results])
    std = float(np.std(accuracies, ddof=1))
    return KFoldResult(
        rule=str(parsed),
        folds=tuple(results),
        mean_accuracy=float(accuracies.mean()),
        std_accuracy=std,
        standard_error=std / math.sqrt(accuracies.size),
        separation=separation(d, same, far_levels=far_levels, grid=grid, bins=bins),
    )
