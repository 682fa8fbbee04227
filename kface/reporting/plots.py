"""Figures for the evaluation reports: the lazy Agg pyplot, one atomic PNG save, the report's two plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..distances import Distance
from ..errors import InputError
from ..metrics import histogram_densities, kde_densities, roc
from ..util.outputs import atomic_path
from .markdown import model_title, number, percent

SAME_COLOUR, DIFF_COLOUR, OVERLAP_COLOUR = "#1f77b4", "#d62728", "#7f3c8d"


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display), imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> None:
    """Write ``figure`` to ``path`` as a PNG atomically, then close it."""
    with atomic_path(path, suffix=".png") as temp:
        figure.savefig(temp, format="png", dpi=120)
    pyplot().close(figure)


def plot_distributions(path: Path, distances: np.ndarray, same: np.ndarray, body: dict) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 4.8))
    d_same, d_diff = distances[same], distances[~same]
    histograms = histogram_densities(d_same, d_diff)
    for values, colour in ((histograms.same, SAME_COLOUR), (histograms.diff, DIFF_COLOUR)):
        axis.stairs(values, histograms.edges, color=colour, alpha=0.25, fill=True)
    try:
        densities = kde_densities(d_same, d_diff)
    except InputError:
        densities = None  # a class without spread has no KDE; the histograms still show it
    if densities is not None:
        axis.plot(densities.x, densities.same, color=SAME_COLOUR, linewidth=2,
                  label=f"same person (n={body['n_same']})")
        axis.plot(densities.x, densities.diff, color=DIFF_COLOUR, linewidth=2,
                  label=f"different people (n={body['n_diff']})")
        axis.fill_between(densities.x, np.minimum(densities.same, densities.diff), color=OVERLAP_COLOUR,
                          alpha=0.45, hatch="//", edgecolor="white", linewidth=0,
                          label=f"overlap {number(body['overlap'], 3)} (KDE; histogram "
                                f"{body['overlap_histogram']:.3f})")
        # The KDE grid runs six bandwidths past the data; show only where either density is visible.
        higher = np.maximum(densities.same, densities.diff)
        visible = densities.x[higher > 1e-3 * higher.max()]
        axis.set_xlim(min(visible[0], distances.min()), max(visible[-1], distances.max()))
    where = f"on {body['threshold_chosen_on']}" if body.get("threshold_chosen_on") else "not chosen here"
    axis.axvline(body["threshold"], color="black", linestyle="--", linewidth=1.5,
                 label=f"threshold {body['threshold']:.3f} ({body['rule']}, {where}): "
                       f"accuracy {percent(body['accuracy'], 1)}")
    axis.set_xlabel(f"{body['distance']} distance (smaller = more alike)")
    axis.set_ylabel("density")
    # Head room above the peaks keeps the legend off the curves.
    axis.set_ylim(0, 1.35 * axis.get_ylim()[1])
    axis.set_title(f"{model_title(body)}: {body['split']} split of {Path(body['pairs_file']).name}", fontsize=10)
    axis.legend(loc="upper right", fontsize=8, framealpha=0.9)
    figure.tight_layout()
    save_figure(figure, path)


def plot_roc(path: Path, distances: np.ndarray, same: np.ndarray, body: dict) -> None:
    plt = pyplot()
    curve = roc(distances, same)
    far, tar = curve.false_accept_rate, curve.true_accept_rate
    accepted = Distance.is_same(distances, body["threshold"])
    operating_far, operating_tar = float(np.mean(accepted[~same])), float(np.mean(accepted[same]))
    figure, (linear, logarithmic) = plt.subplots(1, 2, figsize=(10, 4.6))
    linear.plot(far, tar, color=SAME_COLOUR, linewidth=2, label=f"AUC {body['auc']:.4f}")
    linear.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    linear.plot([body["eer"]], [1 - body["eer"]], "o", color=DIFF_COLOUR, label=f"EER {percent(body['eer'])}")
    linear.plot([operating_far], [operating_tar], "s", color="black",
                label=f"threshold {body['threshold']:.3f}: FAR {percent(operating_far, 1)}, "
                      f"TAR {percent(operating_tar, 1)}")
    linear.set_xlim(-0.01, 1.01)
    linear.set_ylim(-0.01, 1.01)
    linear.set_xlabel("false accept rate")
    linear.set_ylabel("true accept rate")
    linear.set_title("ROC", fontsize=10)
    linear.legend(loc="lower right", fontsize=8)
    # On a log axis FAR = 0 cannot be drawn; the smallest non-zero FAR here is 1 / different-person pairs.
    floor = 1 / max(body["n_diff"], 1)
    shown = far > 0
    logarithmic.step(far[shown], tar[shown], where="post", color=SAME_COLOUR, linewidth=2)
    for key in sorted(k for k in body if k.startswith("tar_at_far_")):
        level = float(key[len("tar_at_far_"):])
        if body[key] is not None:
            logarithmic.plot([level], [body[key]], "o", color=DIFF_COLOUR,
                             label=f"TAR {percent(body[key], 1)} at FAR {key[len('tar_at_far_'):]}")
        else:
            logarithmic.axvline(level, color="grey", linestyle=":", linewidth=1,
                                label=f"FAR {key[len('tar_at_far_'):]}: too few different-person pairs")
    logarithmic.set_xscale("log")
    logarithmic.set_xlim(min(floor, 1e-3) / 2, 1)
    logarithmic.set_ylim(-0.01, 1.01)
    logarithmic.set_xlabel("false accept rate (log)")
    logarithmic.set_ylabel("true accept rate")
    logarithmic.set_title(f"low-FAR end (smallest measurable FAR 1/{body['n_diff']})", fontsize=10)
    logarithmic.legend(loc="lower right", fontsize=8)
    figure.suptitle(f"{model_title(body)}: {body['split']} split of {Path(body['pairs_file']).name}", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
