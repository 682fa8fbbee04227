"""Stage 7: the verification protocol in one place.

Inputs everywhere are ``distances`` (1-D, smaller = more alike, see :mod:`kface.distances`) and
``labels`` (1 = same person, 0 = different); a pair is judged "same" iff ``distance <= threshold``.

The study judged a model two ways: accuracy at a threshold, and the **overlap area** of the
same-person and different-person distance distributions (400 pairs of each). Two estimators of that
area are provided and both are reported:

- ``kde`` (the headline number): each class's distances get a Gaussian kernel density estimate
  (``scipy.stats.gaussian_kde``, Scott's bandwidth rule ``n ** -1/5`` times the sample's standard
  deviation); ``integral of min(f_same, f_diff)`` is taken with the trapezoid rule on a shared grid that
  extends six bandwidths beyond the data, so no density mass is cut off. Kernel smoothing widens
  each density slightly, so on small samples this estimate leans a little high.
- ``histogram`` (the cross-check, free of any bandwidth choice): both classes are binned on the same
  edges (Freedman-Diaconis rule on the pooled distances by default), normalised to densities, and
  ``sum(min(h_same, h_diff) * bin_width)`` is taken. Sampling noise in sparse bins pulls it slightly low.

A threshold is always chosen on one set of pairs and applied to another: :func:`select_and_score`
chooses on val and scores test; :func:`kfold_protocol` chooses on nine folds and scores the tenth.
Every result records the rule, the split the threshold came from and the split it was scored on.

scipy and scikit-learn are imported inside the functions that need them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence, Union

import numpy as np

from .errors import InputError

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


# --------------------------------------------------------------------------- input checks


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


# --------------------------------------------------------------------------- densities and overlap


@dataclass(frozen=True)
class Densities:
    """Both classes' Gaussian KDEs evaluated on one grid ``x`` (what the overlap integrates, and what to plot)."""

    x: np.ndarray
    same: np.ndarray
    diff: np.ndarray
    bandwidth_same: float
    bandwidth_diff: float


@dataclass(frozen=True)
class Histograms:
    """Both classes' histograms as densities on shared bin ``edges`` (len(edges) = len(same) + 1)."""

    edges: np.ndarray
    same: np.ndarray
    diff: np.ndarray


def _kde(values: np.ndarray, name: str):
    from scipy.stats import gaussian_kde

    if values.size < 2 or np.ptp(values) == 0:
        raise InputError(
            f"a density of the {name} distances needs at least 2 different values; got {values.size} "
            f"value(s){' all equal' if values.size >= 2 else ''}"
        )
    return gaussian_kde(values, bw_method="scott")


def kde_densities(d_same: Any, d_diff: Any, grid: int = DEFAULT_GRID_POINTS) -> Densities:
    """Gaussian KDEs (Scott's rule) of same- and different-person distances on a shared grid.

    :param d_same: distances of same-person pairs (at least 2 distinct values).
    :param d_diff: distances of different-person pairs (at least 2 distinct values).
    :param grid: number of grid points (at least; refined so the narrower kernel spans >= 4 steps).
    :return: :class:`Densities`; each density integrates to ~1 over ``x``.
    """
    same = np.asarray(d_same, dtype=np.float64).ravel()
    diff = np.asarray(d_diff, dtype=np.float64).ravel()
    kde_same, kde_diff = _kde(same, "same-person"), _kde(diff, "different-person")
    bandwidth_same = float(np.sqrt(kde_same.covariance[0, 0]))
    bandwidth_diff = float(np.sqrt(kde_diff.covariance[0, 0]))
    pad = 6 * max(bandwidth_same, bandwidth_diff)
    low = min(same.min(), diff.min()) - pad
    high = max(same.max(), diff.max()) + pad
    needed = math.ceil((high - low) / (min(bandwidth_same, bandwidth_diff) / 4)) + 1
    x = np.linspace(low, high, min(max(grid, needed), _MAX_GRID_POINTS))
    return Densities(x, kde_same(x), kde_diff(x), bandwidth_same, bandwidth_diff)


def histogram_densities(d_same: Any, d_diff: Any, bins: int | str = DEFAULT_BINS) -> Histograms:
    """Histograms of both classes as densities on bins shared by both.

    :param bins: a bin count, or a NumPy rule name applied to the pooled distances
        (default ``"fd"``, Freedman-Diaconis: width ``2 * IQR * n ** -1/3``).
    """
    same = np.asarray(d_same, dtype=np.float64).ravel()
    diff = np.asarray(d_diff, dtype=np.float64).ravel()
    if same.size == 0 or diff.size == 0:
        raise InputError("a histogram needs at least one distance of each class")
    edges = np.histogram_bin_edges(np.concatenate([same, diff]), bins=bins)
    h_same, _ = np.histogram(same, bins=edges, density=True)
    h_diff, _ = np.histogram(diff, bins=edges, density=True)
    return Histograms(edges, h_same, h_diff)


def overlap_area(
    d_same: Any,
    d_diff: Any,
    method: str = "kde",
    *,
    grid: int = DEFAULT_GRID_POINTS,
    bins: int | str = DEFAULT_BINS,
) -> float:
    """Overlap of the two distance distributions: the integral of ``min(f_same, f_diff)``.

    1 for identical distributions, 0 for disjoint ones; for two unit-variance Gaussians whose means
    are ``delta`` apart it is ``2 * Phi(-delta / 2)``. Lower is better.

    :param method: ``"kde"`` (Gaussian KDE, Scott's rule, trapezoid rule on ``grid`` points) or
        ``"histogram"`` (shared ``bins``, sum of bin-wise minima); see the module docstring.
    """
    if method == "kde":
        densities = kde_densities(d_same, d_diff, grid)
        return float(np.trapezoid(np.minimum(densities.same, densities.diff), densities.x))
    if method == "histogram":
        histograms = histogram_densities(d_same, d_diff, bins)
        return float(np.sum(np.minimum(histograms.same, histograms.diff) * np.diff(histograms.edges)))
    raise InputError(f"unknown overlap method {method!r}; choose kde or histogram")


# --------------------------------------------------------------------------- threshold-free curves


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
    return TarAtFar(far, float(np.mean(d[same] <= threshold)), threshold)


def accuracy_at(distances: Any, labels: Any, threshold: float) -> float:
    """Share of pairs judged correctly by ``same iff distance <= threshold``."""
    d, same = _as_pairs(distances, labels)
    return float(np.mean((d <= threshold) == same))


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


# --------------------------------------------------------------------------- threshold rules


@dataclass(frozen=True)
class Rule:
    """A parsed threshold rule: ``intersection``, ``max-accuracy``, ``eer`` or ``far`` (with ``far`` set)."""

    name: str
    far: Optional[float] = None

    def __str__(self) -> str:
        return f"far={self.far:g}" if self.name == "far" else self.name


def _check_far(far: float) -> float:
    try:
        value = float(far)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0 < value < 1):
        raise InputError(f"a false accept rate must be a number strictly between 0 and 1, e.g. 1e-3; got {far!r}")
    return value


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


# --------------------------------------------------------------------------- sampling


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


# --------------------------------------------------------------------------- evaluation


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


# --------------------------------------------------------------------------- k-fold protocol (LFW View 2)


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
