"""Siamese fine-tuning on a frozen backbone (``kface train``).

The recipe of the VGG-Kface study: both faces of a pair go through a pretrained backbone that stays
frozen, a trainable last layer ending in tanh maps each embedding, the Euclidean distance of the two
outputs becomes P(same), and binary cross-entropy trains it (batch 32, Adam, learning rate on a
cosine schedule from 0.01 to 0.001, 200 epochs). The steps, in order:

1. :class:`TrainConfig`: every setting, typed, with the study's defaults, checked when made.
2. :func:`load_training_data`: the pair file's train and val pairs and the frozen features of their
   images from the :mod:`feature store <kface.training.store>` (computed once per image, ever); pairs
   whose image failed are dropped and counted.
3. :func:`fit`: epoch 0 measures the untrained head, and the base backbone alone as a baseline
   (``baseline`` in ``history.json``; a warning when the saved model does not beat it on val); each
   epoch then trains on a seeded shuffle of the train pairs and measures val: loss and accuracy on
   every val pair, the accuracy at the threshold that ``--threshold-rule`` chooses, and that
   threshold and the overlap area on the study's sample of val (at most 400 pairs of each class,
   drawn once with the seed).
   ``model.pt`` is the best epoch by ``--select``, with that epoch's val distances (the page of
   ``kface serve`` draws them); ``last.pt`` (everything needed to continue) and
   ``history.json`` are rewritten after every epoch, atomically. A closed-form head (``--head lda``,
   ``lda+siamese``) is fitted first, on the train identities, its size chosen on val
   (:func:`fit_projection`); ``lda`` has nothing left to train and stops after epoch 0.

``--unfreeze`` trains the backbone's last layers too (:mod:`kface.backbones.trainable`): the store
then holds the frozen prefix's output for each image and its mirror image, and the defaults change
(:data:`UNFROZEN_DEFAULTS`; ``--patience`` stops early). ``--loss metric`` trains on P x K identity
batches of the train identities' images instead of pairs (:mod:`kface.training.identity`); val pairs
still choose the epoch and the threshold. ``--dataset/--root`` samples the pair file first.

Everything is seeded and resumable: epoch ``e`` shuffles (or draws its identity batches and mirror
views) with generators seeded from ``(seed, e)``, and no other randomness is used (the head starts as the identity, the probability
mapping from the data), so ``--resume`` continues exactly where ``last.pt`` stopped.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) training runs as DistributedDataParallel (gloo on
CPU, nccl on GPU). Every process walks the same shuffled global batches and takes every
``world_size``-th pair of each; the loss is scaled so that the averaged gradient is the one-process
gradient of the whole batch, so N processes train the same model as one, up to float rounding. Only
rank 0 measures val and writes files. On a GPU, the forward pass runs in float16 autocast (AMP).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from ..backbones import DEFAULT_BACKBONE, get_spec
from ..backbones.trainable import VIEWS, check_cut_device
from .checkpoints import (STATE_FORMAT, file_sha256, load_checkpoint, load_state, model_checkpoint, plain,
                          save_checkpoint, versions)
from ..distances import get_distance
from ..errors import InputError, KfaceError
from ..faces import DETECTORS, FALLBACKS
from .store import FeatureSpec, FeatureStore
from ..metrics import (DEFAULT_SAMPLES, accuracy_at, bce_loss, choose_threshold, overlap_area, parse_rule,
                      sample_per_class)
from .samplers import IdentityBatchSampler
from .heads import PairModel, build_pair_model, get_head, get_loss, lda_head_of, loss_class, trainable_parameters

log = logging.getLogger("kface")

SELECT_METRICS = {"overlap": "lower", "accuracy": "higher"}
#: Pairs per forward pass when measuring val (no gradients, so larger than a training batch).
EVAL_BATCH = 4096
#: KDE grid of the per-epoch val overlap and threshold (refined where a density is narrow, see
#: kface.metrics.kde_densities): a quarter of the report's default, 4x cheaper, equal to ~1e-6 here.
VAL_GRID = 512
#: Images per forward pass when measuring through trainable backbone layers.
EMBED_BATCH = 256
#: Gather an epoch's features up front (then batches are views) while that takes at most this much memory.
PREGATHER_BYTES = 1 << 30
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)
LAST = "last.pt"
MODEL = "model.pt"
HISTORY = "history.json"


# -- 1. the configuration ----------------------------------------------------------------------------
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
            from ..datasets import get_adapter
            from ..pairs import parse_ratio, parse_split, require_identities

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


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"--{name} must be an integer >= {minimum}, got {value!r}")


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise InputError(f"--{name} must be a positive number, got {value!r}")


# -- 2. the data -------------------------------------------------------------------------------------
@dataclass
class SplitPairs:
    """One split's pairs as row indices into :attr:`TrainingData.features`, and labels (1 = same)."""

    a: np.ndarray
    b: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def check(self, split: str, minimum: int) -> None:
        n_same, n_diff = int(np.sum(self.labels == 1)), int(np.sum(self.labels == 0))
        if n_same < minimum or n_diff < minimum:
            raise InputError(f"the {split} split needs at least {minimum} same-person and {minimum} different-person "
                             f"pair(s) with usable images; it has {n_same} and {n_diff}")


@dataclass
class TrainingData:
    """What :func:`fit` trains on: the features of every image and the train/val pairs over them.

    ``features`` is (images, *shape) (float32 vectors or float16 maps); ``embedding_size`` is the size
    of the head's input; ``summary`` records where it came from (counts, dropped pairs, stages).
    """

    features: np.ndarray
    train: SplitPairs
    val: SplitPairs
    embedding_size: int
    summary: dict = field(default_factory=dict)
    #: For identity batches (``--loss metric``): rows of ``features`` and the identity of each.
    identity_rows: Optional[np.ndarray] = None
    identities: Optional[list] = None


def load_training_data(config: TrainConfig, *, progress: bool = False, resume: bool = False) -> TrainingData:
    """The train and val pairs of the pair file with the stored frozen features of their images, and for
    identity batches the images of the train identities (see :mod:`kface.training.identity`).

    With ``--dataset`` the pairs are sampled first, into ``<out>/pairs.csv`` (``resume``: the run's own
    pairs.csv is read, never sampled again: it is what ``last.pt`` was trained on). Pairs with an image that
    could not be read or had no face are dropped, counted per split and reported (``note:`` lines);
    too few usable pairs is an :class:`InputError`.
    """
    from .identity import train_identity_images, write_dataset_pairs
    from ..pairs import read_pairs

    pair_file, index = config.pair_file(), None
    if config.dataset is not None and resume:
        from ..datasets import load_dataset

        options = {"manifest": config.manifest} if config.manifest else {}
        index = load_dataset(config.dataset, config.root, progress=progress, **options)
        pairs = read_pairs(pair_file)
    elif config.dataset is not None:
        options = {"manifest": config.manifest} if config.manifest else {}
        pairs, index = write_dataset_pairs(config.dataset, config.root, pair_file, ratio=config.ratio,
                                           pair_count=config.dataset_pairs, split=config.split, seed=config.seed,
                                           group_by=config.group_by, options=options, progress=progress)
    else:
        pairs = read_pairs(pair_file, config.root)
    splits = {name: pairs.select(name) for name in ("train", "val")}
    for name, split in splits.items():
        if len(split) == 0:
            raise InputError(f"{pair_file}: no {name} pairs (training needs train and val splits)")
    # Identities of the train images: for identity batches, and for fitting a closed-form head (which,
    # on a pair file without identity names, falls back to the groups its same-person pairs link).
    named = all(splits["train"].identity_a) and all(splits["train"].identity_b)
    wants_identities = get_head(config.head).closed_form and named
    identity_images = (train_identity_images(pairs, index)
                       if loss_class(config.loss).identity_batches or wants_identities else None)
    paths = sorted({p for split in splits.values() for p in split.abs_path_a + split.abs_path_b}
                   | set(identity_images.paths if identity_images else ()))
    store = FeatureStore(config.feature_spec(), device=config.device, workers=config.workers, progress=progress,
                         max_pixels=config.max_pixels, folder=_feature_store_folder())
    found = store.features(paths)
    row = {path: i for i, path in enumerate(found.paths)}
    indexed, dropped = {}, {}
    for name, split in splits.items():
        a = np.array([row[p] for p in split.abs_path_a], dtype=np.int64)
        b = np.array([row[p] for p in split.abs_path_b], dtype=np.int64)
        usable = found.ok[a] & found.ok[b]
        indexed[name] = SplitPairs(a[usable], b[usable], split.label[usable].astype(np.int8))
        dropped[name] = int((~usable).sum())
    failed = found.errors
    summary = {"pairs_file": str(pair_file), "pairs_sha256": file_sha256(pair_file), "root": str(pairs.root),
               "images": len(paths), "images_failed": len(failed), "stages": found.stage_counts(),
               "computed": found.computed, "pairs": {name: len(split) for name, split in indexed.items()},
               "pairs_dropped": dropped, "feature_store": str(store.folder)}
    identity_rows = identities = None
    if identity_images is not None:
        usable = [(row[path], name) for path, name in zip(identity_images.paths, identity_images.identities)
                  if found.ok[row[path]]]
        identity_rows = np.array([r for r, _ in usable], dtype=np.int64)
        identities = [name for _, name in usable]
        if loss_class(config.loss).identity_batches:
            summary["identity_batches"] = {"images": len(usable), "identities": len(set(identities))}
    if get_head(config.head).closed_form:
        source = "identities of the train split"
        if identity_images is None:
            from .lda import image_classes

            train = indexed["train"]
            identity_rows, classes, source = image_classes(train.a, train.b, train.labels)
            identities = [str(code) for code in classes.tolist()]
        summary["lda"] = {"classes_from": source}
    _report(summary, failed)
    indexed["train"].check("train", 1)
    indexed["val"].check("val", 2)
    return TrainingData(found.features, indexed["train"], indexed["val"], get_spec(config.backbone).embedding_size,
                        summary, identity_rows, identities)


def _feature_store_folder() -> Optional[Path]:
    """Where the feature store lives: the cache folder (None), or a temporary folder removed when the
    process ends, with ``--no-cache`` or when the cache folder cannot be written (a note says so)."""
    import atexit
    import shutil
    import tempfile

    from ..cache import NO_CACHE_ENV, cache_dir

    if os.environ.get(NO_CACHE_ENV) != "1":
        store = cache_dir() / "features"
        try:
            store.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=store):
                return None
        except OSError as exc:
            log.warning("cache: cannot write the feature store in %s (%s); this run keeps its features in a "
                        "temporary folder", store, exc.strerror or exc)
    folder = tempfile.mkdtemp(prefix="kface-features-")
    atexit.register(shutil.rmtree, folder, True)
    return Path(folder)


def _report(summary: dict, failed: dict[str, str]) -> None:
    stages = ", ".join(f"{stage} {count}" for stage, count in sorted(summary["stages"].items()))
    log.info("features: %d images (%d computed now, the rest from the store); stages: %s",
             summary["images"], summary["computed"], stages)
    if "identity_batches" in summary:
        log.info("identity batches: %d images of %d train identities", summary["identity_batches"]["images"],
                 summary["identity_batches"]["identities"])
    if failed:
        shown = "; ".join(list(failed.values())[:3]) + ("; ..." if len(failed) > 3 else "")
        dropped = ", ".join(f"{name} {count}" for name, count in summary["pairs_dropped"].items())
        log.info("%d image(s) failed and their pairs were dropped (%s): %s", len(failed), dropped, shown)


# -- processes ---------------------------------------------------------------------------------------
@dataclass
class Processes:
    """This process's place in a (possibly one-process) training job."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def single(cls, device: str) -> "Processes":
        """This process alone, on ``device`` (auto, cpu or cuda)."""
        from ..devices import resolve_device

        return cls(torch.device(resolve_device(device)))

    @classmethod
    def from_env(cls, device: str) -> "Processes":
        """One process, or DDP when launched by torchrun (``WORLD_SIZE`` > 1): gloo on CPU, nccl on GPU."""
        from ..devices import resolve_device

        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls.single(device)
        resolved = torch.device(resolve_device(device))
        import torch.distributed as dist

        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if resolved.type == "cuda":
            resolved = torch.device("cuda", local_rank)
            torch.cuda.set_device(resolved)
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
        return cls(resolved, rank, local_rank, world_size, owns)

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            import torch.distributed as dist

            values = values.to(self.device)
            dist.all_reduce(values)
        return values

    def local_first(self, work: Callable[[bool], object]):
        """``work(progress)`` on each machine's first process, then on the others (which then find the
        cache full). A failure anywhere stops every process, the failing one with its own error."""
        if self.world_size == 1:
            return work(True)
        import torch.distributed as dist

        result, error = None, None
        for turn in (True, False):
            if (self.local_rank == 0) == turn:
                try:
                    result = work(turn)
                except Exception as exc:  # every process must reach the barrier, whatever happened
                    error = exc
            dist.barrier()
        failed = self.all_sum(torch.tensor([float(error is not None)]))
        if error is not None:
            raise error
        if failed.item() > 0:
            raise KfaceError("another training process failed (see its error)")
        return result

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


# -- 3. the loop -------------------------------------------------------------------------------------
@dataclass
class PairTensors:
    a: torch.Tensor
    b: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def of(cls, split: SplitPairs, device: torch.device) -> "PairTensors":
        return cls(torch.from_numpy(split.a).to(device), torch.from_numpy(split.b).to(device),
                   torch.from_numpy(split.labels.astype(np.float32)).to(device))


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: depends on (seed, epoch) only, so a resumed run draws the same."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


def epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(count, generator=generator)


def batches(features: torch.Tensor, pairs: PairTensors, order: torch.Tensor, batch_size: int, rank: int = 0,
            world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
    """(features a, features b, labels, global batch size) of this process's share of each batch.

    Batches follow ``order``; each process takes every ``world_size``-th pair of each batch, from its
    ``rank``-th on.
    """
    order = order.to(pairs.a.device)
    a, b, labels = pairs.a[order], pairs.b[order], pairs.labels[order]
    row_bytes = features[:1].numel() * features.element_size()
    if 2 * len(order) * row_bytes <= PREGATHER_BYTES:
        # One gather per epoch instead of two per batch: batches become views.
        a, b = features.index_select(0, a), features.index_select(0, b)
        take = lambda rows: rows  # noqa: E731
    else:
        take = lambda rows: features.index_select(0, rows)  # noqa: E731
    for start in range(0, len(order), batch_size):
        stop = min(start + batch_size, len(order))
        mine = slice(start + rank, stop, world_size)
        yield take(a[mine]), take(b[mine]), labels[mine], stop - start


@dataclass
class EpochOutput:
    """What one pass over pairs gives: the mean loss and accuracy (P(same) >= 0.5), and in eval mode
    each pair's distance and P(same)."""

    loss: float
    accuracy: float
    count: int
    distances: Optional[np.ndarray] = None
    probabilities: Optional[np.ndarray] = None


def run_epoch(model: torch.nn.Module, batch_iter, criterion, *, optimizer=None, scaler=None, amp: bool = False,
              world_size: int = 1, reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> EpochOutput:
    """One pass over ``batch_iter`` (see :func:`batches`): trains when given an ``optimizer``, else measures.

    The training loss of a batch is the sum of its per-pair losses times ``world_size`` over the global
    batch size, so DDP's gradient average equals the one-process mean. ``reduce`` sums the loss and
    accuracy totals over processes.
    """
    training = optimizer is not None
    model.train(training)
    losses, logits_all, labels_all, distances_all = [], [], [], []
    device_type = next(model.parameters()).device.type
    # Small steps are bound by per-call overhead: skip what does nothing (autocast and loss scaling
    # off the GPU, the optimiser's zero_grad bookkeeping).
    parameters = [p for group in optimizer.param_groups for p in group["params"]] if training else []
    scaling = scaler is not None and scaler.is_enabled()
    with torch.set_grad_enabled(training):
        for features_a, features_b, labels, global_size in batch_iter:
            with torch.autocast(device_type, dtype=torch.float16) if amp else contextlib.nullcontext():
                distances, logits = model(features_a, features_b)
            pair_losses = criterion(distances.float(), logits.float(), labels)
            if training:
                for parameter in parameters:
                    parameter.grad = None
                # d(batch loss)/d(pair loss): backward from the pair losses directly spares two graph nodes.
                weights = torch.full_like(pair_losses, world_size / global_size)
                if scaling:
                    scaler.scale(pair_losses).backward(weights)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    pair_losses.backward(weights)
                    optimizer.step()
            else:
                distances_all.append(distances.detach().float())
            losses.append(pair_losses.detach())
            logits_all.append(logits.detach().float())
            labels_all.append(labels)
    if not losses:
        return EpochOutput(math.nan, math.nan, 0)
    logits, labels = torch.cat(logits_all), torch.cat(labels_all)
    totals = reduce(torch.stack([torch.cat(losses).sum(), ((logits >= 0).float() == labels).float().sum(),
                                 torch.tensor(float(len(labels)), device=labels.device)]).double())
    count = int(totals[2].item())
    output = EpochOutput(float(totals[0] / count), float(totals[1] / count), count)
    if not training:
        output.distances = torch.cat(distances_all).cpu().numpy().astype(np.float64)
        output.probabilities = torch.sigmoid(logits).cpu().numpy().astype(np.float64)
    return output


@dataclass
class ValPass:
    """One pass over the val pairs, and ``sample``: the pairs (at most ``DEFAULT_SAMPLES`` of each class,
    drawn once with the seed, as the study did) on which the threshold is chosen and the overlap measured,
    which bounds the cost of their density estimates on large val splits."""

    distances: np.ndarray
    probabilities: np.ndarray
    loss: float
    labels: np.ndarray
    sample: np.ndarray

    def sampled(self) -> tuple[np.ndarray, np.ndarray]:
        return self.distances[self.sample], self.labels[self.sample]


def _sampled_overlap(val: ValPass) -> float:
    distances, labels = val.sampled()
    return overlap_area(distances[labels == 1], distances[labels == 0], grid=VAL_GRID)


#: Val measurements by name: each takes the pass and the threshold chosen on the val sample.
VAL_METRICS: dict[str, Callable] = {
    "loss": lambda val, threshold: val.loss,
    "bce": lambda val, threshold: bce_loss(val.probabilities, val.labels),
    "accuracy": lambda val, threshold: accuracy_at(val.distances, val.labels, threshold.value),
    "overlap": lambda val, threshold: _sampled_overlap(val),
}


def evaluate_pairs(model: PairModel, features: torch.Tensor, pairs: PairTensors, criterion,
                   amp: bool = False) -> EpochOutput:
    """Every pair's distance, P(same) and loss, without training (as :func:`run_epoch` measures them).

    With trainable backbone layers in the model each image is embedded once, not once per pair: those
    layers cost far more than a distance (val pairs share their images about three times over).
    """
    if model.suffix is None:
        return run_epoch(model, batches(features, pairs, torch.arange(len(pairs.labels)), EVAL_BATCH), criterion,
                         amp=amp)
    count = len(pairs.labels)
    if count == 0:
        return EpochOutput(math.nan, math.nan, 0)
    model.train(False)
    rows, where = torch.unique(torch.cat([pairs.a, pairs.b]), return_inverse=True)
    with torch.inference_mode():
        with torch.autocast(features.device.type, dtype=torch.float16) if amp else contextlib.nullcontext():
            embeddings = torch.cat([model.embed(features.index_select(0, rows[start:start + EMBED_BATCH])).float()
                                    for start in range(0, len(rows), EMBED_BATCH)])
        distances = model.distance.pairwise(embeddings[where[:count]], embeddings[where[count:]])
        logits = model.probability.logits(distances)
        losses = criterion(distances, logits, pairs.labels)
        correct = ((logits >= 0).float() == pairs.labels).float()
    return EpochOutput(float(losses.mean()), float(correct.mean()), count, distances.double().cpu().numpy(),
                       torch.sigmoid(logits).double().cpu().numpy())


def measure(model: PairModel, features: torch.Tensor, pairs: PairTensors, criterion, rule: str, sample: np.ndarray,
            amp: bool = False) -> tuple[dict, object, ValPass]:
    """Val metrics of ``model`` (see :data:`VAL_METRICS`), the threshold chosen by ``rule`` on the
    ``sample`` of val pairs (indices), and the pass itself (every val pair's distance and label)."""
    output = evaluate_pairs(model, features, pairs, criterion, amp)
    val = ValPass(output.distances, output.probabilities, output.loss, pairs.labels.cpu().numpy().astype(np.int8),
                  sample)
    threshold = choose_threshold(*val.sampled(), rule, split="val", grid=VAL_GRID)
    return {name: float(metric(val, threshold)) for name, metric in VAL_METRICS.items()}, threshold, val


@dataclass
class TrainResult:
    """The outcome of :func:`fit`: where the files are, the best epoch and the whole history."""

    out: Path
    best: dict
    history: list[dict]
    summary: dict
    timing: dict
    main: bool = True
    #: The base backbone's val metrics (see :meth:`TrainingRun.measure_baseline`); None on other ranks.
    baseline: Optional[dict] = None

    @property
    def beats_baseline(self) -> Optional[bool]:
        """Whether the saved model is better than the base backbone by the val ``--select`` metric."""
        if not self.baseline or not self.best:
            return None
        return _better(self.best["value"], self.baseline[self.best["metric"]], SELECT_METRICS[self.best["metric"]])

    @property
    def model_path(self) -> Path:
        return self.out / MODEL


def train(config: TrainConfig, *, resume: bool = False, progress: bool = False,
          on_epoch_end: Optional[Callable[[dict], None]] = None) -> TrainResult:
    """Train as ``config`` says (the whole of ``kface train``); see the module docstring.

    ``on_epoch_end(record)`` is called after each epoch's files are written (``record`` is the
    history row; on ranks other than 0 it has no val metrics).
    """
    processes = Processes.from_env(config.device)
    try:
        check_cut_device(config.unfreeze, processes.device.type)
        _check_out(config, resume)
        if processes.main:
            _remove_stale_temps(Path(config.out))
        started = time.perf_counter()
        data = processes.local_first(lambda show: load_training_data(config, progress=progress and show,
                                                                     resume=resume))
        features_seconds = time.perf_counter() - started
        result = fit(config, data, resume=resume, progress=progress and processes.main, on_epoch_end=on_epoch_end,
                     processes=processes)
        result.timing["features_s"] = features_seconds
        if processes.main:
            _write_history(result.out, config, result.history, result.best, data.summary, result.timing,
                           result.baseline, durable=True)
            _make_durable(result.out / MODEL)
        return result
    finally:
        processes.close()


def _make_durable(path: Path) -> None:
    """fsync a file written without it (and its folder), once, at the end of a run."""
    from ..outputs import fsync_file, fsync_folder

    if path.is_file():
        fsync_file(path)
        fsync_folder(path.parent)


def _remove_stale_temps(out: Path) -> None:
    """Temp files a killed run left beside its outputs (never under a final name) are deleted."""
    from ..outputs import remove_stale_temps

    for name in (LAST, MODEL, HISTORY, DATASET_PAIRS, Path(DATASET_PAIRS).with_suffix(".json").name):
        for stale in remove_stale_temps(out / name):
            log.info("removed %s, left by an interrupted run", stale)


def _check_out(config: TrainConfig, resume: bool) -> None:
    """Before any work: a resume has a compatible run to continue; a new run overwrites none."""
    out = Path(config.out)
    if resume:
        if not (out / LAST).is_file():
            raise InputError(f"--resume: {out / LAST} does not exist (nothing to resume)")
        if not config.pair_file().is_file():
            raise InputError(f"{config.pair_file()}: no such pair file")
        load_last(out / LAST, config, file_sha256(config.pair_file()))
    elif (out / LAST).exists() or (out / MODEL).exists():
        raise InputError(f"{out} already holds a training run; add --resume to continue it, or choose another --out")


def fit(config: TrainConfig, data: TrainingData, *, resume: bool = False, progress: bool = False,
        on_epoch_end: Optional[Callable[[dict], None]] = None, processes: Optional[Processes] = None) -> TrainResult:
    """Train a pair model on ``data``; write ``model.pt``, ``last.pt`` and ``history.json`` to ``config.out``.

    ``on_epoch_end(record)`` is called after each epoch's files are written. ``processes`` (from
    :meth:`Processes.from_env`) makes it one process of a DDP job; by default it runs alone.
    """
    from ..progress import progress_bar

    processes = processes or Processes.single(config.device)
    with _threads_for(data.features), _single_threaded_blas():
        run = TrainingRun(config, data, processes)
        if resume:
            run.resume()
        else:
            run.start()
        # A head without parameters of its own (lda) is finished after epoch 0: fitted and calibrated.
        last_epoch = config.epochs if get_head(config.head).trains else 0
        bar = progress_bar(last_epoch - run.epoch, "training", enabled=progress)
        try:
            while run.epoch < last_epoch and not run.should_stop():
                record = run.next_epoch()
                bar.update(1)
                bar.set_postfix(**_postfix(record))
                if on_epoch_end is not None:
                    on_epoch_end(record)
        finally:
            bar.close()
    if run.epoch < last_epoch and processes.main:
        log.info("stopped early after epoch %d: val %s has not improved for %d epochs (best: epoch %d)",
                 run.epoch, config.select, config.patience, run.best["epoch"])
    result = TrainResult(Path(config.out), run.best or {}, run.history, data.summary, run.timing, processes.main,
                         run.baseline)
    if processes.main and last_epoch > 0 and result.best.get("epoch") == 0:
        log.warning("no epoch of training improved val %s on the untrained model: model.pt is epoch 0, "
                    "before any step", config.select)
    if result.beats_baseline is False:
        log.warning("the trained model (epoch %d) does not beat the base backbone on val by %s (%.4f vs %.4f): "
                    "on this data the base backbone, without --model, verifies as well or better",
                    result.best["epoch"], config.select, result.best["value"], result.baseline[config.select])
    return result


def fit_projection(config: TrainConfig, data: TrainingData, val_sample: np.ndarray):
    """A closed-form head's projection (:mod:`kface.training.lda`): fitted on the train identities' embeddings,
    truncated to the number of dimensions that the val pairs (``val_sample`` for the threshold and
    overlap) choose by ``--select``; what was fitted and chosen is added to ``data.summary["lda"]``."""
    from .lda import choose_dimensions, fit_lda

    features = data.features
    full = fit_lda(features[data.identity_rows], np.asarray(data.identities))
    choice = choose_dimensions(full, features[data.val.a], features[data.val.b], data.val.labels,
                               distance=config.distance, criterion=config.select, rule=config.threshold_rule,
                               sample=val_sample, grid=VAL_GRID)
    data.summary["lda"].update({"classes": full.classes, "images": full.images, "max_dims": full.dims,
                                "scale": full.scale, **choice.to_dict()})
    log.info("lda: fitted on %d images of %d identities; kept %d of %d dimensions (best val %s)",
             full.images, full.classes, choice.dims, full.dims, choice.criterion)
    return full.truncated(choice.dims)


class TrainingRun:
    """One run's state: model, optimiser, schedule, history and best epoch, and the steps that move it on.

    :meth:`start` (epoch 0: calibrate, measure, save) or :meth:`resume` (load ``last.pt``), then
    :meth:`next_epoch` until ``epoch == config.epochs``. Only the main process measures and writes.
    """

    def __init__(self, config: TrainConfig, data: TrainingData, processes: Processes):
        self.config, self.data, self.processes = config, data, processes
        device = processes.device
        self.amp = device.type == "cuda"
        self.out = Path(config.out)
        self.val_sample = sample_per_class(data.val.labels, DEFAULT_SAMPLES, config.seed).indices
        projection = fit_projection(config, data, self.val_sample) if get_head(config.head).closed_form else None
        self.model = build_pair_model(config.head, data.embedding_size, config.distance, config.unfreeze, config.loss,
                                      network=_pretrained_network(config), backbone=config.backbone,
                                      dims=projection.dims if projection is not None else None)
        if projection is not None:
            lda_head_of(self.model.head).load_projection_(projection)
        self.model.to(device)
        self.criterion = get_loss(config.loss, config.margin)
        self.identity_batches = self.criterion.identity_batches
        if self.identity_batches:
            # Identity batches train the embedding only; P(same) is calibrated on their distances instead.
            self.model.probability.requires_grad_(False)
            self.batch_criterion = self.criterion.batch_loss(self.model.distance)
            self.sampler = IdentityBatchSampler(data.identities, config.ids_per_batch, config.images_per_id,
                                                mirror=config.augment == "mirror", seed=config.seed)
        self.features = torch.from_numpy(data.features).to(device)
        self.views = config.unfreeze != "none"  # features are (images, views, ...): the chip, its mirror
        self.train_pairs, self.val_pairs = PairTensors.of(data.train, device), PairTensors.of(data.val, device)
        # Fused Adam: one kernel for all parameters, the fastest step for a small head on CPU and GPU.
        self.optimizer = torch.optim.Adam(trainable_parameters(self.model), lr=config.lr,
                                          weight_decay=config.weight_decay, fused=True)
        # The first epoch trains at lr, the last at min_lr.
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(1, config.epochs - 1), eta_min=config.min_lr)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        self.history: list[dict] = []
        self.best: Optional[dict] = None
        # The best epoch's model.pt payload: it is part of last.pt, so model.pt can always be rebuilt.
        self.best_model: Optional[dict] = None
        self._best_changed = False
        self.epoch = 0
        self.timing = {"train_s": 0.0, "validation_s": 0.0}
        self.baseline: Optional[dict] = None
        self._trained: Optional[torch.nn.Module] = None

    def start(self) -> None:
        """Epoch 0: calibrate P(same) on the train distances of the untrained head, measure val, save."""
        initial = evaluate_pairs(self.model, self.eval_features(), self.train_pairs, self.criterion, self.amp)
        distances = torch.from_numpy(initial.distances).float().to(self.processes.device)
        self.model.probability.calibrate_(distances, self.train_pairs.labels)
        if self.processes.main and self.config.head != "none":  # with no head, epoch 0 is the base backbone
            self.baseline = self.measure_baseline()
        self._finish_epoch({"epoch": 0, "lr": None, "train_loss": None, "train_accuracy": None}, time.perf_counter())

    def measure_baseline(self) -> dict:
        """The base backbone on val, measured as every epoch is: the same features (flip-averaged with
        ``--tta flip``), distance and threshold rule, with no head and the backbone's layers untuned,
        P(same) calibrated on the train pairs. It tells whether training helped at all."""
        base = copy.deepcopy(self.model)  # before any step: its backbone layers are still the pretrained ones
        base.head = torch.nn.Identity()
        train = evaluate_pairs(base, self.eval_features(), self.train_pairs, self.criterion, self.amp)
        base.probability.calibrate_(torch.from_numpy(train.distances).float().to(self.processes.device),
                                    self.train_pairs.labels)
        values, threshold, _ = measure(base, self.eval_features(), self.val_pairs, self.criterion,
                                       self.config.threshold_rule, self.val_sample, self.amp)
        return {**values, "threshold": threshold.value}

    def resume(self) -> None:
        """Continue from ``last.pt`` exactly (model, optimiser, schedule, scaler, history, best)."""
        state = load_last(self.out / LAST, self.config, self.data.summary["pairs_sha256"])
        what = f"{self.out / LAST}"
        load_state(self.model, state["model"], f"{what}: the model state")
        for name, part in (("optimizer", self.optimizer), ("scheduler", self.scheduler), ("scaler", self.scaler)):
            load_state(part, state[name], f"{what}: the {name} state")
        self.history, self.best, self.epoch = state["history"], state["best"], state["epoch"]
        self.baseline = state.get("baseline")  # absent in runs started before it was measured
        self.best_model = state.get("best_model")  # absent in runs started before it was kept there
        if self.best_model is not None:
            # A kill after last.pt's commit but before model.pt's rename: model.pt is rebuilt from it.
            save_checkpoint(self.out / MODEL, self.best_model, durable=True)

    def next_epoch(self) -> dict:
        """Train one epoch on this process's share of the seeded shuffle, then measure and save."""
        started = time.perf_counter()
        epoch = self.epoch + 1
        lr = self.optimizer.param_groups[0]["lr"]
        if self.identity_batches:
            output = self._identity_epoch(epoch)
        else:
            order = epoch_order(len(self.data.train), self.config.seed, epoch)
            features, pairs = self._train_features(epoch)
            output = run_epoch(self._trained_model(), batches(features, pairs, order, self.config.batch_size,
                                                              self.processes.rank, self.processes.world_size),
                               self.criterion, optimizer=self.optimizer, scaler=self.scaler, amp=self.amp,
                               world_size=self.processes.world_size, reduce=self.processes.all_sum)
        self.scheduler.step()
        self.timing["train_s"] += time.perf_counter() - started
        record = {"epoch": epoch, "lr": lr, "train_loss": output.loss, "train_accuracy": output.accuracy}
        return self._finish_epoch(record, started)

    def eval_features(self) -> torch.Tensor:
        """The features a pair model measures with: with backbone layers training, the chip's view alone,
        or both views for ``--tta flip`` (their outputs are averaged)."""
        if not self.views or self.config.tta == "flip":
            return self.features
        return self.features[:, :1]

    def _train_features(self, epoch: int) -> tuple[torch.Tensor, PairTensors]:
        """The features and pairs of one pair-loss epoch. With ``--augment mirror`` every image of every
        pair takes a view drawn with the epoch's seed: image ``i`` in view ``v`` is row ``2 i + v`` of
        the features seen as one view per row."""
        if not self.views:
            return self.features, self.train_pairs
        if self.config.augment == "none":
            return self.features[:, :1], self.train_pairs
        # A stream of its own (third key), apart from the epoch's shuffle.
        rng = np.random.default_rng([self.config.seed, epoch, 1])
        flips = torch.from_numpy(rng.integers(0, VIEWS, (2, len(self.train_pairs.labels)))).to(self.features.device)
        one_view = self.features.flatten(0, 1).unsqueeze(1)
        pairs = self.train_pairs
        return one_view, PairTensors(VIEWS * pairs.a + flips[0], VIEWS * pairs.b + flips[1], pairs.labels)

    def _identity_epoch(self, epoch: int):
        """One epoch of P x K identity batches (this process's share); then P(same) is calibrated on the
        distances of the epoch's batches (so it follows the embedding as it moves)."""
        from .identity import run_identity_epoch

        share = self.sampler.epoch_batches(epoch, self.processes.rank, self.processes.world_size)
        output = run_identity_epoch(self._trained_embedding(), self.features, self.data.identity_rows, share,
                                    self.batch_criterion, self.optimizer, scaler=self.scaler, amp=self.amp,
                                    reduce=self.processes.all_sum, seed=epoch_seed(self.config.seed, epoch))
        self.model.probability.calibrate_(torch.from_numpy(output.distances).float().to(self.processes.device),
                                          torch.from_numpy(output.labels).to(self.processes.device))
        return output

    def _trained_embedding(self) -> torch.nn.Module:
        """The embedding the optimiser steps through on identity batches: alone, or wrapped in DDP."""
        if self._trained is None:
            from .identity import Embedding

            self._trained = Embedding(self.model)
            if self.processes.world_size > 1:
                from torch.nn.parallel import DistributedDataParallel

                device = self.processes.device
                self._trained = DistributedDataParallel(self._trained,
                                                        device_ids=[device.index] if device.type == "cuda" else None)
        return self._trained

    def should_stop(self) -> bool:
        """Early stopping: ``--patience`` epochs have passed without a better val ``--select`` value
        (decided by the main process, which measures val, for every process)."""
        patience = self.config.patience
        stop = (self.processes.main and patience is not None and self.best is not None
                and self.epoch - self.best["epoch"] >= patience)
        return bool(self.processes.all_sum(torch.tensor([float(stop)])).item() > 0)

    def _trained_model(self) -> torch.nn.Module:
        """The model the optimiser steps through: itself, or wrapped in DDP under torchrun."""
        if self._trained is None:
            self._trained = self.model
            if self.processes.world_size > 1:
                from torch.nn.parallel import DistributedDataParallel

                device = self.processes.device
                self._trained = DistributedDataParallel(self.model,
                                                        device_ids=[device.index] if device.type == "cuda" else None)
        return self._trained

    def _finish_epoch(self, record: dict, started: float) -> dict:
        self.epoch = record["epoch"]
        if self.processes.main:
            self._validate(record)
        record["seconds"] = time.perf_counter() - started
        self.history.append(record)
        if self.processes.main:
            self._save_last()
        return record

    def _validate(self, record: dict) -> None:
        """Measure val, add it to ``record``, and save ``model.pt`` when this epoch is the best so far."""
        started = time.perf_counter()
        values, threshold, val = measure(self.model, self.eval_features(), self.val_pairs, self.criterion,
                                         self.config.threshold_rule, self.val_sample, self.amp)
        self.timing["validation_s"] += time.perf_counter() - started
        record.update({f"val_{name}": value for name, value in values.items()})
        record["threshold"] = threshold.value
        if record["epoch"] == 0 and self.config.head == "none":
            self.baseline = {**values, "threshold": threshold.value}
        value = values[self.config.select]
        if self.best is None or _better(value, self.best["value"], SELECT_METRICS[self.config.select]):
            self.best = {"epoch": record["epoch"], "metric": self.config.select, "value": value,
                         "threshold": threshold.to_dict()}
            self.best_model = model_checkpoint(
                self.config, self.model, self.data.features.shape[1:], self.data.embedding_size, threshold, values,
                record["epoch"], self.data.summary, val.distances, val.labels)
            # On the CPU .detach().cpu() shares the live parameters' storage: keep this epoch's values.
            head = self.best_model["head"]
            head["state"] = {name: tensor.clone() for name, tensor in head["state"].items()}
            self._best_changed = True

    def _save_last(self) -> None:
        """Commit the epoch: ``last.pt`` (everything :meth:`resume` needs, the best model included) is
        the one commit point, written atomically and fsynced (file and folder); ``model.pt`` and
        ``history.json`` follow from it. A kill at any moment leaves either no ``last.pt`` (a fresh
        start is accepted) or a whole one (``--resume`` continues and rebuilds ``model.pt``)."""
        save_checkpoint(self.out / LAST, {
            "format": STATE_FORMAT, "format_version": 1, "epoch": self.epoch,
            "config": plain(self.config.to_dict()), "pairs_sha256": self.data.summary["pairs_sha256"],
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": plain(self.scheduler.state_dict()),
            "scaler": self.scaler.state_dict(), "history": plain(self.history), "best": plain(self.best),
            "best_model": self.best_model, "baseline": plain(self.baseline), "versions": versions()}, durable=True)
        if self._best_changed:
            # Not fsynced each time: after a power loss --resume rebuilds it from last.pt; the end of the
            # run (train) makes the final one durable.
            save_checkpoint(self.out / MODEL, self.best_model)
            self._best_changed = False
        _write_history(self.out, self.config, self.history, self.best, self.data.summary, None, self.baseline)


def _better(value: Optional[float], best: Optional[float], direction: str) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return value < best if direction == "lower" else value > best


def _postfix(record: dict) -> dict:
    names = {"train_loss": "loss", "train_accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc",
             "val_overlap": "overlap"}
    return {short: f"{record[key]:.4f}" for key, short in names.items() if record.get(key) is not None}


def _pretrained_network(config: TrainConfig):
    """The unfolded network whose suffix trains (None when nothing of the backbone trains)."""
    if config.unfreeze == "none":
        return None
    from ..backbones.trainable import load_network

    return load_network(config.backbone, config.weights)


@contextlib.contextmanager
def _threads_for(features: np.ndarray):
    """One torch CPU thread while the features are vectors: products this small gain nothing from more,
    and on a busy machine threads waiting for each other cost several times the work (3-5x measured)."""
    if features.ndim > 2:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _single_threaded_blas():
    """NumPy's and SciPy's BLAS on one thread for the small val KDEs (an idle BLAS thread spins, taking
    a third of a core here). SciPy is loaded first, since the limit only reaches libraries loaded by then."""
    import scipy.stats  # noqa: F401
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    return threadpool_limits(limits=1, user_api="blas")


# -- files -------------------------------------------------------------------------------------------
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


def _write_history(out: Path, config: TrainConfig, history: list, best: Optional[dict], summary: dict,
                   timing: Optional[dict], baseline: Optional[dict] = None, durable: bool = False) -> None:
    import json

    from ..outputs import atomic_path

    payload = {"config": config.to_dict(), "seed": config.seed, "select": config.select, "best": best,
               "baseline": baseline, "epochs": history, "data": summary}
    if timing is not None:
        payload["timing"] = timing
    with atomic_path(out / HISTORY, durable=durable) as temp:
        temp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
