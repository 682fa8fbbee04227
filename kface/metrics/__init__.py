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

Modules: :mod:`.base` (defaults, input checks), :mod:`.overlap`, :mod:`.curves` (ROC, AUC, EER,
TAR@FAR, accuracy, loss), :mod:`.thresholds` (rules) and :mod:`.protocol` (sampling, val/test, k-fold);
every public name is importable from ``kface.metrics``. scipy and scikit-learn are imported inside the
functions that need them.
"""
from __future__ import annotations

from .base import DEFAULT_BINS, DEFAULT_FAR_LEVELS, DEFAULT_GRID_POINTS, DEFAULT_SAMPLES, RULE_NAMES, SampleSize
from .curves import Eer, Roc, TarAtFar, accuracy_at, auc, bce_loss, eer, roc, tar_at_far
from .overlap import Densities, Histograms, histogram_densities, kde_densities, overlap_area
from .protocol import (
                   FoldResult,
                   KFoldResult,
                   Metrics,
                   Sample,
                   Separation,
                   evaluate,
                   kfold_protocol,
                   parse_samples,
                   sample_per_class,
                   select_and_score,
                   separation,
)
from .thresholds import Rule, Threshold, choose_threshold, parse_rule

__all__ = [
    "DEFAULT_BINS", "DEFAULT_FAR_LEVELS", "DEFAULT_GRID_POINTS", "DEFAULT_SAMPLES", "RULE_NAMES", "SampleSize",
    "Eer", "Roc", "TarAtFar", "accuracy_at", "auc", "bce_loss", "eer", "roc", "tar_at_far",
    "Densities", "Histograms", "histogram_densities", "kde_densities", "overlap_area",
    "FoldResult", "KFoldResult", "Metrics", "Sample", "Separation", "evaluate", "kfold_protocol",
    "parse_samples", "sample_per_class", "select_and_score", "separation",
    "Rule", "Threshold", "choose_threshold", "parse_rule",
]
