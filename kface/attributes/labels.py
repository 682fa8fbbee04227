"""Attribute labels: tasks, age groups, label targets, identity splits, class weights, the training config."""
from __future__ import annotations

# Age is classified into groups (default bins 0-9, 10-19, ..., 60+; AgeBins). A closed group's representative
# age is its midpoint (15 for 10-19, since an age of 19 means 19.0-19.99 years); the open last group's is the
# mean training age in it. Gender is a two-way classifier (female, male).
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

from ..backbones import DEFAULT_BACKBONE
from ..backbones.cuts import CACHED_CUTS
from ..backbones.trainable import check_cut
from ..errors import InputError
from ..util.cache import CacheSetting, cache_setting

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


# --------------------------------------------------------------------------- training config


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
    # HOG's pass policy for the training faces (kface.faces.detect.HOG_POLICIES): "fixed" finds the chips cached
    # before the sized pass existed (commit 7ce26a8), which is how the frozen-embedding recipes trained.
    hog_policy: str = "sized"
    seed: int = 0
    backbone: str = DEFAULT_BACKBONE
    # The backbone's layers after this cut train with the heads (kface.backbones.cuts.CACHED_CUTS), from the
    # feature store's prefix outputs; "none": the heads read the frozen embedding.
    unfreeze: str = "none"
    suffix_lr: float = 1e-4  # Adam learning rate of the unfrozen layers (the heads train at lr)
    detector: str = "dlib"
    fallback: str = "whole-image"
    device: str = "auto"
    max_pixels: Optional[int] = None
    cache: Union[bool, CacheSetting] = True  # recorded as whether the cache was used
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
        if self.unfreeze != "none":
            if self.unfreeze not in CACHED_CUTS:
                raise InputError(f"--unfreeze: expected none or one of {', '.join(CACHED_CUTS)}, got {self.unfreeze!r}")
            check_cut(self.backbone, self.unfreeze)
            if not self.suffix_lr > 0:
                raise InputError("--suffix-lr must be positive")
            if self.hog_policy != "sized":
                raise InputError("--unfreeze reads the feature store, whose faces come from the default HOG policy")
        if self.split[0] <= 0 or self.split[1] <= 0 or self.split[2] < 0:
            raise InputError("--split: train and val each need a share above 0 (val picks the best epoch; test, "
                             "reported, may be 0 when a separate test set is kept apart)")

    def to_dict(self) -> dict:
        payload = asdict(self)
        payload["age_bins"] = list(self.age_bins)
        payload["split"] = list(self.split)
        payload["cache"] = cache_setting(self.cache).enabled
        return payload
