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
views) with generators seeded from ``(seed, e)``, and no other randomness is used (the head starts as the identity, the
probability
mapping from the data), so ``--resume`` continues exactly where ``last.pt`` stopped.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) training runs as DistributedDataParallel (gloo on
CPU, nccl on GPU). Every process walks the same shuffled global batches and takes every
``world_size``-th pair of each; the loss is scaled so that the averaged gradient is the one-process
gradient of the whole batch, so N processes train the same model as one, up to float rounding. Only
rank 0 measures val and writes files. On a GPU, the forward pass runs in float16 autocast (AMP).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..backbones.trainable import check_cut_device
from ..errors import InputError
from ..util.cache import CacheSetting
from ..util.locks import file_lock
from ..util.outputs import fsync_file, fsync_folder, remove_stale_temps
from ..util.progress import progress_bar
from .checkpoints import file_sha256
from .config import DATASET_PAIRS, HISTORY, LAST, MODEL, RUN_LOCK, SELECT_METRICS, TrainConfig, load_last, write_history
from .data import TrainingData, load_training_data
from .distributed import Processes
from .heads import get_head
from .loop import better, single_threaded_blas, threads_for
from .trainer import TrainingRun

log = logging.getLogger("kface")


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
        return better(self.best["value"], self.baseline[self.best["metric"]], SELECT_METRICS[self.best["metric"]])

    @property
    def model_path(self) -> Path:
        return self.out / MODEL


def train(config: TrainConfig, *, resume: bool = False, progress: bool = False,
          on_epoch_end: Optional[Callable[[dict], None]] = None, cache: CacheSetting = CacheSetting()) -> TrainResult:
    """Train as ``config`` says (the whole of ``kface train``); see the module docstring. ``cache``: the
    caches the images and features go through (``--no-cache``, ``--cache-dir``).

    ``on_epoch_end(record)`` is called after each epoch's files are written (``record`` is the
    history row; on ranks other than 0 it has no val metrics).
    """
    processes = Processes.from_env(config.device)
    run_lock = contextlib.ExitStack()
    try:
        if processes.main:  # the other ranks of a distributed run are this run's own processes
            run_lock.enter_context(file_lock(Path(config.out) / RUN_LOCK, wait=False, what=str(config.out),
                                             holder="kface train"))
        check_cut_device(config.unfreeze, processes.device.type)
        _check_out(config, resume)
        if processes.main:
            _remove_stale_temps(Path(config.out))
        started = time.perf_counter()
        data = processes.local_first(lambda show: load_training_data(config, progress=progress and show,
                                                                     resume=resume, cache=cache))
        features_seconds = time.perf_counter() - started
        result = fit(config, data, resume=resume, progress=progress and processes.main, on_epoch_end=on_epoch_end,
                     processes=processes)
        result.timing["features_s"] = features_seconds
        if processes.main:
            write_history(result.out, config, result.history, result.best, data.summary, result.timing,
                           result.baseline, durable=True)
            _make_durable(result.out / MODEL)
        return result
    finally:
        run_lock.close()
        processes.close()


def _make_durable(path: Path) -> None:
    """fsync a file written without it (and its folder), once, at the end of a run."""
    if path.is_file():
        fsync_file(path)
        fsync_folder(path.parent)


def _remove_stale_temps(out: Path) -> None:
    """Temp files a killed run left beside its outputs (never under a final name) are deleted."""
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
    processes = processes or Processes.single(config.device)
    with threads_for(data.features), single_threaded_blas():
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


def _postfix(record: dict) -> dict:
    names = {"train_loss": "loss", "train_accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc",
             "val_overlap": "overlap"}
    return {short: f"{record[key]:.4f}" for key, short in names.items() if record.get(key) is not None}
