"""Figures of a model card's answers block: its val distance distributions with the operating points, and the
reliability diagram of its calibrated probability on held-out pairs (``kface models --plot DIR``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .plots import DIFF_COLOUR, SAME_COLOUR, pyplot, save_figure


def plot_card_distributions(path: Path, block: dict, title: str) -> None:
    """Per pair kind, the same-person and different-people densities of the card's val distances, with a line
    at each operating point's threshold."""
    histograms = block["distributions"]
    edges = np.asarray(histograms["edges"], dtype=np.float64)
    kinds = [kind for kind in histograms if isinstance(histograms[kind], dict)]
    plt = pyplot()
    figure, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4.2), sharey=True, squeeze=False)
    for axis, kind in zip(axes[0], kinds):
        for label, colour, name in (("same", SAME_COLOUR, "same person"), ("different", DIFF_COLOUR,
                                                                           "different people")):
            counts = np.asarray(histograms[kind][label], dtype=np.float64)
            density = counts / max(counts.sum(), 1) / np.diff(edges)
            axis.stairs(density, edges, fill=True, alpha=0.3, color=colour, label=f"{name} (n={int(counts.sum())})")
        for number, (point, entry) in enumerate(block["points"].items()):
            axis.axvline(entry["threshold"], color="black", linestyle=("-", "--", ":")[number % 3], linewidth=1.2,
                         label=f"{point} {entry['threshold']:.3f}")
        axis.set_title(kind)
        axis.set_xlabel("distance (smaller = more alike)")
        axis.legend(fontsize=8)
    axes[0][0].set_ylabel("density")
    figure.suptitle(f"{title}: val pairs of {len(block['val']['groups'])} groups never trained on")
    figure.tight_layout()
    save_figure(figure, path)


def plot_reliability(path: Path, block: dict, title: str) -> None:
    """The calibrated probability's reliability diagram on the held-out pairs (each class of each kind weighs the
    same), with the expected calibration error."""
    measured = block["probability"]["heldout"]
    rows = measured["reliability"]
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 5))
    axis.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfect calibration")
    axis.plot([row["mean_probability"] for row in rows], [row["share_same"] for row in rows], marker="o",
              color=SAME_COLOUR, label=f"held-out pairs (ECE {measured['ece']:.3f})")
    for row in rows:
        axis.annotate(str(row["pairs"]), (row["mean_probability"], row["share_same"]), fontsize=7,
                      textcoords="offset points", xytext=(4, -10))
    axis.set_xlabel("predicted probability of one person")
    axis.set_ylabel("share that are one person")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_title(f"{title}: {block['probability']['method']} calibration")
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)


def plot_cards(out: Path, cards: list[tuple[str, dict]]) -> list[Path]:
    """Both figures for each (name, answers block) into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, block in cards:
        for suffix, draw in (("distances", plot_card_distributions), ("reliability", plot_reliability)):
            path = out / f"{name}-{suffix}.png"
            draw(path, block, name)
            written.append(path)
    return written
