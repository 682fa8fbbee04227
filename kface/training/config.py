"""Training settings (:class:`TrainConfig`), resumed-run option merging and the run folder's files."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

from ..backbones import DEFAULT_BACKBONE, get_spec
from ..backbones.trainable import check_cut_device
from ..datasets import get_adapter
from ..distances import get_distance
from ..errors import InputError
from ..faces.detect import DETECTORS, FALLBACKS
from ..metrics import parse_rule
from ..pairs import parse_ratio, parse_split, require_identities
from ..util.outputs import atomic_path
from .checkpoints import STATE_FORMAT, load_checkpoint
from .heads import get_head
from .losses import get_loss, loss_class
from .store import FeatureSpec

SELECT_METRICS = {"overlap": "lower", "accuracy": "higher"}
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)
LAST = "last.pt"
MODEL = "model.pt"
HISTORY = "history.json"


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting; the defaults reproduce the study. Checked when made (bad values fail).

    ``device``, ``workers``, ``max_pixels`` and ``out`` say how and where to run, not what to train:
    only they may differ when a run is resumed.
    """

    pairs: Optional[str]
    out: str
    root: Optional[str] = None
    dataset: Optional[str] = None
    manifest: Optional[str] = None
    dataset_pairs: int = 6000
    ratio: str = "4:6"
    split: str = "0.8:0.1:0.1"
    group_by: Optional[str] = None
    backbone: str = DEFAULT_BACKBONE
    weights: Optional[str] = None
    head: str = "siamese"
    distance: str = "euclidean"
    loss: str = "bce"
    margin: Optional[float] = None
    unfreeze: str = "none"
    augment: str = "none"
    ids_per_batch: int = 32
    images_per_id: int = 4
    # A dataset column (e.g. family, gender): identity batches take their identities one group at a time,
    # so the negatives the loss mines are relatives, or people of one gender (see samplers).
    batch_groups: Optional[str] = None
    tta: str = "none"
    detector: str = "auto"
    upsample: int = 1
    fallback: str = "none"
    epochs: int = 200
    batch_size: int = 32
    lr: float = 0.01
    min_lr: float = 0.001
    weight_decay: float = 0.0
    patience: Optional[int] = None
    seed: int = 0
    select: str = "overlap"
    threshold_rule: str = "intersection"
    device: str = "auto"
    workers: int = DEFAULT_WORKERS
    max_pixels: Optional[int] = None

    def __post_init__(self) -> None:
        _check_int("epochs", self.epochs, 1)
        _check_int("batch-size", self.batch_size, 1)
        _check_int("seed", self.seed, 0)
        _check_int("workers", self.workers, 0)
        _check_int("upsample", self.upsample, 0)
        _check_int("ids-per-batch", self.ids_per_batch, 2)
        _check_int("images-per-id", self.images_per_id, 2)
        _check_int("dataset-pairs", self.dataset_pairs, 1)
        if self.max_pixels is not None:
            _check_int("max-pixels", self.max_pixels, 1)
        if self.patience is not None:
            _check_int("patience", self.patience, 1)
        _check_positive("lr", self.lr)
        if self.margin is not None:
            _check_positive("margin", self.margin)
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) \
                or not 0 <= self.weight_decay < math.inf:
            raise InputError(f"--weight-decay must be a number >= 0, got {self.weight_decay!r}")
        self._check_source()
        if self.augment not in AUGMENTATIONS:
            raise InputError(f"unknown --augment {self.augment!r}; choose one of: {', '.join(AUGMENTATIONS)}")
        if self.batch_groups is not None and not loss_class(self.loss).identity_batches:
            raise InputError("--batch-groups shapes identity batches, which --loss metric and --loss arcface train on")
        if self.augment == "mirror" and self.unfreeze == "none":
            raise InputError("--augment mirror trains on mirrored chips, which needs --unfreeze (the frozen "
                             "embeddings are not stored mirrored)")
        if self.unfreeze == "all" and self.device == "cpu":
            check_cut_device(self.unfreeze, "cpu")
        if not (isinstance(self.min_lr, (int, float)) and 0 <= self.min_lr <= self.lr):
            raise InputError(f"--min-lr must lie in [0, --lr={self.lr}], got {self.min_lr!r}")
        if self.select not in SELECT_METRICS:
            raise InputError(f"unknown --select {self.select!r}; choose one of: {', '.join(SELECT_METRICS)}")
        if self.detector not in DETECTORS:
            raise InputError(f"unknown --detector {self.detector!r}; choose one of: {', '.join(DETECTORS)}")
        if self.fallback not in FALLBACKS:
            raise InputError(f"unknown --fallback {self.fallback!r}; choose one of: {', '.join(FALLBACKS)}")
        if self.tta not in ("none", "flip"):
            raise InputError(f"unknown --tta {self.tta!r}; choose one of: none, flip")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise InputError(f"unknown --device {self.device!r}; choose one of: auto, cpu, cuda")
        parse_rule(self.threshold_rule)
        get_head(self.head)
        get_distance(self.distance)
        get_loss(self.loss, self.margin)  # an unknown loss or a margin it cannot take fails here
        wanted = loss_class(self.loss).distance
        if wanted is not None and self.distance != wanted:
            raise InputError(f"--loss {self.loss} learns a {wanted} embedding: train it with --distance {wanted}")
        get_spec(self.backbone)
        self.feature_spec()
        if self.head == "none" and self.unfreeze == "none":
            raise InputError("--head none with --unfreeze none leaves nothing to train")
        if get_head(self.head).closed_form and self.unfreeze != "none":
            raise InputError(f"--head {self.head} is fitted on frozen embeddings; it cannot be combined with "
                             f"--unfreeze {self.unfreeze}")

    def _check_source(self) -> None:
        if (self.pairs is None) == (self.dataset is None):
            raise InputError("training needs either --pairs FILE or --dataset KIND --root DIR (not both)")
        if self.dataset is not None:
            get_adapter(self.dataset)
            require_identities(self.dataset)
            if self.root is None:
                raise InputError(f"--dataset {self.dataset} needs --root DIR")
            if (self.dataset == "csv") != (self.manifest is not None):
                raise InputError("--manifest goes with --dataset csv, and --dataset csv needs --manifest")
            parse_ratio(self.ratio)
            parse_split(self.split)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from a dict (a saved run's, or options); unknown keys are an error, not ignored.

        Settings given as None take their defaults: the study's, or, when ``unfreeze`` trains backbone
        layers, :data:`UNFROZEN_DEFAULTS` where those differ.
        """
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown training setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if values.get("out") is None:
            raise InputError("training needs --out")
        given = {key: value for key, value in values.items() if value is not None}
        if given.get("unfreeze", "none") != "none":
            given = {**UNFROZEN_DEFAULTS, **given}
        return cls(**{"pairs": None, **given})

    def pair_file(self) -> Path:
        """The pair file read: ``--pairs``, or the one sampled from ``--dataset`` into the run folder."""
        return Path(self.pairs) if self.pairs is not None else Path(self.out) / DATASET_PAIRS

    def to_dict(self) -> dict:
        return asdict(self)

    def feature_spec(self) -> FeatureSpec:
        """What decides the stored features (the frozen part of the network and the face stage)."""
        return FeatureSpec(self.backbone, self.unfreeze, self.tta, self.detector, self.upsample, self.fallback,
                           self.weights)

    def differences(self, other: "TrainConfig") -> list[str]:
        """``name: ours != theirs`` for each setting that changes what is trained (paths compared resolved)."""
        def normal(config: TrainConfig) -> dict:
            values = {key: value for key, value in config.to_dict().items() if key not in RUN_FIELDS}
            for key in ("pairs", "root", "weights", "manifest"):
                if values[key] is not None:
                    values[key] = os.path.abspath(values[key])
            return values

        ours, theirs = normal(self), normal(other)
        return [f"{key}: {theirs[key]!r} -> {ours[key]!r}" for key in ours if ours[key] != theirs[key]]


RUN_FIELDS = ("out", "device", "workers", "max_pixels")
AUGMENTATIONS = ("none", "mirror")
#: Defaults that differ when backbone layers train (``--unfreeze``), chosen on the degraded-LFW
#: benchmark (bench/domain_shift.py, val split) so that they work without tuning: the pretrained
#: layers move slowly (Adam from lr 1e-5 down to 1e-6, a little weight decay; at 1e-4 and above
#: val got worse before it got better), no head on top, mirror augmentation, and early stopping on val.
UNFROZEN_DEFAULTS = {"head": "none", "lr": 1e-5, "min_lr": 1e-6, "weight_decay": 1e-4, "epochs": 20,
                     "patience": 5, "augment": "mirror"}
#: The pair file a --dataset run samples into its folder.
DATASET_PAIRS = "pairs.csv"
#: The lock file a run holds in its folder while it writes there (kface.util.locks): a second run there is refused.
RUN_LOCK = ".lock"


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"--{name} must be an integer >= {minimum}, got {value!r}")


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise InputError(f"--{name} must be a positive number, got {value!r}")



def load_last(path: Path, config: TrainConfig, pairs_sha256: str) -> dict:
    """The training state in ``last.pt``, checked against the config and pair file of this run."""
    state = load_checkpoint(path, expected=STATE_FORMAT)
    saved = TrainConfig.from_dict(state["config"])
    differences = config.differences(saved)
    if differences:
        raise InputError(f"--resume: {path.parent} was trained with other settings ({'; '.join(differences)}); "
                         f"resume with the same settings or train into another --out")
    if state["pairs_sha256"] != pairs_sha256:
        raise InputError(f"--resume: {config.pairs} changed since {path.parent} started training")
    return state


def saved_config(out: os.PathLike) -> dict:
    """The settings of the run in ``out`` (from its ``last.pt``), for resuming without repeating them."""
    path = Path(out) / LAST
    if not path.is_file():
        raise InputError(f"--resume: {path} does not exist (nothing to resume)")
    return dict(load_checkpoint(path, expected=STATE_FORMAT)["config"])


def write_history(out: Path, config: TrainConfig, history: list, best: Optional[dict], summary: dict,
                   timing: Optional[dict], baseline: Optional[dict] = None, durable: bool = False) -> None:
    payload = {"config": config.to_dict(), "seed": config.seed, "select": config.select, "best": best,
               "baseline": baseline, "epochs": history, "data": summary}
    if timing is not None:
        payload["timing"] = timing
    with atomic_path(out / HISTORY, durable=durable) as temp:
        temp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
