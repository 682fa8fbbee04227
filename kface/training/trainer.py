"""One training run's state (:class:`TrainingRun`): model, optimiser, schedule, history, best epoch."""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..backbones.trainable import VIEWS, load_network
from ..metrics import DEFAULT_SAMPLES, sample_per_class
from .checkpoints import STATE_FORMAT, load_state, model_checkpoint, plain, save_checkpoint, versions
from .config import LAST, MODEL, SELECT_METRICS, TrainConfig, load_last, write_history
from .data import TrainingData
from .distributed import Processes
from .heads import get_head, lda_head_of
from .lda import choose_dimensions, fit_lda
from .loop import (
    VAL_GRID,
    BestEpoch,
    PairTensors,
    batches,
    better,
    embed_rows,
    epoch_order,
    epoch_seed,
    evaluate_pairs,
    measure,
    run_epoch,
)
from .losses import get_loss
from .model import build_pair_model, trainable_parameters
from .samplers import IdentityBatchSampler

log = logging.getLogger("kface")


def fit_projection(config: TrainConfig, data: TrainingData, val_sample: np.ndarray):
    """A closed-form head's projection (:mod:`kface.training.lda`): fitted on the train identities' embeddings,
    truncated to the number of dimensions that the val pairs (``val_sample`` for the threshold and
    overlap) choose by ``--select``; what was fitted and chosen is added to ``data.summary["lda"]``."""
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
            self.sampler = IdentityBatchSampler(data.identities, config.ids_per_batch, config.images_per_id,
                                                mirror=config.augment == "mirror", seed=config.seed,
                                                batch_groups=data.identity_groups)
            self.batch_criterion = self.criterion.batch_loss(
                self.model.distance, classes=int(self.sampler.labels.max()) + 1,
                features=projection.dims if projection is not None else data.embedding_size, seed=config.seed)
            self.batch_criterion.to(device)
        self.features = torch.from_numpy(data.features).to(device)
        self.views = config.unfreeze != "none"  # features are (images, views, ...): the chip, its mirror
        self.train_pairs, self.val_pairs = PairTensors.of(data.train, device), PairTensors.of(data.val, device)
        # Fused Adam: one kernel for all parameters, the fastest step for a small head on CPU and GPU.
        self.optimizer = torch.optim.Adam([*trainable_parameters(self.model), *self._criterion_parameters()],
                                          lr=config.lr, weight_decay=config.weight_decay, fused=True)
        # The first epoch trains at lr, the last at min_lr.
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(1, config.epochs - 1), eta_min=config.min_lr)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        self.history: list[dict] = []
        self.best: Optional[dict] = None
        direction = SELECT_METRICS[config.select]
        self.tracker = BestEpoch(lambda value, best: better(value, best, direction))
        # The best epoch's model.pt payload: it is part of last.pt, so model.pt can always be rebuilt.
        self.best_model: Optional[dict] = None
        self._best_changed = False
        self.epoch = 0
        self.timing = {"train_s": 0.0, "validation_s": 0.0}
        self.baseline: Optional[dict] = None
        self._trained: Optional[torch.nn.Module] = None

    def _criterion_parameters(self) -> list:
        """The identity loss's own parameters (ArcFace's centres), trained with the model, never shipped."""
        return list(self.batch_criterion.parameters()) if self.identity_batches else []

    def start(self) -> None:
        """Epoch 0: calibrate P(same) on the train distances of the untrained head, measure val, save
        (and start ArcFace's centres at each identity's mean direction)."""
        if self._criterion_parameters():
            device = self.processes.device
            chips = self.features[:, :1] if self.views else self.features  # the chip's view, as batches draw it
            rows = torch.as_tensor(self.data.identity_rows, device=device)
            self.batch_criterion.imprint_(embed_rows(self.model, chips, rows),
                                          torch.as_tensor(self.sampler.labels, device=device))
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
        if self._criterion_parameters():
            load_state(self.batch_criterion, state.get("criterion") or {}, f"{what}: the loss's state")
        for name, part in (("optimizer", self.optimizer), ("scheduler", self.scheduler), ("scaler", self.scaler)):
            load_state(part, state[name], f"{what}: the {name} state")
        self.history, self.best, self.epoch = state["history"], state["best"], state["epoch"]
        if self.best is not None:
            self.tracker.epoch, self.tracker.value = self.best["epoch"], self.best["value"]
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

            self._trained = self.processes.wrap(Embedding(self.model, self.batch_criterion))
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
            self._trained = self.processes.wrap(self.model)
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
        if self.tracker.offer(record["epoch"], values[self.config.select]):
            value = self.tracker.value
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
            **({"criterion": {k: v.detach().cpu() for k, v in self.batch_criterion.state_dict().items()}}
               if self._criterion_parameters() else {}),
            "optimizer": self.optimizer.state_dict(), "scheduler": plain(self.scheduler.state_dict()),
            "scaler": self.scaler.state_dict(), "history": plain(self.history), "best": plain(self.best),
            "best_model": self.best_model, "baseline": plain(self.baseline), "versions": versions()}, durable=True)
        if self._best_changed:
            # Not fsynced each time: after a power loss --resume rebuilds it from last.pt; the end of the
            # run (train) makes the final one durable.
            save_checkpoint(self.out / MODEL, self.best_model)
            self._best_changed = False
        write_history(self.out, self.config, self.history, self.best, self.data.summary, None, self.baseline)


def _pretrained_network(config: TrainConfig):
    """The unfolded network whose suffix trains (None when nothing of the backbone trains)."""
    if config.unfreeze == "none":
        return None
    return load_network(config.backbone, config.weights)
