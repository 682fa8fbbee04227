"""The closed-form head: within-class whitening followed by an LDA projection, fitted on train identities.

Linear discriminant analysis finds the directions along which people differ most *relative to* how
much one person's photos vary. scikit-learn's :class:`~sklearn.discriminant_analysis.LinearDiscriminantAnalysis`
(``svd`` solver) computes it in two steps, which are exactly the recipe: it whitens the pooled
within-class covariance (the spread of each identity's images around that identity's mean), then
rotates onto the principal axes of the class means in that whitened space. Along every output
direction one person's images then vary equally, and the directions come sorted by how far apart
different people are.

- :func:`image_classes`: which images belong together, from the train pairs (their identity columns,
  or where those are empty, the groups that same-person pairs link).
- :func:`fit_lda`: the projection (an :class:`LdaProjection`) from those images' frozen embeddings.
- :func:`choose_dimensions`: how many directions to keep, chosen on the **val** pairs by the
  training's ``--select`` criterion (lowest overlap area by default, or highest accuracy at the
  ``--threshold-rule`` threshold) over :func:`dimension_candidates`.

The projection is ``y = s * (x - mean) @ V``: ``V`` whitens within-class variation to 1 per
direction, and the single scale ``s`` (the backbone's own within-class spread per dimension) brings
the output back to the backbone's scale, so Euclidean thresholds keep their usual size and the
paper's tanh head, which starts as the identity map, stays in tanh's near-linear range when it is
trained on the projection (``lda+siamese``). Cosine distances do not depend on ``s``.

Only NumPy is needed to apply a fitted projection; scikit-learn is imported when fitting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ..distances import get_distance
from ..errors import InputError
from ..metrics import accuracy_at, choose_threshold, overlap_area

#: Criteria for the number of dimensions, as in ``--select``: the direction that is better.
CRITERIA = {"overlap": "lower", "accuracy": "higher"}


# -- the projection ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LdaProjection:
    """A fitted projection ``y = (x - mean) @ matrix`` (``matrix`` already includes the scale).

    Attributes:
        mean: (D,) mean of the training embeddings, subtracted first (so cosine distances are
            measured around the population's centre, not the origin).
        matrix: (D, K) discriminant directions, strongest first, within-class whitened and scaled.
        ratios: (K,) share of the between-class variance along each direction (decreasing, sums to <= 1).
        scale: the scale ``s`` folded into ``matrix``.
        classes: identities (classes) it was fitted on; images: how many images.
    """

    mean: np.ndarray
    matrix: np.ndarray
    ratios: np.ndarray
    scale: float
    classes: int
    images: int

    @property
    def input_size(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def dims(self) -> int:
        """The number of output dimensions."""
        return int(self.matrix.shape[1])

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """(N, D) embeddings -> (N, K) float32 projections. Usable as a :class:`~kface.api.Verifier` head."""
        vectors = np.asarray(vectors, dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[1] != self.input_size:
            raise InputError(f"the LDA projection takes (N, {self.input_size}) embeddings; got {vectors.shape}")
        return ((vectors - self.mean) @ self.matrix).astype(np.float32)

    __call__ = transform

    def truncated(self, dims: int) -> "LdaProjection":
        """The same projection keeping only its ``dims`` strongest directions."""
        if not 1 <= dims <= self.dims:
            raise InputError(f"an LDA projection of {self.dims} dimensions cannot keep {dims}")
        return LdaProjection(self.mean, self.matrix[:, :dims].copy(), self.ratios[:dims].copy(), self.scale,
                             self.classes, self.images)

    def to_dict(self) -> dict:
        """Plain lists and numbers (for JSON files and ``torch.load(weights_only=True)`` checkpoints)."""
        return {"mean": self.mean.tolist(), "matrix": self.matrix.tolist(), "ratios": self.ratios.tolist(),
                "scale": float(self.scale), "classes": int(self.classes), "images": int(self.images)}

    @classmethod
    def from_dict(cls, values: dict) -> "LdaProjection":
        """The projection :meth:`to_dict` wrote (lists, or arrays/tensors convertible by NumPy)."""
        try:
            mean = np.asarray(values["mean"], dtype=np.float64)
            matrix = np.asarray(values["matrix"], dtype=np.float64)
            ratios = np.asarray(values["ratios"], dtype=np.float64)
            projection = cls(mean, matrix, ratios, float(values["scale"]), int(values["classes"]),
                             int(values["images"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a stored LDA projection ({type(exc).__name__}: {exc})") from None
        if mean.ndim != 1 or matrix.ndim != 2 or matrix.shape[0] != mean.shape[0] or ratios.shape != matrix.shape[1:]:
            raise InputError(f"inconsistent LDA projection shapes: mean {mean.shape}, matrix {matrix.shape}, "
                             f"ratios {ratios.shape}")
        return projection


# -- which images belong together -------------------------------------------------------------------------
def image_classes(rows_a: np.ndarray, rows_b: np.ndarray, labels: np.ndarray,
                  identities_a: Optional[Sequence[str]] = None,
                  identities_b: Optional[Sequence[str]] = None) -> tuple[np.ndarray, np.ndarray, str]:
    """The images of some pairs and a class per image: ``(rows, classes, source)``.

    ``rows_a``/``rows_b`` are per-pair image rows (e.g. into a feature array) and ``labels`` 1 for a
    same-person pair. Classes come from the identity columns when every pair names both identities;
    otherwise (a hand-written pair file) from the groups that same-person pairs link (an image seen
    only in different-person pairs is then a class of its own). Two groups of one person that no
    pair links count as two classes, which makes the projection a little weaker, never wrong.
    ``source`` says which was used.
    """
    rows_a, rows_b = np.asarray(rows_a, dtype=np.int64), np.asarray(rows_b, dtype=np.int64)
    labels = np.asarray(labels)
    if not (rows_a.shape == rows_b.shape == labels.shape) or rows_a.ndim != 1:
        raise InputError("image_classes needs equal 1-D rows_a, rows_b and labels")
    rows = np.unique(np.concatenate([rows_a, rows_b]))
    named = (identities_a is not None and identities_b is not None and len(identities_a) == len(rows_a)
             and all(identities_a) and all(identities_b))
    if named:
        name_of: dict[int, str] = {}
        for row, name in zip(np.concatenate([rows_a, rows_b]).tolist(), [*identities_a, *identities_b]):
            if name_of.setdefault(row, str(name)) != str(name):
                raise InputError(f"one image is listed under two identities ({name_of[row]!r} and {name!r})")
        names = np.array([name_of[row] for row in rows.tolist()], dtype=object)
        _, classes = np.unique(names, return_inverse=True)
        return rows, classes.astype(np.int64), "identity columns of the train pairs"
    # Union-find over the same-person pairs.
    parent = {row: row for row in rows.tolist()}

    def root(row: int) -> int:
        while parent[row] != row:
            parent[row] = parent[parent[row]]
            row = parent[row]
        return row

    for a, b in zip(rows_a[labels == 1].tolist(), rows_b[labels == 1].tolist()):
        parent[root(a)] = root(b)
    _, classes = np.unique([root(row) for row in rows.tolist()], return_inverse=True)
    return rows, classes.astype(np.int64), "groups linked by same-person train pairs (identity columns empty)"


# -- fitting ---------------------------------------------------------------------------------------------
def fit_lda(embeddings: np.ndarray, classes: np.ndarray) -> LdaProjection:
    """Within-class whitening + LDA projection of ``embeddings`` (N, D) with class labels ``classes`` (N,).

    Keeps every direction LDA can give (at most ``classes - 1`` and ``D``); truncate with
    :meth:`LdaProjection.truncated`. Raises :class:`InputError` when there is nothing to fit: fewer
    than two classes, or no class with two or more images (no within-class variation to whiten).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    classes = np.asarray(classes)
    if x.ndim != 2 or classes.shape != (len(x),):
        raise InputError(f"fit_lda needs (N, D) embeddings and N class labels; got {x.shape} and {classes.shape}")
    if not np.all(np.isfinite(x)):
        raise InputError("fit_lda: the embeddings contain NaN or infinite values")
    _, codes, sizes = np.unique(classes, return_inverse=True, return_counts=True)
    if len(sizes) < 2:
        raise InputError(f"the LDA head needs train images of at least 2 identities; got {len(sizes)}")
    if not np.any(sizes >= 2):
        raise InputError("the LDA head needs at least one identity with 2 or more train images "
                         "(within-class variation is what it whitens)")
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    # svd solver: whitens the pooled within-class covariance exactly (no per-class estimates, which
    # would be poor with a handful of images per person), and its rank test drops directions the
    # images do not vary along instead of blowing them up (dlib's embeddings of degraded LFW crops
    # span about 80 of their 128 dimensions).
    lda = LinearDiscriminantAnalysis(solver="svd", store_covariance=False)
    lda.fit(x, codes)
    keep = min(lda.scalings_.shape[1], len(lda.explained_variance_ratio_))
    directions = np.asarray(lda.scalings_[:, :keep], dtype=np.float64)
    residuals = x - _class_means(x, codes)[codes]
    # Whitened means: within-class variance exactly 1 along each direction (pooled over all images),
    # whatever normalisation the solver used; then back to the backbone's within-class spread.
    spread = np.sqrt(np.mean((residuals @ directions) ** 2, axis=0))
    scale = float(np.sqrt(np.mean(residuals ** 2)))
    if not scale > 0 or not np.all(spread > 0):
        raise InputError("the LDA head needs train images of one identity that differ (all were identical)")
    return LdaProjection(mean=np.asarray(lda.xbar_, dtype=np.float64),
                         matrix=directions / spread * scale,
                         ratios=np.asarray(lda.explained_variance_ratio_[:keep], dtype=np.float64),
                         scale=scale, classes=len(sizes), images=len(x))


def _class_means(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    sums = np.zeros((codes.max() + 1, x.shape[1]))
    np.add.at(sums, codes, x)
    return sums / np.bincount(codes)[:, None]


# -- how many dimensions ---------------------------------------------------------------------------------
def dimension_candidates(maximum: int) -> list[int]:
    """The numbers of dimensions tried: 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (x1.5 / x1.33 steps) and ``maximum``.

    A geometric grid: enough resolution where it matters (few dimensions), and few enough candidates
    that the val pairs choose among a handful rather than fitting their own noise.
    """
    if maximum < 1:
        raise InputError(f"an LDA projection needs at least 1 dimension; got {maximum}")
    values, power = set(), 1
    while power <= maximum:
        values.update(value for value in (power, power * 3 // 2) if 1 <= value <= maximum)
        power *= 2
    values.add(maximum)
    return sorted(values)


@dataclass(frozen=True)
class DimensionChoice:
    """The number of dimensions kept, the criterion that chose it, and every candidate's val figures."""

    dims: int
    criterion: str
    rule: str
    table: list[dict]  # per candidate: dims, overlap, accuracy, threshold (val)

    def to_dict(self) -> dict:
        return {"dims": self.dims, "criterion": self.criterion, "rule": self.rule, "split": "val",
                "candidates": self.table}


def choose_dimensions(projection: LdaProjection, val_a: np.ndarray, val_b: np.ndarray, labels: np.ndarray, *,
                      distance: Any = "euclidean", criterion: str = "overlap", rule: str = "intersection",
                      sample: Optional[np.ndarray] = None, grid: int = 512,
                      candidates: Optional[Sequence[int]] = None) -> DimensionChoice:
    """Choose how many of ``projection``'s directions to keep, on val pairs.

    :param val_a: (P, D) embeddings of the first image of each val pair; ``val_b`` the second.
    :param labels: (P,) 1 = same person.
    :param distance: the distance the head will be used with (``euclidean``, ``cosine``).
    :param criterion: ``overlap`` (lowest overlap area of the two val distance densities, the
        study's measure) or ``accuracy`` (highest val accuracy at the threshold ``rule`` chooses).
    :param sample: indices of the val pairs on which the threshold and overlap are measured (the
        training's per-class sample); default every pair. Accuracy uses every pair.
    :param grid: KDE grid points of the overlap and intersection threshold.
    :param candidates: numbers of dimensions to try (default :func:`dimension_candidates`).
    :return: the choice; ties go to fewer dimensions.
    """
    if criterion not in CRITERIA:
        raise InputError(f"unknown criterion {criterion!r}; choose one of: {', '.join(CRITERIA)}")
    metric = get_distance(distance)
    labels = np.asarray(labels).astype(np.int8)
    sample = np.arange(len(labels)) if sample is None else np.asarray(sample)
    projected_a, projected_b = projection.transform(val_a), projection.transform(val_b)
    table = []
    for dims in (candidates or dimension_candidates(projection.dims)):
        if not 1 <= dims <= projection.dims:
            raise InputError(f"cannot keep {dims} of {projection.dims} LDA dimensions")
        distances = np.asarray(metric.pairwise(projected_a[:, :dims], projected_b[:, :dims]), dtype=np.float64)
        d, same = distances[sample], labels[sample] == 1
        threshold = choose_threshold(d, same, rule, split="val", grid=grid)
        table.append({"dims": int(dims), "overlap": overlap_area(d[same], d[~same], grid=grid),
                      "accuracy": accuracy_at(distances, labels, threshold.value), "threshold": threshold.value})
    sign = 1.0 if CRITERIA[criterion] == "lower" else -1.0
    best = min(table, key=lambda row: (sign * row[criterion], row["dims"]))
    return DimensionChoice(best["dims"], criterion, str(rule), table)
