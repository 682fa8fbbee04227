"""The data a training run fits on: pairs as rows into the stored features of their images."""
from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..backbones import get_spec
from ..datasets import load_dataset
from ..errors import InputError
from ..pairs import identity_groups, read_pairs
from ..util.cache import CacheSetting
from .checkpoints import file_sha256
from .config import TrainConfig
from .heads import get_head
from .lda import image_classes
from .losses import loss_class
from .store import FeatureStore

log = logging.getLogger("kface")


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
    #: With ``--batch-groups``: the group (e.g. family) of each of ``identities``.
    identity_groups: Optional[list] = None


def load_training_data(config: TrainConfig, *, progress: bool = False, resume: bool = False,
                       cache: CacheSetting = CacheSetting()) -> TrainingData:
    """The train and val pairs of the pair file with the stored frozen features of their images, and for
    identity batches the images of the train identities (see :mod:`kface.training.identity`).

    With ``--dataset`` the pairs are sampled first, into ``<out>/pairs.csv`` (``resume``: the run's own
    pairs.csv is read, never sampled again: it is what ``last.pt`` was trained on). Pairs with an image that
    could not be read or had no face are dropped, counted per split and reported (``note:`` lines);
    too few usable pairs is an :class:`InputError`. ``cache``: the caches the images and features go through.
    """
    from .identity import train_identity_images

    pair_file = config.pair_file()
    pairs, index = _read_pairs(config, pair_file, progress, resume)
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
                         max_pixels=config.max_pixels, folder=_feature_store_folder(cache), cache=cache)
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
    identity_rows, identities = _identity_rows(config, identity_images, found, row, indexed["train"], summary)
    _report(summary, failed)
    indexed["train"].check("train", 1)
    indexed["val"].check("val", 2)
    return TrainingData(found.features, indexed["train"], indexed["val"], get_spec(config.backbone).embedding_size,
                        summary, identity_rows, identities, _identity_groups(config, index, identities))


def _identity_groups(config: TrainConfig, index, identities: Optional[list]) -> Optional[list]:
    """The ``--batch-groups`` column's value for each identity batch item (None without the option)."""
    if config.batch_groups is None or identities is None:
        return None
    if index is None:
        raise InputError(f"--batch-groups {config.batch_groups} reads a dataset column: train from --dataset/--root")
    codes = identity_groups(index, index.identity_codes, config.batch_groups)  # one per image, checked per person
    group_of = {index.identity_names[identity]: int(code) for identity, code in zip(index.identity_codes, codes)}
    return [group_of[name] for name in identities]


def _read_pairs(config: TrainConfig, pair_file: Path, progress: bool, resume: bool):
    """The run's pairs and, with ``--dataset``, the dataset index they were sampled from (else None)."""
    from .identity import write_dataset_pairs

    if config.dataset is None:
        return read_pairs(pair_file, config.root), None
    options = {"manifest": config.manifest} if config.manifest else {}
    if resume:
        index = load_dataset(config.dataset, config.root, progress=progress, **options)
        return read_pairs(pair_file), index
    return write_dataset_pairs(config.dataset, config.root, pair_file, ratio=config.ratio,
                               pair_count=config.dataset_pairs, split=config.split, seed=config.seed,
                               group_by=config.group_by, options=options, progress=progress)


def _identity_rows(config: TrainConfig, identity_images, found, row: dict, train: SplitPairs,
                   summary: dict) -> tuple[Optional[np.ndarray], Optional[list]]:
    """Rows of the usable identity images and the identity of each (None without identity batches or a
    closed-form head); what they are is added to ``summary``."""
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
            identity_rows, classes, source = image_classes(train.a, train.b, train.labels)
            identities = [str(code) for code in classes.tolist()]
        summary["lda"] = {"classes_from": source}
    return identity_rows, identities


def _feature_store_folder(cache: CacheSetting) -> Optional[Path]:
    """Where the feature store lives: the cache folder (None), or a temporary folder removed when the
    process ends, with ``--no-cache`` or when the cache folder cannot be written (a note says so)."""
    if cache.enabled:
        store = cache.root / "features"
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
