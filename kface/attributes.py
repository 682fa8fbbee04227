"""Age-group and gender heads on the frozen face embedding: train, evaluate, analyze.

The heads share the verification pipeline up to the embedding: the same image loading, detection,
alignment and backbone, through :class:`~kface.embeddings.Embedder`, whose content-keyed cache is the
feature store (an image embedded once by any command is never embedded again). Only the heads are new:
per task a small MLP on the standardised embedding, ``d -> hidden, ReLU, dropout -> K``.

- **Age** is classified into groups (default bins 0-9, 10-19, ..., 60+; ``AgeBins``). Besides
  accuracy, predictions are judged by adjacent-group accuracy (off by at most one group) and by the
  mean absolute error in years, two ways: the representative age of the predicted group, and the
  expected age under the predicted probabilities. A closed group's representative age is its midpoint
  (15 for 10-19, since an age of 19 means 19.0-19.99 years); the open last group's is the mean training
  age in it.
- **Gender** is a two-way classifier (``female``, ``male``).

Training (:func:`train_attributes`) splits the data by identity (no person on two sides; a layout
without identities, such as All-Age-Faces, splits image by image), weights the cross-entropy by inverse
class frequency on the training split (``n / (K * n_k)``, so rare age groups and the minority gender
count as much as the others in total), optimises with Adam, and keeps the epoch with the best mean
validation accuracy over the heads. Every random choice derives from one seed.

A checkpoint is one self-describing file (heads, standardisation, bins, backbone, face settings,
config, seed, versions) that loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import copy
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from . import __version__
from .backbones import DEFAULT_BACKBONE
from .embeddings import Embedder
from .errors import InputError
from .images import ImageSource, decode_image, read_bytes

log = logging.getLogger("kface")

TASKS = ("age", "gender")
GENDERS = ("female", "male")
DEFAULT_AGE_BINS = (0, 10, 20, 30, 40, 50, 60)
DEFAULT_SPLIT = (0.7, 0.1, 0.2)
SPLITS = ("train", "val", "test")
CHECKPOINT_FORMAT = "kface-attributes"
CHECKPOINT_VERSION = 1
#: The open last age group's representative age when the training split has nobody in it.
OPEN_GROUP_SPAN = 10

NO_MODEL_MESSAGE = (
    "no attribute model ships with kface (an age or gender model is only as good as its data); train one, "
    "e.g. kface train-attributes --dataset lfw-gender --root ../shared/data/lfw --out runs/gender, "
    "then pass --model runs/gender/model.pt")


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


# --------------------------------------------------------------------------- the heads


class AttributeHeads(nn.Module):
    """One MLP per task on the standardised embedding: ``d -> hidden, ReLU, dropout -> K``."""

    def __init__(self, dim: int, classes: dict[str, int], hidden: int = 512, dropout: float = 0.3):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.heads = nn.ModuleDict({
            task: nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, count))
            for task, count in classes.items()})

    def forward(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per task for (N, d) embeddings."""
        standardised = (embeddings - self.mean) / self.scale
        return {task: head(standardised) for task, head in self.heads.items()}


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
        if self.split[0] <= 0 or self.split[1] <= 0 or self.split[2] <= 0:
            raise InputError("--split: train, val and test each need a share above 0 (val picks the best "
                             "epoch, test is reported)")

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
    embedder = Embedder(config.backbone, detector=config.detector, fallback=config.fallback, device=config.device,
                        cache=config.cache, max_pixels=config.max_pixels, progress=progress)
    try:
        result = embedder.embed([index.absolute_path(int(i)) for i in usable],
                                boxes=boxes if any(box is not None for box in boxes) else None, on_error="skip")
    finally:
        embedder.close()
    ok = ~np.isnan(result.embeddings).any(axis=1)
    kept = usable[ok]
    if kept.size == 0:
        raise InputError(f"no image under {config.root} could be embedded (e.g. {next(iter(result.errors.values()))})")
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
                    stages)


def _corner_box(box) -> Optional[tuple[int, int, int, int]]:
    """A label file's (x, y, w, h) box as the face stage's (left, top, right, bottom)."""
    if box is None:
        return None
    x, y, width, height = box
    return int(round(x)), int(round(y)), int(round(x + width)), int(round(y + height))


def fit_heads(embeddings: np.ndarray, targets: dict[str, np.ndarray], split: np.ndarray, classes: dict[str, int],
              config: AttributeConfig, progress: bool = False) -> tuple[AttributeHeads, list[dict], int]:
    """Train the heads on the train split; return the best-on-val model, the history and its epoch."""
    from .devices import resolve_device
    from .progress import progress_bar

    device = resolve_device(config.device)
    train = split == 0
    features = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(device)
    labels = {task: torch.from_numpy(target).to(device) for task, target in targets.items()}
    weights = {task: torch.tensor(class_weights(targets[task][train], classes[task]), dtype=torch.float32,
                                  device=device) for task in classes}
    for task in classes:
        for name, part in (("train", 0), ("val", 1)):
            if not np.any(targets[task][split == part] >= 0):
                raise InputError(f"the {name} split has no {task} label: too few identities for --split "
                                 f"{':'.join(f'{share:g}' for share in config.split)}")
    # Dropout draws from torch's global generator: fork it, so the run is seeded and the caller's state kept.
    # The heads are tiny: on a CPU, more than one intra-op thread only adds synchronisation (30x slower
    # on a busy 2-core machine), so training runs on one and restores the caller's setting after.
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[torch.device(device).index or 0] if device.startswith("cuda") else []):
        torch.manual_seed(config.seed)
        torch.set_num_threads(1)
        model = AttributeHeads(embeddings.shape[1], classes, config.hidden, config.dropout).to(device)
        model.mean.copy_(features[torch.from_numpy(train).to(device)].mean(dim=0))
        model.scale.copy_(features[torch.from_numpy(train).to(device)].std(dim=0).clamp_min(1e-6))
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        shuffler = torch.Generator().manual_seed(config.seed)
        train_rows = torch.from_numpy(np.flatnonzero(train))
        val_rows = torch.from_numpy(np.flatnonzero(split == 1)).to(device)
        history: list[dict] = []
        best_state, best_epoch, best_key = None, 0, None
        bar = progress_bar(config.epochs, "training attribute heads", enabled=progress)
        try:
            for epoch in range(1, config.epochs + 1):
                model.train()
                total, batches = 0.0, 0
                for batch in train_rows[torch.randperm(len(train_rows), generator=shuffler)].split(config.batch_size):
                    batch = batch.to(device)
                    loss = _loss(model(features[batch]), {t: labels[t][batch] for t in classes}, weights)
                    if loss is None:
                        continue
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total += loss.item()
                    batches += 1
                val = _evaluate_split(model, features[val_rows], {t: labels[t][val_rows] for t in classes}, weights)
                record = {"epoch": epoch, "train_loss": total / max(batches, 1), **val}
                history.append(record)
                key = (val["val_accuracy"], -val["val_loss"])
                if best_key is None or key > best_key:
                    best_key, best_epoch, best_state = key, epoch, copy.deepcopy(model.state_dict())
                bar.update(1)
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{val['val_accuracy']:.3f}")
        finally:
            bar.close()
            torch.set_num_threads(threads)
    model.load_state_dict(best_state)
    model.eval()
    return model.cpu(), history, best_epoch


def _loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
          weights: dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
    """Sum over the heads of the class-weighted cross-entropy on the rows labelled for each head."""
    total = None
    for task, output in logits.items():
        labelled = targets[task] >= 0
        if not labelled.any():
            continue
        loss = nn.functional.cross_entropy(output[labelled], targets[task][labelled], weight=weights[task])
        total = loss if total is None else total + loss
    return total


@torch.no_grad()
def _evaluate_split(model: AttributeHeads, features: torch.Tensor, targets: dict[str, torch.Tensor],
                    weights: dict[str, torch.Tensor]) -> dict:
    model.eval()
    logits = model(features)
    loss = _loss(logits, targets, weights)
    record: dict[str, float] = {"val_loss": float(loss) if loss is not None else float("nan")}
    accuracies = []
    for task, output in logits.items():
        labelled = targets[task] >= 0
        accuracy = float((output[labelled].argmax(dim=1) == targets[task][labelled]).float().mean())
        record[f"val_{task}_accuracy"] = accuracy
        accuracies.append(accuracy)
    record["val_accuracy"] = float(np.mean(accuracies))
    return record


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


# --------------------------------------------------------------------------- the model file


class AttributeModel:
    """Trained heads with everything needed to use them: tasks, age bins, backbone and face settings."""

    def __init__(self, heads: AttributeHeads, meta: dict):
        self.heads = heads.eval()
        self.meta = meta

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

    @torch.no_grad()
    def probabilities(self, embeddings: np.ndarray) -> dict[str, np.ndarray]:
        """Class probabilities per task, (N, K) float64 rows summing to 1."""
        logits = self.heads(torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)))
        return {task: torch.softmax(output.double(), dim=1).numpy() for task, output in logits.items()}

    def describe(self, probabilities: dict[str, np.ndarray], row: int) -> dict:
        """The documented answer for one face: age group with probabilities, gender with its probability."""
        answer: dict[str, Any] = {"age_group": None, "age_probs": None, "expected_age": None,
                                  "gender": None, "gender_prob": None, "gender_probs": None}
        if "age" in probabilities:
            probs = probabilities["age"][row]
            answer["age_group"] = self.age_labels[int(probs.argmax())]
            answer["age_probs"] = {label: float(p) for label, p in zip(self.age_labels, probs)}
            answer["expected_age"] = float(probs @ np.asarray(self.group_ages))
        if "gender" in probabilities:
            probs = probabilities["gender"][row]
            answer["gender"] = GENDERS[int(probs.argmax())]
            answer["gender_prob"] = float(probs.max())
            answer["gender_probs"] = {gender: float(p) for gender, p in zip(GENDERS, probs)}
        return answer


def save_attribute_model(path: os.PathLike, heads: AttributeHeads, meta: dict) -> None:
    """Write the checkpoint atomically (temp file beside it, then rename)."""
    from .outputs import atomic_path

    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **meta,
               "state_dict": {name: tensor.detach().cpu() for name, tensor in heads.state_dict().items()}}
    with atomic_path(path, suffix=".pt") as temp:
        torch.save(payload, temp)


def load_attribute_model(path: Optional[os.PathLike]) -> AttributeModel:
    """Load a checkpoint written by :func:`train_attributes` (``weights_only=True``)."""
    if path is None:
        raise InputError(NO_MODEL_MESSAGE)
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such model file" if not path.exists() else f"{path}: not a file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise InputError(f"{path}: not a kface model file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not an attribute model (train one with kface train-attributes)")
    if payload.get("format_version") != CHECKPOINT_VERSION:
        raise InputError(f"{path}: attribute model format {payload.get('format_version')} is not supported "
                         f"by kface {__version__} (expected {CHECKPOINT_VERSION})")
    classes = {task: len(names) for task, names in payload["classes"].items()}
    heads = AttributeHeads(int(payload["embedding_size"]), classes, int(payload["config"]["hidden"]),
                           float(payload["config"]["dropout"]))
    heads.load_state_dict(payload.pop("state_dict"))
    return AttributeModel(heads, payload)


def _versions() -> dict:
    return {"kface": __version__, "torch": str(torch.__version__), "numpy": str(np.__version__),
            "python": platform.python_version()}


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
    from .attributes_report import write_attribute_report, write_split_csv
    from .backbones import get_spec
    from .datasets import load_dataset
    from .outputs import write_json

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
                                           progress)
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
            "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
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


def evaluate_splits(model: AttributeModel, features: Features, split: np.ndarray) -> dict:
    """Metrics per task on the val and test splits, plus the headline test figures at the top level."""
    probabilities = model.probabilities(features.embeddings)
    result: dict[str, Any] = {}
    for part in ("val", "test"):
        rows = split == SPLITS.index(part)
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
    test = result["test"]
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
                                       "by": "identity" if any(index.identity_names) else "image"},
        "best_epoch": best_epoch, "epochs": config.epochs, "config": config.to_dict(),
        "images": {"indexed": len(index), "embedded": len(features.paths), "skipped": len(features.skipped),
                   "stages": features.stages, "labels_left_out": features.labels.dropped},
        "skipped_examples": dict(list(features.skipped.items())[:5]),
        "problems": index.problems.to_dict(), "seconds": round(time.time() - started, 1),
        "versions": _versions(),
    }


# --------------------------------------------------------------------------- analyze


class Analyzer:
    """Age group and gender of the faces in an image, with a trained :class:`AttributeModel`."""

    def __init__(self, model: AttributeModel, embedder: Embedder, model_path: str = ""):
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
            answer = self.model.describe(self.model.probabilities(result.embeddings), 0)
            box = result.boxes[0]
            return {**common, **answer, "box": list(box) if box else None, "stage": result.stages[0],
                    "found": bool(result.found[0]), "n_faces": int(result.n_faces[0])}
        faces = self._all_faces(source, name)
        embeddings = self.embedder.backbone.embed_chips(np.stack([face.chip for face in faces]))
        probabilities = self.model.probabilities(embeddings)
        listed = [{**self.model.describe(probabilities, i), "box": list(face.box), "stage": face.stage,
                   "found": face.found} for i, face in enumerate(faces)]
        return {**common, "n_faces": sum(face.found for face in faces), "faces": listed}

    def _all_faces(self, source: ImageSource, name: str):
        from .errors import NoFaceError

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


def load_analyzer(model: Optional[str], detector: str = "dlib", fallback: str = "none", device: str = "auto",
                  cache: bool = True, max_pixels: Optional[int] = None) -> Analyzer:
    """An :class:`Analyzer` for a checkpoint from ``kface train-attributes`` (its backbone, this detector)."""
    attribute_model = load_attribute_model(model)
    embedder = Embedder(attribute_model.backbone, detector=detector, fallback=fallback, device=device, cache=cache,
                        max_pixels=max_pixels)
    return Analyzer(attribute_model, embedder, str(model))
