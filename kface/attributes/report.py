"""The report of an attribute run: ``metrics.json``, ``confusion.png`` and ``report.md`` in one folder.

Every file is written atomically; matplotlib (Agg backend, no display) is imported only to draw.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from ..reporting.plots import pyplot, save_figure
from ..util.outputs import write_json, write_text

SPLIT_NAMES = ("train", "val", "test")


def write_split_csv(path: os.PathLike, features, split: np.ndarray) -> None:
    """``path,identity_group,split`` per embedded image, so a run's test images can be named later (an edited
    photo on the val or test side, left out of both, says so)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "group", "split"])
    for image, group, part in zip(features.paths, features.groups, split):
        writer.writerow([image, int(group), SPLIT_NAMES[int(part)] if part >= 0 else "edited, val/test side"])
    write_text(path, buffer.getvalue())


def write_attribute_report(folder: os.PathLike, metrics: dict) -> None:
    """Write ``metrics.json``, ``confusion.png`` (test split, one panel per head) and ``report.md``."""
    folder = Path(folder)
    write_json(folder / "metrics.json", metrics)
    _plot_confusion(folder / "confusion.png", metrics.get("test", metrics["val"]))
    write_text(folder / "report.md", _markdown(metrics))


def _plot_confusion(path: Path, test: dict) -> None:
    plt = pyplot()

    panels = [(task, test[task]) for task in ("age", "gender") if task in test]
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.8), squeeze=False)
    for axis, (task, entry) in zip(axes[0], panels):
        counts = np.asarray(entry["confusion"], dtype=np.float64)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)  # row-normalised: recall per class
        axis.imshow(share, cmap="Blues", vmin=0, vmax=1)
        labels = entry["labels"]
        axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        axis.set_yticks(range(len(labels)), labels)
        for row in range(len(labels)):
            for col in range(len(labels)):
                axis.text(col, row, f"{int(counts[row, col])}", ha="center", va="center", fontsize=8,
                          color="white" if share[row, col] > 0.5 else "black")
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(f"{task}: accuracy {entry['accuracy']:.1%} (n={entry['n']})")
    figure.tight_layout()
    save_figure(figure, path)


def _percent(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _markdown(metrics: dict) -> str:
    counts = metrics["split"]["counts"]
    lines = [
        f"# Attribute heads: {', '.join(metrics['tasks'])} on {metrics['dataset']}",
        "",
        f"Dataset `{metrics['dataset']}` at `{metrics['root']}`; backbone `{metrics['backbone']}` (frozen), detector "
        f"`{metrics['detector']}`, fallback `{metrics['fallback']}`; seed {metrics['seed']}; best epoch "
        f"{metrics['best_epoch']} of {metrics['epochs']} (on val). Model: `{metrics.get('model', '')}`.",
        "",
        f"Split by {metrics['split']['by']} (train:val:test = "
        f"{':'.join(f'{share:g}' for share in metrics['split']['shares'])}): "
        + ", ".join(f"{name} {counts[name]['images']} images / {counts[name]['identities']} groups"
                    for name in SPLIT_NAMES) + ".",
        "",
        "| split | head | n | accuracy | balanced accuracy | adjacent-group accuracy | MAE years (group) | "
        "MAE years (expected) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for part in ("val", "test"):
        for task, entry in metrics.get(part, {}).items():
            adjacent = _percent(entry.get("adjacent_accuracy")) if task == "age" else "-"
            group_mae = entry.get("mae_years_group")
            expected_mae = entry.get("mae_years_expected")
            lines.append(f"| {part} | {task} | {entry['n']} | {_percent(entry['accuracy'])} | "
                         f"{_percent(entry['balanced_accuracy'])} | {adjacent} | "
                         f"{'-' if group_mae is None else f'{group_mae:.1f}'} | "
                         f"{'-' if expected_mae is None else f'{expected_mae:.1f}'} |")
    test = metrics.get("test", metrics["val"])
    for task, key in (("age", "per_group"), ("gender", "per_class")):
        if task not in test:
            continue
        lines += ["", f"Test accuracy per {'age group' if task == 'age' else 'gender'}:", "",
                  "| " + " | ".join(test[task][key]) + " |", "|" + "---|" * len(test[task][key]),
                  "| " + " | ".join(f"{_percent(v['accuracy'])} (n={v['n']})" for v in test[task][key].values())
                  + " |"]
    lines += ["", "![confusion matrices on the test split](confusion.png)", ""]
    if "age" in test:
        lines += ["Age: accuracy is the exact group; adjacent-group accuracy allows one group off; MAE in years "
                  "uses the predicted group's representative age (group) or the probability-weighted age "
                  "(expected).", ""]
    config = metrics.get("config", {})
    balancing = ("batches drawn evenly over the label cells" if config.get("sampling") == "balanced"
                 else "inverse-frequency class weights in the loss")
    lines += [f"Class imbalance is handled with {balancing}; age loss {config.get('age_loss', 'ce')}, flip "
              f"{config.get('tta', 'none')}, trunk {config.get('trunk', 'separate')}. The best epoch is chosen on "
              f"val; test figures come from people (or groups) never seen in training.", ""]
    images = metrics["images"]
    lines.append(f"Images: {images['indexed']} indexed, {images['embedded']} embedded, {images['skipped']} "
                 f"skipped; face stages {images['stages']}; labels left out {images['labels_left_out']}.")
    for kind, entry in metrics["problems"].items():
        lines.append(f"- dataset problem: {entry['count']} x {kind} (e.g. {', '.join(entry['examples'])})")
    return "\n".join(lines) + "\n"
