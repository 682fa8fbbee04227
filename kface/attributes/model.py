"""Age-group and gender heads on the frozen face embedding: train, evaluate, analyze.

The heads share the verification pipeline up to the embedding: the same image loading, detection,
alignment and backbone, through :class:`~kface.embeddings.Embedder`, whose content-keyed cache is the
feature store (an image embedded once by any command is never embedded again). Only the heads are new:
small MLPs on the standardised embedding (:class:`~kface.attributes.heads.AttributeHeads`), one per task
or one shared hidden layer with an output per task.

- **Age** is classified into groups (default bins 0-9, 10-19, ..., 60+; ``AgeBins``), by cross-entropy
  or by an ordinal (CORAL-style cumulative-logit) head. Besides accuracy, predictions are judged by
  adjacent-group accuracy (off by at most one group) and by the mean absolute error in years, two ways:
  the representative age of the predicted group, and the expected age under the predicted
  probabilities. A closed group's representative age is its midpoint (15 for 10-19, since an age of 19
  means 19.0-19.99 years); the open last group's is the mean training age in it.
- **Gender** is a two-way classifier (``female``, ``male``).

Training (:func:`train_attributes`) splits the data by identity, or by a column such as ``family``
(``group_by``: related people never straddle the split; a layout without identities, such as
All-Age-Faces, splits image by image), balances the classes (inverse-frequency loss weights
``n / (K * n_k)``, or class-balanced draws), optionally trains on each face and its mirror image
(``tta="flip"``, averaged at prediction), optimises with Adam and keeps the epoch with the best mean
validation accuracy over the heads. Every random choice derives from one seed.

A checkpoint is one self-describing file (heads, standardisation, bins, backbone, face settings,
config, seed, versions) that loads with ``torch.load(weights_only=True)``. ``kface analyze`` uses the
shipped Korean heads (:mod:`kface.models.attributes`, ONNX, no torch) unless given such a file.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..backbones import DEFAULT_BACKBONE
from ..embeddings import Embedder
from ..errors import InputError
from ..images import ImageSource, decode_image, read_bytes

log = logging.getLogger("kface")

TASKS = ("age", "gender")
TRUNKS = ("separate", "shared")
AGE_LOSSES = ("ce", "ordinal")
#: weighted: inverse-frequency class weights in the loss; balanced: batches drawn class-balanced.
SAMPLINGS = ("weighted", "balanced")
ATTRIBUTE_TTA = ("none", "flip")
GENDERS = ("female", "male")
DEFAULT_AGE_BINS = (0, 10, 20, 30, 40, 50, 60)
DEFAULT_SPLIT = (0.7, 0.1, 0.2)
SPLITS = ("train", "val", "test")
CHECKPOINT_FORMAT = "kface-attributes"
CHECKPOINT_VERSION = 1
#: The open last age group's representative age when the training split has nobody in it.
OPEN_GROUP_SPAN = 10


# --------------------------------------------------------------------------- age groups


@dataclass(frozen=True)
class AgeBins:
    """Age groups from their lower edges: ``(0, 10, ..., 60)`` means 0-9, 10-19, ..., 60+."""

    edges: tuple[int, ...] = DEFAULT_AGE_BINS

    def __post_init__(self) -> None:
        if len(self.edges) < 2:
            raise InputError("--age-bins: give at least two lower edges, e.g. 0,20,40")
        if any(edge < 0 for edge in self.edges) or any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise InputError(f"--age-bins: lower edges must be increasing ages >= 0, got "
                             f"{','.join(str(edge) for edge in self.edges)}")

    @property
    def labels(self) -> list[str]:
        """``["0-9", "10-19", ..., "60+"]``."""
        closed = [f"{low}-{high - 1}" if high - 1 > low else str(low)
                  for low, high in zip(self.edges, self.edges[1:])]
        return closed + [f"{self.edges[-1]}+"]

    def __len__(self) -> int:
        return len(self.edges)

    def groups(self, ages: Sequence[Optional[float]]) -> np.ndarray:
        """Group index per age; -1 for a missing age or one below the first edge."""
        values = np.array([np.nan if age is None else float(age) for age in ages], dtype=np.float64)
        groups = np.searchsorted(np.asarray(self.edges, dtype=np.float64), values, side="right") - 1
        groups[np.isnan(values)] = -1
        return groups.astype(np.int64)

    def representative_ages(self, train_ages: np.ndarray, train_groups: np.ndarray) -> list[float]:
        """Each group's age in years for the error in years: the midpoint; for the open last group, the
        mean training age in it (``OPEN_GROUP_SPAN / 2`` past its edge when it is empty)."""
        ages = [(low + high) / 2 for low, high in zip(self.edges, self.edges[1:])]
        last = len(self.edges) - 1
        in_last = train_ages[train_groups == last]
        ages.append(float(in_last.mean()) if in_last.size else self.edges[-1] + OPEN_GROUP_SPAN / 2)
        return ages


#: The share of the predicted age distribution an ``age_interval`` covers (its 10th to 90th percentile).
AGE_INTERVAL_COVERAGE = 0.8


def age_interval(probs: np.ndarray, edges: Sequence[int], group_ages: Sequence[float],
                 coverage: float = AGE_INTERVAL_COVERAGE) -> dict:
    """The central ``coverage`` interval of the age in years under the group probabilities ``probs``, each
    group's probability spread evenly over its years (the open last group ends as far past its
    representative age as it starts before it, e.g. 67-80 for 73.5)."""
    bounds = np.append(np.asarray(edges, dtype=np.float64), 2 * group_ages[-1] - edges[-1])
    spread = np.asarray(probs, dtype=np.float64) + 1e-9  # strictly increasing, as np.interp needs
    cumulative = np.concatenate([[0.0], np.cumsum(spread) / spread.sum()])

    def quantile(q: float) -> float:
        return float(np.interp(q, cumulative, bounds))

    tail = (1 - coverage) / 2
    return {"low": round(quantile(tail), 1), "high": round(quantile(1 - tail), 1), "coverage": coverage}


def parse_age_bins(text: str) -> AgeBins:
    """``"0,10,20,30,40,50,60"`` as :class:`AgeBins`."""
    try:
        edges = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        raise InputError(f"--age-bins: expected whole-year lower edges such as 0,10,20,30,40,50,60, "
                         f"got {text!r}") from None
    return AgeBins(edges)


# --------------------------------------------------------------------------- labels and splits


@dataclass
class LabelledData:
    """Targets per task for the images of an index (-1 where an image has no label for that task)."""

    targets: dict[str, np.ndarray]
    ages: np.ndarray  # years, NaN where unknown
    dropped: dict[str, int] = field(default_factory=dict)  # why labels were left out, with counts


def label_targets(attributes: dict[str, list], size: int, tasks: Sequence[str], bins: AgeBins) -> LabelledData:
    """Class indices per task from an index's attribute columns (age groups by ``bins``; female 0, male 1)."""
    dropped: dict[str, int] = {}
    targets: dict[str, np.ndarray] = {}
    age_column = attributes.get("age", [None] * size)
    ages = np.array([np.nan if age is None else float(age) for age in age_column], dtype=np.float64)
    if "age" in tasks:
        groups = bins.groups(age_column)
        below = int(np.sum((groups < 0) & ~np.isnan(ages)))
        if below:
            dropped[f"age below the first group ({bins.edges[0]})"] = below
        if int(np.isnan(ages).sum()):
            dropped["no age label"] = int(np.isnan(ages).sum())
        targets["age"] = groups
    if "gender" in tasks:
        gender_column = attributes.get("gender", [None] * size)
        targets["gender"] = np.array([GENDERS.index(g) if g in GENDERS else -1 for g in gender_column],
                                     dtype=np.int64)
        missing = int(np.sum(targets["gender"] < 0))
        if missing:
            dropped["no gender label"] = missing
    return LabelledData(targets, ages, dropped)


def tasks_for(attributes: dict[str, list], requested: Optional[str]) -> tuple[str, ...]:
    """The tasks to train: ``age``, ``gender``, ``both``, or (None) every one the data labels."""
    labelled = tuple(task for task in TASKS if any(v is not None for v in attributes.get(task, [])))
    if requested is None:
        if not labelled:
            raise InputError("the dataset carries neither age nor gender labels")
        return labelled
    wanted = TASKS if requested == "both" else (requested,)
    for task in wanted:
        if task not in TASKS:
            raise InputError(f"--task: expected age, gender or both, got {requested!r}")
        if task not in labelled:
            raise InputError(f"--task {requested}: the dataset has no {task} labels"
                             + (f" (it has {', '.join(labelled)})" if labelled else ""))
    return wanted


def split_by_group(groups: np.ndarray, shares: Sequence[float], seed: int) -> np.ndarray:
    """Assign every image to train (0), val (1) or test (2), keeping each group on one side.

    Groups are visited in a seeded random order and each goes to the split furthest below its share of
    images, so image counts follow ``shares`` although groups differ in size (LFW's largest identity
    has 530 images, most have one).
    """
    shares = np.asarray(shares, dtype=np.float64)
    unique, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(unique))
    assigned = np.zeros(len(shares))
    split_of_group = np.empty(len(unique), dtype=np.int64)
    for group in order:
        deficit = shares * (assigned.sum() + sizes[group]) - assigned
        split_of_group[group] = int(np.argmax(np.where(shares > 0, deficit, -np.inf)))
        assigned[split_of_group[group]] += sizes[group]
    return split_of_group[inverse]


def class_weights(targets: np.ndarray, classes: int) -> np.ndarray:
    """Inverse-frequency weights ``n / (K * n_k)`` over the labelled targets (0 for an absent class)."""
    labelled = targets[targets >= 0]
    counts = np.bincount(labelled, minlength=classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(classes)
    weights[present] = labelled.size / (present.sum() * counts[present])
    return weights


# --------------------------------------------------------------------------- training


@dataclass
class AttributeConfig:
    """Every setting of one training run (recorded in the checkpoint and the report)."""

    dataset: str
    root: str
    out: str
    dataset_options: dict = field(default_factory=dict)
    task: Optional[str] = None  # age, gender, both; None: every label the dataset carries
    age_bins: tuple[int, ...] = DEFAULT_AGE_BINS
    split: tuple[float, float, float] = DEFAULT_SPLIT
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-4
    hidden: int = 512
    dropout: float = 0.3
    trunk: str = "separate"
    age_loss: str = "ce"
    sampling: str = "weighted"
    tta: str = "none"  # flip: train on each face and its mirror image, average the two at prediction
    group_by: Optional[str] = None  # a dataset column (e.g. family) whose groups stay on one side of the split
    # HOG's pass policy for the training faces (kface.faces.HOG_POLICIES): "fixed" finds the chips cached
    # before the sized pass existed (commit 7ce26a8), which is how the shipped heads were trained.
    hog_policy: str = "sized"
    seed: int = 0
    backbone: str = DEFAULT_BACKBONE
    detector: str = "dlib"
    fallback: str = "whole-image"
    device: str = "auto"
    max_pixels: Optional[int] = None
    cache: bool = True
    report: Optional[str] = None  # report folder; default <out>/report

    def check(self) -> None:
        """Refuse impossible settings before any work is done."""
        if self.epochs < 1 or self.batch_size < 1 or self.hidden < 1:
            raise InputError("--epochs, --batch-size and --hidden must be at least 1")
        if not 0 <= self.dropout < 1:
            raise InputError(f"--dropout must lie in [0, 1), got {self.dropout}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise InputError("--lr must be positive and --weight-decay not negative")
        for name, value, choices in (("--trunk", self.trunk, TRUNKS), ("--age-loss", self.age_loss, AGE_LOSSES),
                                     ("--sampling", self.sampling, SAMPLINGS), ("--tta", self.tta, ATTRIBUTE_TTA)):
            if value not in choices:
                raise InputError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
        if self.split[0] <= 0 or self.split[1] <= 0 or self.split[2] < 0:
            raise InputError("--split: train and val each need a share above 0 (val picks the best epoch; test, "
                             "reported, may be 0 when a separate test set is kept apart)")

    def to_dict(self) -> dict:
        payload = asdict(self)
        payload["age_bins"] = list(self.age_bins)
        payload["split"] = list(self.split)
        return payload


@dataclass
class Features:
    """The frozen embeddings of the usable images of a dataset, with their labels and identities."""

    paths: list[str]
    embeddings: np.ndarray  # (N, d) float32
    groups: np.ndarray  # (N,) identity codes; images without an identity each get their own
    labels: LabelledData
    skipped: dict[str, str]  # path -> why no embedding
    stages: dict[str, int]
    mirrored: Optional[np.ndarray] = None  # (N, d) the mirror-image faces' embeddings (tta flip)


def dataset_features(index, config: AttributeConfig, tasks: Sequence[str], bins: AgeBins,
                     progress: bool = False) -> Features:
    """Embed every image of ``index`` that has a label for one of ``tasks`` (through the cache).

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
    result = _embed(config, "none", sources, boxes, progress)
    ok = ~np.isnan(result.embeddings).any(axis=1)
    mirrored = None
    if config.tta == "flip":
        # The cache holds flip-averaged embeddings (tta=flip), so the mirror image's own embedding is
        # recovered as 2 * average - plain: cached like every other embedding, exact to float rounding.
        averaged = _embed(config, "flip", sources, boxes, progress).embeddings
        ok &= ~np.isnan(averaged).any(axis=1)
        mirrored = (2 * averaged - result.embeddings)[ok].astype(np.float32)
    kept = usable[ok]
    if kept.size == 0:
        raise InputError(f"no image under {config.root} could be embedded (e.g. {next(iter(result.errors.values()))})")
    if config.group_by:
        from ..pairs import identity_groups

        groups = identity_groups(index, index.identity_codes[kept], config.group_by)
    else:
        identity_names = index.identity_names
        groups = np.array([index.identity_codes[i] if identity_names[index.identity_codes[i]] else -1 - i
                           for i in kept], dtype=np.int64)  # no identity: every image its own group
    kept_labels = LabelledData({task: target[kept] for task, target in labels.targets.items()},
                               labels.ages[kept], labels.dropped)
    skipped = {index.paths[int(i)]: result.errors.get(str(index.absolute_path(int(i))), "not embedded")
               for i in usable[~ok]}
    stages: dict[str, int] = {}
    for stage, good in zip(result.stages, ok):
        if good:
            stages[stage] = stages.get(stage, 0) + 1
    return Features([index.paths[int(i)] for i in kept], result.embeddings[ok], groups, kept_labels, skipped,
                    stages, mirrored)


def _embed(config: AttributeConfig, tta: str, sources, boxes, progress: bool):
    from dataclasses import replace

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
    from .heads import AttributeModel, fit_heads, save_attribute_model, versions
    from .report import write_attribute_report, write_split_csv
    from ..backbones import get_spec
    from ..datasets import load_dataset
    from ..outputs import write_json

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
    classes = {task: len(bins) if task == "age" else len(GENDERS) for task in tasks}
    heads, history, best_epoch = fit_heads(features.embeddings, features.labels.targets, split, classes, config,
                                           progress, features.mirrored)
    train_rows = split == 0
    group_ages = (bins.representative_ages(features.labels.ages[train_rows],
                                           features.labels.targets["age"][train_rows]) if "age" in tasks else None)
    spec = get_spec(config.backbone)
    meta = {"tasks": list(tasks),
            "classes": {task: (bins.labels if task == "age" else list(GENDERS)) for task in tasks},
            "age_bins": list(bins.edges), "group_ages": group_ages,
            "embedding_size": int(features.embeddings.shape[1]), "backbone": spec.name,
            "backbone_family": spec.family,
            "face": {"detector": config.detector, "fallback": config.fallback},
            "config": config.to_dict(), "seed": config.seed, "best_epoch": best_epoch,
            "val": {k: v for k, v in history[best_epoch - 1].items() if k.startswith("val_")},
            "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    model = AttributeModel(heads, meta)
    metrics = evaluate_splits(model, features, split)
    metrics.update(_run_summary(config, index, features, split, tasks, best_epoch, started))
    out = Path(config.out)
    model_path = out / "model.pt"
    save_attribute_model(model_path, heads, meta)
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
    from .heads import versions

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


# --------------------------------------------------------------------------- answers


def average_views(views: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of per-view (N, K) probabilities, renormalised in float64 so each row sums to 1 exactly
    (the networks compute in float32)."""
    mean = np.mean([np.asarray(view, dtype=np.float64) for view in views], axis=0)
    return mean / mean.sum(axis=1, keepdims=True)



class AttributeAnswers:
    """What every attribute model (a trained checkpoint, or the shipped ONNX heads) tells from its ``meta``,
    and the documented answer for one face from its probabilities."""

    meta: dict

    @property
    def tasks(self) -> list[str]:
        return list(self.meta["tasks"])

    @property
    def backbone(self) -> str:
        return self.meta["backbone"]

    @property
    def age_labels(self) -> list[str]:
        return list(self.meta["classes"].get("age", []))

    @property
    def group_ages(self) -> list[float]:
        return list(self.meta.get("group_ages") or [])

    @property
    def tta(self) -> str:
        """``flip`` when the model averages a face's probabilities with its mirror image's."""
        return self.meta.get("config", {}).get("tta", "none")

    def describe(self, probabilities: dict[str, np.ndarray], row: int) -> dict:
        """The documented answer for one face: age group with probabilities, gender with its probability."""
        answer: dict[str, Any] = {"age_group": None, "age_probs": None, "expected_age": None, "age_interval": None,
                                  "gender": None, "gender_prob": None, "gender_probs": None}
        if "age" in probabilities:
            probs = probabilities["age"][row]
            answer["age_group"] = self.age_labels[int(probs.argmax())]
            answer["age_probs"] = {label: float(p) for label, p in zip(self.age_labels, probs)}
            answer["expected_age"] = float(probs @ np.asarray(self.group_ages))
            if self.meta.get("age_bins"):
                answer["age_interval"] = age_interval(probs, self.meta["age_bins"], self.group_ages)
        if "gender" in probabilities:
            probs = probabilities["gender"][row]
            answer["gender"] = GENDERS[int(probs.argmax())]
            answer["gender_prob"] = float(probs.max())
            answer["gender_probs"] = {gender: float(p) for gender, p in zip(GENDERS, probs)}
        return answer


# --------------------------------------------------------------------------- analyze


class Analyzer:
    """Age group and gender of the faces in an image, with an attribute model (shipped or trained).

    A model trained with ``tta="flip"`` averages each face's probabilities with its mirror image's; the
    mirror chip is embedded here (the embedder's cache holds the plain embedding only).
    """

    def __init__(self, model: AttributeAnswers, embedder: Embedder, model_path: str = ""):
        self.model = model
        self.embedder = embedder
        self.model_path = model_path

    def analyze(self, source: ImageSource, all_faces: bool = False) -> dict:
        """The answer for the largest face (``all_faces=False``) or for every face, largest first.

        Raises :class:`InputError` for an unreadable image, or one with no face unless the fallback is
        ``whole-image``.
        """
        name = "<upload>" if isinstance(source, (bytes, bytearray)) else str(source)
        common = {"image": name, "model": self.model_path, "backbone": self.model.backbone}
        if not all_faces:
            result = self.embedder.embed([source])
            mirrored = None
            if self.model.tta == "flip":
                entries, _ = self.embedder.faces([source])
                mirrored = self._mirrored([entries[0].chip])
            answer = self.model.describe(self.model.probabilities(result.embeddings, mirrored), 0)
            box = result.boxes[0]
            return {**common, **answer, "box": list(box) if box else None, "stage": result.stages[0],
                    "found": bool(result.found[0]), "n_faces": int(result.n_faces[0])}
        faces = self._all_faces(source, name)
        chips = [face.chip for face in faces]
        embeddings = self.embedder.backbone.embed_chips(np.stack(chips))
        mirrored = self._mirrored(chips) if self.model.tta == "flip" else None
        probabilities = self.model.probabilities(embeddings, mirrored)
        listed = [{**self.model.describe(probabilities, i), "box": list(face.box), "stage": face.stage,
                   "found": face.found} for i, face in enumerate(faces)]
        return {**common, "n_faces": sum(face.found for face in faces), "faces": listed}

    def _mirrored(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        from ..faces import mirror

        return self.embedder.backbone.embed_chips(mirror(np.stack(chips)))

    def _all_faces(self, source: ImageSource, name: str):
        from ..errors import NoFaceError

        kwargs = {"max_pixels": self.embedder.max_pixels} if self.embedder.max_pixels else {}
        image = decode_image(read_bytes(source), name, **kwargs)
        try:
            return self.embedder.finder.find_all(image, name)
        except NoFaceError:
            if self.embedder.settings.fallback != "whole-image":
                raise
            return [self.embedder.finder.whole_image(image)]

    def close(self) -> None:
        self.embedder.close()


def load_analyzer(model: Optional[str] = None, detector: Optional[str] = None, fallback: str = "none",
                  device: str = "auto", cache: bool = True, max_pixels: Optional[int] = None) -> Analyzer:
    """An :class:`Analyzer` for ``model``: a checkpoint from ``kface train-attributes``, or (None) the shipped
    Korean heads (ONNX, no torch). The detector is the caller's or, when None, the model's own (the one
    it was trained with)."""
    if model is None:
        from ..models.attributes import SHIPPED_NAME, load_shipped_attributes

        attribute_model = load_shipped_attributes(device)
        label = SHIPPED_NAME
    else:
        from .heads import load_attribute_model

        attribute_model = load_attribute_model(model)
        label = str(model)
    face = attribute_model.meta.get("face", {})
    embedder = Embedder(attribute_model.backbone, detector=detector or face.get("detector", "dlib"), fallback=fallback,
                        device=device, cache=cache, max_pixels=max_pixels)
    return Analyzer(attribute_model, embedder, label)


def __getattr__(name: str):
    # The torch side lives in kface.attributes.heads (imported only when asked for): the shipped heads run
    # without torch. These names stay reachable here for callers of the one-module API.
    if name in ("AttributeHeads", "AttributeModel", "fit_heads", "load_attribute_model", "save_attribute_model"):
        from . import heads as attribute_heads

        return getattr(attribute_heads, name)
    raise AttributeError(f"module 'kface.attributes.model' has no attribute {name!r}")
