"""Training the attribute heads: embed a labelled dataset (cached), split it by identity, fit, evaluate and report."""
from __future__ import annotations

# The heads share the verification pipeline up to the embedding (Embedder, whose content-keyed cache is the
# feature store: an image embedded once by any command is never embedded again); only the heads are new.
# With --unfreeze the backbone's layers after a cut train with them, from the prefix features that
# kface train --unfreeze stores too (kface.training.store).
# The data is split by identity, or by a column such as family (related people never straddle the split; a
# layout without identities splits image by image); classes are balanced by inverse-frequency loss weights
# n / (K * n_k) or class-balanced draws; the epoch with the best mean val accuracy over the heads is kept.
# Every random choice derives from one seed. Age is judged by accuracy, adjacent-group accuracy and the
# mean absolute error in years (of the predicted group's age and of the expected age).
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..backbones import get_spec
from ..datasets import load_dataset
from ..embeddings.embedder import Embedder
from ..errors import InputError
from ..faces.workers import default_workers
from ..pairs import identity_groups
from ..training.store import FeatureSpec, FeatureStore
from ..util.outputs import write_json
from ..util.versions import versions
from .answers import AttributeAnswers
from .labels import GENDERS, SPLITS, AgeBins, AttributeConfig, LabelledData, label_targets, split_by_group, tasks_for
from .report import write_attribute_report, write_split_csv

log = logging.getLogger("kface")


@dataclass
class Features:
    """The frozen embeddings of the usable images of a dataset, with their labels and identities."""

    paths: list[str]
    embeddings: np.ndarray  # (N, d) float32; with --unfreeze the (N, ...) float16 prefix features at the cut
    groups: np.ndarray  # (N,) identity codes; images without an identity each get their own
    labels: LabelledData
    skipped: dict[str, str]  # path -> why no embedding
    stages: dict[str, int]
    mirrored: Optional[np.ndarray] = None  # the mirror-image faces' rows, like ``embeddings`` (tta flip)


def dataset_features(index, config: AttributeConfig, tasks: Sequence[str], bins: AgeBins,
                     progress: bool = False) -> Features:
    """Embed every image of ``index`` that has a label for one of ``tasks`` (through the cache), or with
    ``config.unfreeze`` take its backbone's prefix features at that cut (through the feature store).

    Label boxes (the aging set's) replace detection. Images that cannot be embedded are left out and
    listed in ``skipped``.
    """
    labels = label_targets(index.attributes, len(index), tasks, bins)
    usable = np.flatnonzero(np.any(np.stack([labels.targets[t] >= 0 for t in tasks]), axis=0))
    if usable.size == 0:
        raise InputError(f"no image under {config.root} has a usable {' or '.join(tasks)} label")
    boxes = [_corner_box(index.boxes.get(int(i))) for i in usable]
    sources = [index.absolute_path(int(i)) for i in usable]
    boxes = boxes if any(box is not None for box in boxes) else None
    if config.unfreeze != "none":
        if boxes is not None:
            raise InputError(f"--unfreeze reads faces the detector finds; the {config.dataset} layout's label boxes "
                             f"are not supported with it")
        return _cut_features(index, config, usable, labels, progress)
    result = _embed(config, "none", sources, boxes, progress)
    ok = ~np.isnan(result.embeddings).any(axis=1)
    mirrored = None
    if config.tta == "flip":
        # The cache holds flip-averaged embeddings (tta=flip), so the mirror image's own embedding is
        # recovered as 2 * average - plain: cached like every other embedding, exact to float rounding.
        averaged = _embed(config, "flip", sources, boxes, progress).embeddings
        ok &= ~np.isnan(averaged).any(axis=1)
        mirrored = (2 * averaged - result.embeddings)[ok].astype(np.float32)
    skipped = {index.paths[int(i)]: result.errors.get(str(index.absolute_path(int(i))), "not embedded")
               for i in usable[~ok]}
    return _features(index, config, usable, ok, labels, result.embeddings[ok], mirrored, skipped,
                     list(np.asarray(result.stages)[ok]))


def _cut_features(index, config: AttributeConfig, usable: np.ndarray, labels: LabelledData, progress: bool) -> Features:
    """The backbone's prefix outputs at ``config.unfreeze`` for the chip and the mirrored chip of each image,
    from the feature store (:mod:`kface.training.store`; shared with ``kface train --unfreeze``)."""
    spec = FeatureSpec(backbone=config.backbone, cut=config.unfreeze, detector=config.detector,
                       fallback=config.fallback)
    store = FeatureStore(spec, device=config.device, workers=default_workers(), progress=progress,
                         max_pixels=config.max_pixels)
    found = store.features([str(index.absolute_path(int(i))) for i in usable])
    ok = found.ok
    skipped = {index.paths[int(i)]: found.errors.get(path, "not embedded")
               for i, path, good in zip(usable, found.paths, ok) if not good}
    return _features(index, config, usable, ok, labels, found.features[ok, 0],
                     found.features[ok, 1] if config.tta == "flip" else None, skipped,
                     [stage for stage, good in zip(found.stages, ok) if good])


def _features(index, config: AttributeConfig, usable: np.ndarray, ok: np.ndarray, labels: LabelledData,
              rows: np.ndarray, mirrored: Optional[np.ndarray], skipped: dict[str, str], stages: list[str]) -> Features:
    """:class:`Features` of the ``ok`` images among ``usable``, with their labels and identity groups."""
    kept = usable[ok]
    if kept.size == 0:
        raise InputError(f"no image under {config.root} could be embedded (e.g. {next(iter(skipped.values()), '')})")
    if config.group_by:
        groups = identity_groups(index, index.identity_codes[kept], config.group_by)
    else:
        identity_names = index.identity_names
        groups = np.array([index.identity_codes[i] if identity_names[index.identity_codes[i]] else -1 - i
                           for i in kept], dtype=np.int64)  # no identity: every image its own group
    kept_labels = LabelledData({task: target[kept] for task, target in labels.targets.items()},
                               labels.ages[kept], labels.dropped)
    counts: dict[str, int] = {}
    for stage in stages:
        counts[stage] = counts.get(stage, 0) + 1
    return Features([index.paths[int(i)] for i in kept], rows, groups, kept_labels, skipped, counts, mirrored)


def _embed(config: AttributeConfig, tta: str, sources, boxes, progress: bool):
    embedder = Embedder(config.backbone, detector=config.detector, fallback=config.fallback, tta=tta,
                        device=config.device, cache=config.cache, max_pixels=config.max_pixels, progress=progress)
    # Embedder takes no HOG policy of its own yet; its settings (the cache key, the finder made on first
    # use) are replaced before any face is looked up.
    embedder.settings = replace(embedder.settings, policy=config.hog_policy)
    try:
        return embedder.embed(sources, boxes=boxes, on_error="skip")
    finally:
        embedder.close()


def _corner_box(box) -> Optional[tuple[int, int, int, int]]:
    """A label file's (x, y, w, h) box as the face stage's (left, top, right, bottom)."""
    if box is None:
        return None
    x, y, width, height = box
    return int(round(x)), int(round(y)), int(round(x + width)), int(round(y + height))


# --------------------------------------------------------------------------- metrics


def age_metrics(probabilities: np.ndarray, groups: np.ndarray, ages: np.ndarray, group_ages: Sequence[float],
                labels: Sequence[str]) -> dict:
    """Accuracy, adjacent-group accuracy, error in years, per-group accuracy and the confusion matrix.

    ``probabilities`` (N, K) rows sum to 1; ``groups`` the true group per row; ``ages`` the true ages in
    years (NaN rows are left out of the errors in years); ``group_ages`` each group's age in years.
    """
    predicted = probabilities.argmax(axis=1)
    representative = np.asarray(group_ages, dtype=np.float64)
    known = ~np.isnan(ages)
    confusion = _confusion(groups, predicted, len(labels))
    per_group = {label: {"n": int(confusion[k].sum()),
                         "accuracy": float(confusion[k, k] / confusion[k].sum()) if confusion[k].sum() else None}
                 for k, label in enumerate(labels)}
    recalls = [group["accuracy"] for group in per_group.values() if group["accuracy"] is not None]
    return {
        "n": int(len(groups)),
        "accuracy": float(np.mean(predicted == groups)),
        "adjacent_accuracy": float(np.mean(np.abs(predicted - groups) <= 1)),
        "balanced_accuracy": float(np.mean(recalls)),
        "mae_years_group": float(np.mean(np.abs(representative[predicted] - ages)[known])) if known.any() else None,
        "mae_years_expected": (float(np.mean(np.abs(probabilities @ representative - ages)[known]))
                               if known.any() else None),
        "per_group": per_group,
        "labels": list(labels),
        "confusion": confusion.tolist(),
    }


def gender_metrics(probabilities: np.ndarray, truth: np.ndarray) -> dict:
    """Accuracy, balanced accuracy, per-gender accuracy and the confusion matrix (rows true, columns predicted)."""
    predicted = probabilities.argmax(axis=1)
    confusion = _confusion(truth, predicted, len(GENDERS))
    per_class = {gender: {"n": int(confusion[k].sum()),
                          "accuracy": float(confusion[k, k] / confusion[k].sum()) if confusion[k].sum() else None}
                 for k, gender in enumerate(GENDERS)}
    recalls = [entry["accuracy"] for entry in per_class.values() if entry["accuracy"] is not None]
    return {"n": int(len(truth)), "accuracy": float(np.mean(predicted == truth)),
            "balanced_accuracy": float(np.mean(recalls)), "per_class": per_class, "labels": list(GENDERS),
            "confusion": confusion.tolist()}


def _confusion(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    return np.bincount(truth * classes + predicted, minlength=classes * classes).reshape(classes, classes)


# --------------------------------------------------------------------------- the whole run


@dataclass
class TrainingResult:
    """What :func:`train_attributes` wrote and measured."""

    model_path: Path
    report_dir: Path
    metrics: dict


def train_attributes(config: AttributeConfig, progress: bool = False) -> TrainingResult:
    """Index, embed (cached), split by identity, train the heads, evaluate on test, write model and report.

    Writes ``<out>/model.pt`` (best epoch on val), ``<out>/history.json``, ``<out>/split.csv`` and the
    report folder (``metrics.json``, ``confusion.png``, ``report.md``).
    """
    from .heads import AttributeModel, AttributeNetwork, fit_heads, save_attribute_model
    config.check()
    bins = AgeBins(tuple(config.age_bins))
    started = time.time()
    index = load_dataset(config.dataset, config.root, progress=progress, **config.dataset_options)
    tasks = tasks_for(index.attributes, config.task)
    for line in index.problems.lines():
        log.info("dataset: %s", line)
    features = dataset_features(index, config, tasks, bins, progress)
    if features.skipped:
        log.info("%d images left out (e.g. %s)", len(features.skipped), next(iter(features.skipped.values())))
    split = split_by_group(features.groups, config.split, config.seed)
    edited = set(np.asarray(index.paths, dtype=object)[index.edited_mask()])
    if edited:  # photos made from others (age edits) train, never choose the epoch or score: out of val and test
        split[np.array([path in edited for path in features.paths]) & (split != 0)] = -1
    classes = {task: len(bins) if task == "age" else len(GENDERS) for task in tasks}
    network, history, best_epoch = fit_heads(features.embeddings, features.labels.targets, split, classes, config,
                                             progress, features.mirrored)
    heads = network.heads if isinstance(network, AttributeNetwork) else network  # --unfreeze: on the trained layers
    train_rows = split == 0
    group_ages = (bins.representative_ages(features.labels.ages[train_rows],
                                           features.labels.targets["age"][train_rows]) if "age" in tasks else None)
    spec = get_spec(config.backbone)
    meta = {"tasks": list(tasks),
            "classes": {task: (bins.labels if task == "age" else list(GENDERS)) for task in tasks},
            "age_bins": list(bins.edges), "group_ages": group_ages,
            "embedding_size": int(heads.mean.numel()), "backbone": spec.name,
            "input": "embeddings" if config.unfreeze == "none" else "chips",
            "backbone_family": spec.family,
            "face": {"detector": config.detector, "fallback": config.fallback},
            "config": config.to_dict(), "seed": config.seed, "best_epoch": best_epoch,
            "val": {k: v for k, v in history[best_epoch - 1].items() if k.startswith("val_")},
            "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    model = AttributeModel(network, meta)
    metrics = evaluate_splits(model, features, split)
    metrics.update(_run_summary(config, index, features, split, tasks, best_epoch, started))
    out = Path(config.out)
    model_path = out / "model.pt"
    save_attribute_model(model_path, network, meta)
    write_json(out / "history.json", {"seed": config.seed, "best_epoch": best_epoch, "epochs": history})
    write_split_csv(out / "split.csv", features, split)
    report_dir = Path(config.report) if config.report else out / "report"
    metrics["model"] = str(model_path)
    write_attribute_report(report_dir, metrics)
    return TrainingResult(model_path, report_dir, metrics)


def evaluate_splits(model: "AttributeAnswers", features: Features, split: np.ndarray) -> dict:
    """Metrics per task on the val and test splits, plus the headline figures at the top level (test's; val's
    where the split has no test share)."""
    probabilities = model.probabilities(features.embeddings, features.mirrored)
    result: dict[str, Any] = {}
    for part in ("val", "test"):
        rows = split == SPLITS.index(part)
        if not rows.any():
            continue
        entry = {}
        for task in model.tasks:
            truth = features.labels.targets[task][rows]
            labelled = truth >= 0
            probs = probabilities[task][rows][labelled]
            if not labelled.any():
                continue
            if task == "age":
                entry["age"] = age_metrics(probs, truth[labelled], features.labels.ages[rows][labelled],
                                           model.group_ages, model.age_labels)
            else:
                entry["gender"] = gender_metrics(probs, truth[labelled])
        result[part] = entry
    test = result.get("test", result["val"])
    if "age" in test:
        result.update({"age_accuracy": test["age"]["accuracy"],
                       "age_adjacent_accuracy": test["age"]["adjacent_accuracy"],
                       "age_mae_years": test["age"]["mae_years_expected"]})
    if "gender" in test:
        result["gender_accuracy"] = test["gender"]["accuracy"]
    return result


def _run_summary(config: AttributeConfig, index, features: Features, split: np.ndarray, tasks: Sequence[str],
                 best_epoch: int, started: float) -> dict:
    counts = {}
    for part, name in enumerate(SPLITS):
        rows = split == part
        counts[name] = {"images": int(rows.sum()), "identities": int(len(np.unique(features.groups[rows]))),
                        **{f"{task}_labelled": int(np.sum(features.labels.targets[task][rows] >= 0))
                           for task in tasks}}
        if "age" in tasks:
            groups = features.labels.targets["age"][rows]
            counts[name]["age_groups"] = np.bincount(groups[groups >= 0], minlength=len(config.age_bins)).tolist()
        if "gender" in tasks:
            genders = features.labels.targets["gender"][rows]
            counts[name]["genders"] = dict(zip(GENDERS, np.bincount(genders[genders >= 0], minlength=2).tolist()))
    return {
        "dataset": config.dataset, "root": str(index.root), "dataset_options": index.options,
        "tasks": list(tasks), "backbone": config.backbone, "detector": config.detector, "fallback": config.fallback,
        "seed": config.seed, "split": {"shares": list(config.split), "counts": counts,
                                       "by": config.group_by or ("identity" if any(index.identity_names) else "image")},
        "best_epoch": best_epoch, "epochs": config.epochs, "config": config.to_dict(),
        "images": {"indexed": len(index), "embedded": len(features.paths), "skipped": len(features.skipped),
                   "stages": features.stages, "labels_left_out": features.labels.dropped},
        "skipped_examples": dict(list(features.skipped.items())[:5]),
        "problems": index.problems.to_dict(), "seconds": round(time.time() - started, 1),
        "versions": versions(),
    }
