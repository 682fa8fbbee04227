"""Overlap of the same- and different-person distance distributions: KDE and histogram densities and their area."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .base import _MAX_GRID_POINTS, DEFAULT_BINS, DEFAULT_GRID_POINTS


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
