"""The same/different distance distributions the page draws: from a CSV of labelled distances or a checkpoint."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from ..metrics import kde_densities, overlap_area
from ..training.checkpoints import load_checkpoint, stored_val_distances
from ..util.tables import read_csv_dicts

log = logging.getLogger("kface")

#: Points of the density curves sent to the page (the KDE grid itself is much finer).
CURVE_POINTS = 240


@dataclass
class Distribution:
    """Same-person and different-person distances of labelled pairs scored by the served model."""

    same: np.ndarray
    different: np.ndarray
    source: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self, threshold: float, metric: str) -> dict:
        """What the page draws: both densities on one grid of ``CURVE_POINTS`` x values, and the counts."""
        densities = kde_densities(self.same, self.different)
        higher = np.maximum(densities.same, densities.diff)
        visible = densities.x[higher > 1e-3 * higher.max()]
        low = min(float(visible[0]), float(min(self.same.min(), self.different.min())))
        high = max(float(visible[-1]), float(max(self.same.max(), self.different.max())))
        x = np.linspace(low, high, CURVE_POINTS)
        return {"available": True, "source": self.source, "notes": self.notes, "distance_metric": metric,
                "threshold": threshold, "n_same": int(self.same.size), "n_diff": int(self.different.size),
                "overlap": overlap_area(self.same, self.different),
                "x": [round(float(v), 5) for v in x],
                "same": [round(float(v), 5) for v in np.interp(x, densities.x, densities.same)],
                "different": [round(float(v), 5) for v in np.interp(x, densities.x, densities.diff)]}


def load_distances(path: os.PathLike, split: Optional[str] = None,
                   threshold: Optional[float] = None) -> Distribution:
    """Labelled distances from a CSV with ``label`` and ``distance`` columns (``split`` optional).

    ``kface verify --pairs FILE --model M --out results.csv`` writes one; rows without a distance (an
    image that failed) are left out, and ``split`` keeps only that split's rows. With ``threshold``,
    a note says when the file was scored at another threshold (another model's scores, likely).
    """
    path = Path(path)
    rows = read_csv_dicts(path, "distances file")
    columns = set(rows[0]) if rows else set()
    if not {"label", "distance"} <= columns:
        raise InputError(f"{path}: needs 'label' and 'distance' columns (as kface verify --pairs --out writes); "
                         f"found {', '.join(sorted(columns)) or 'no rows'}")
    if split is not None:
        if "split" not in columns:
            raise InputError(f"{path}: has no 'split' column to pick --distances-split {split} from")
        rows = [row for row in rows if row["split"] == split]
    rows = [row for row in rows if (row.get("distance") or "").strip()]
    try:
        labels = np.array([int(row["label"]) for row in rows], dtype=np.int64)
        distances = np.array([float(row["distance"]) for row in rows], dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{path}: a label or distance is not a number ({exc})") from None
    same, different = distances[labels == 1], distances[labels == 0]
    problem = _too_few(same, different)
    if problem:
        where = f" in split {split}" if split is not None else ""
        raise InputError(f"{path}: needs at least two distinct distances of each label{where} ({problem})")
    notes = []
    if threshold is not None and "threshold" in columns:
        scored_at = {round(float(row["threshold"]), 6) for row in rows if (row.get("threshold") or "").strip()}
        if scored_at and scored_at != {round(float(threshold), 6)}:
            notes.append(f"these distances were scored at threshold {', '.join(map(str, sorted(scored_at)))}, "
                         f"the server's is {threshold:.6g}: were they made with another model?")
    return Distribution(same, different, f"{path.name}{f' (split {split})' if split else ''}", notes)


def _too_few(same: np.ndarray, different: np.ndarray) -> Optional[str]:
    """Why the densities of ``same`` and ``different`` cannot be estimated, or None when they can."""
    if len(np.unique(same)) < 2 or len(np.unique(different)) < 2:
        return f"found {same.size} same-person and {different.size} different-person pairs"
    return None


@dataclass
class BinnedDistribution:
    """Same-person and different-person distance histograms on shared edges (a model card's), drawn with numpy
    alone: each class's density, lightly smoothed (a Gaussian of :data:`SMOOTHING_BINS` bins), no KDE."""

    edges: np.ndarray
    same: np.ndarray  # counts per bin
    different: np.ndarray
    source: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self, threshold: float, metric: str) -> dict:
        """What the page draws, in :meth:`Distribution.to_dict`'s form."""
        width = np.diff(self.edges)
        offsets = np.arange(-3 * SMOOTHING_BINS, 3 * SMOOTHING_BINS + 1)
        kernel = np.exp(-0.5 * (offsets / SMOOTHING_BINS) ** 2)
        padded = np.concatenate([self.edges[:1] - width[0] * np.arange(len(offsets) // 2, 0, -1), self.edges,
                                 self.edges[-1] + width[-1] * np.arange(1, len(offsets) // 2 + 1)])
        centres = (padded[:-1] + padded[1:]) / 2
        densities = {}
        for name, counts in (("same", self.same), ("different", self.different)):
            spread = np.convolve(np.pad(counts.astype(np.float64), len(offsets) // 2), kernel / kernel.sum(), "same")
            densities[name] = spread / (spread.sum() * width[0])
        keep = np.maximum(densities["same"], densities["different"]) > 0
        x = centres[keep]
        overlap = float(np.sum(np.minimum(densities["same"], densities["different"])) * width[0])
        return {"available": True, "source": self.source, "notes": self.notes, "distance_metric": metric,
                "threshold": threshold, "n_same": int(self.same.sum()), "n_diff": int(self.different.sum()),
                "overlap": overlap, "x": [round(float(v), 5) for v in x],
                "same": [round(float(v), 5) for v in densities["same"][keep]],
                "different": [round(float(v), 5) for v in densities["different"][keep]]}


#: The width, in bins, of the Gaussian that smooths a card's histograms for the page.
SMOOTHING_BINS = 1.5


def card_distribution(answers) -> Optional[BinnedDistribution]:
    """The val distances a model card's answers block holds (:class:`kface.metrics.answers.ModelAnswers`; histograms of
    both pair kinds, pooled), as the page draws them; None without a block."""
    block = answers.block if answers is not None else {}
    histograms = block.get("distributions")
    if not histograms:
        return None
    kinds = [kind for kind in histograms if isinstance(histograms[kind], dict)]
    same, different = (np.sum([histograms[kind][label] for kind in kinds], axis=0) for label in ("same", "different"))
    groups = len(block["val"]["groups"])
    return BinnedDistribution(np.asarray(histograms["edges"], dtype=np.float64), same, different,
                              f"the model card: val pairs of {groups} groups of families never trained on "
                              f"({' and '.join(kinds)} pairs)")


#: How the page and /health name the distances a trained model stores.
STORED_SOURCE = "val pairs of the training run"


def stored_distribution(model: Optional[os.PathLike]) -> Optional[Distribution]:
    """The val distances that the model checkpoint ``model`` stores (``kface train`` measured them in the
    epoch it saved), or None: no model (a base backbone), or a checkpoint written before they were stored."""
    if model is None:
        return None
    stored = stored_val_distances(load_checkpoint(model))
    if stored is None:
        return None
    distances, labels, record = stored
    kept = np.isfinite(distances)  # a diverged epoch can hold NaN distances; the densities need numbers
    same, different = distances[kept & (labels == 1)], distances[kept & (labels == 0)]
    problem = _too_few(same, different)
    if problem:
        log.warning("%s: its stored val distances cannot be drawn (%s)", model, problem)
        return None
    notes = [] if kept.all() else [f"{int((~kept).sum())} val pairs without a finite distance are left out"]
    return Distribution(same, different, f"{STORED_SOURCE} (epoch {record['epoch']}, {record['split']} split)", notes)
