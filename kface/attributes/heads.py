"""The torch side of the attribute heads: the network, its training and the ``.pt`` checkpoint.

Kept apart from :mod:`kface.attributes.model` so that analysing a face with the shipped (ONNX) heads never
imports torch; training, and a user's own ``--model runs/NAME/model.pt``, do.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..backbones.trainable import build_suffix, empty_network, load_network
from ..embeddings.prefix import PrefixNetwork
from ..errors import InputError
from ..training.checkpoints import read_checkpoint, save_checkpoint
from ..training.loop import BestEpoch, one_thread, optimiser_step
from ..util.devices import resolve_device
from ..util.progress import progress_bar
from .answers import AttributeAnswers, average_views
from .labels import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, TRUNKS, AttributeConfig, class_weights


class AttributeHeads(nn.Module):
    """Heads on the standardised embedding: per task ``d -> hidden, ReLU, dropout -> K`` (``trunk="separate"``),
    or one shared ``d -> hidden, ReLU, dropout`` layer with a linear output per task (``trunk="shared"``).

    With ``ordinal_age`` the age output is ordinal: ``K - 1`` cumulative logits, ``P(group > k)`` for each
    boundary k (one binary classifier per boundary, as in ordinal-regression CNNs); a face called one
    group off then costs less than one called five groups off, which plain cross-entropy cannot know.
    (A CORAL-style shared score with ordered thresholds learned far more slowly here.)
    """

    def __init__(self, dim: int, classes: dict[str, int], hidden: int = 512, dropout: float = 0.3,
                 trunk: str = "separate", ordinal_age: bool = False):
        super().__init__()
        if trunk not in TRUNKS:
            raise InputError(f"--trunk: expected one of {', '.join(TRUNKS)}, got {trunk!r}")
        self.ordinal_age = ordinal_age and "age" in classes
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        outputs = {task: count - 1 if task == "age" and self.ordinal_age else count for task, count in classes.items()}
        if trunk == "shared":
            self.trunk = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
            self.heads = nn.ModuleDict({task: nn.Linear(hidden, count) for task, count in outputs.items()})
        else:
            self.trunk = nn.Identity()
            self.heads = nn.ModuleDict({
                task: nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, count))
                for task, count in outputs.items()})

    def forward(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per task for (N, d) embeddings (age with ``ordinal_age``: the K - 1 cumulative logits)."""
        shared = self.trunk((embeddings - self.mean) / self.scale)
        return {task: head(shared) for task, head in self.heads.items()}

    @property
    def age_output(self) -> nn.Linear:
        """The age head's last layer."""
        head = self.heads["age"]
        return head[-1] if isinstance(head, nn.Sequential) else head

    def probabilities(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class probabilities per task, rows summing to 1 (what the shipped ONNX graph computes)."""
        result = {}
        for task, output in self.forward(embeddings).items():
            if task == "age" and self.ordinal_age:
                above = torch.sigmoid(output)  # P(group > k), k = 0 .. K-2
                ones = torch.ones_like(above[:, :1])
                bounds = torch.cat([ones, above, torch.zeros_like(ones)], dim=1)
                # The boundaries are separate classifiers and can cross: clamp the differences, renormalise.
                probs = (bounds[:, :-1] - bounds[:, 1:]).clamp_min(0) + 1e-12
                result[task] = probs / probs.sum(dim=1, keepdim=True)
            else:
                result[task] = torch.softmax(output, dim=1)
        return result


def suffix_vectors(suffix: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The trainable layers' vectors of prefix features (held as float16; channels-last, as they train)."""
    return suffix(features.float().contiguous(memory_format=torch.channels_last))


class AttributeNetwork(nn.Module):
    """A backbone's trainable layers after a cut (:func:`~kface.backbones.trainable.build_suffix`) with the heads
    on their vector: the cut's prefix features in (stored as float16, computed in float32), logits out."""

    def __init__(self, suffix: nn.Module, heads: AttributeHeads):
        super().__init__()
        self.suffix = suffix
        self.heads = heads

    def vectors(self, features: torch.Tensor) -> torch.Tensor:
        return suffix_vectors(self.suffix, features)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.vectors(features))

    def probabilities(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads.probabilities(self.vectors(features))


class AttributeChipGraph(nn.Module):
    """(N, S, S, 3) uint8 aligned chips -> (N, sum of K) float32: each task's class probabilities side by side,
    in ``tasks`` order; what the shipped ONNX file computes.

    The backbone's frozen prefix (``network``, for inference), rounded to float16 at ``cut`` as the feature
    store held it when ``model`` trained, then ``model``; with ``flip`` the probabilities of each chip and its
    mirror image are averaged (as training's evaluation does).
    """

    def __init__(self, network: nn.Module, cut: str, model: "AttributeNetwork", tasks: list[str], flip: bool):
        super().__init__()
        self.network = network
        self.cut = cut
        self.model = model
        self.tasks = list(tasks)
        self.flip = flip

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        count = chips.shape[0]
        if self.flip:
            chips = torch.cat([chips, torch.flip(chips, dims=[2])])  # NHWC: dim 2 is left-right
        prefix = self.network.forward_prefix(self.network.prepare_chips(chips), self.cut)
        probabilities = self.model.probabilities(prefix.to(torch.float16))
        columns = []
        for task in self.tasks:
            probs = probabilities[task]
            if self.flip:
                probs = (probs[:count] + probs[count:]) / 2
            columns.append(probs)
        return torch.cat(columns, dim=1)


#: Rows per forward pass where a whole split is scored without gradients (feature maps are 16 kB a row).
EVAL_BATCH = 512


def _in_batches(function, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """``function`` (rows -> dict of tensors) over ``features`` in :data:`EVAL_BATCH` rows, concatenated."""
    parts = [function(features[start:start + EVAL_BATCH]) for start in range(0, len(features), EVAL_BATCH)]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def fit_heads(embeddings: np.ndarray, targets: dict[str, np.ndarray], split: np.ndarray, classes: dict[str, int],
              config: AttributeConfig, progress: bool = False,
              mirrored: Optional[np.ndarray] = None) -> tuple[nn.Module, list[dict], int]:
    """Train the heads on the train split (with ``config.unfreeze``, the rows are the backbone's prefix features
    and its layers after the cut train too); return the best-on-val model, the history and its epoch.

    ``mirrored`` (``config.tta == "flip"``): the mirror-image faces' rows; each training example is then one
    of the two views, drawn at random, and val averages their probabilities.
    """
    device = resolve_device(config.device)
    train = split == 0
    views = [embeddings] + ([mirrored] if mirrored is not None else [])
    held = np.float32 if config.unfreeze == "none" else np.float16  # feature maps stay as the store keeps them
    features = torch.from_numpy(np.ascontiguousarray(np.stack(views), dtype=held)).to(device)  # (V, N, ...)
    labels = {task: torch.from_numpy(target).to(device) for task, target in targets.items()}
    balanced = config.sampling == "balanced"
    weights = {task: None if balanced else torch.tensor(class_weights(targets[task][train], classes[task]),
                                                          dtype=torch.float32, device=device) for task in classes}
    _check_labelled(targets, split, classes, config)
    ordinal = config.age_loss == "ordinal"
    # Dropout draws from torch's global generator: fork it, so the run is seeded and the caller's state kept.
    with torch.random.fork_rng(devices=[torch.device(device).index or 0] if device.startswith("cuda") else []), \
            one_thread(enabled=config.unfreeze == "none"):  # a backbone stage uses the cores
        torch.manual_seed(config.seed)
        model = _initial_model(features, targets, train, classes, config, ordinal).to(device)
        optimizer = _optimiser(model, config)
        shuffler = torch.Generator().manual_seed(config.seed)
        train_rows = torch.from_numpy(np.flatnonzero(train))
        draw = torch.from_numpy(balanced_draw_weights(targets, train)) if balanced else None
        val_rows = torch.from_numpy(np.flatnonzero(split == 1)).to(device)
        history: list[dict] = []
        best, best_state = BestEpoch(lambda key, best_key: key > best_key), None
        bar = progress_bar(config.epochs, "training attribute heads", enabled=progress)
        try:
            for epoch in range(1, config.epochs + 1):
                if draw is None:
                    order = train_rows[torch.randperm(len(train_rows), generator=shuffler)]
                else:  # as many draws as training rows, each class cell equally likely
                    order = train_rows[torch.multinomial(draw, len(train_rows), replacement=True, generator=shuffler)]
                view = torch.randint(len(views), (len(order),), generator=shuffler)
                batches = [(rows.to(device), row_views.to(device))
                           for rows, row_views in zip(order.split(config.batch_size), view.split(config.batch_size))]
                train_loss = _train_epoch(model, optimizer, features, labels, batches, weights, ordinal)
                val = _evaluate_split(model, features[:, val_rows], {t: labels[t][val_rows] for t in classes},
                                      weights, ordinal)
                record = {"epoch": epoch, "train_loss": train_loss, **val}
                history.append(record)
                if best.offer(epoch, (val["val_accuracy"], -val["val_loss"])):
                    best_state = copy.deepcopy(model.state_dict())
                bar.update(1)
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{val['val_accuracy']:.3f}")
        finally:
            bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return model.cpu(), history, best.epoch


def _optimiser(model: nn.Module, config: AttributeConfig) -> torch.optim.Optimizer:
    """Adam over the heads at ``config.lr`` and the backbone's unfrozen layers, if any, at ``config.suffix_lr``."""
    groups = [{"params": model.parameters(), "lr": config.lr}]
    if isinstance(model, AttributeNetwork):
        groups = [{"params": model.heads.parameters(), "lr": config.lr},
                  {"params": model.suffix.parameters(), "lr": config.suffix_lr}]
    return torch.optim.Adam(groups, weight_decay=config.weight_decay)


def _check_labelled(targets: dict[str, np.ndarray], split: np.ndarray, classes: dict[str, int],
                    config: AttributeConfig) -> None:
    for task in classes:
        for name, part in (("train", 0), ("val", 1)):
            if not np.any(targets[task][split == part] >= 0):
                raise InputError(f"the {name} split has no {task} label: too few identities for --split "
                                 f"{':'.join(f'{share:g}' for share in config.split)}")


def _initial_model(features: torch.Tensor, targets: dict[str, np.ndarray], train: np.ndarray,
                   classes: dict[str, int], config: AttributeConfig, ordinal: bool):
    """Untrained heads (with the backbone's layers after ``config.unfreeze``, pretrained, where set),
    standardising by the train split's vectors (both views)."""
    rows = torch.from_numpy(train).to(features.device)
    suffix = None
    if config.unfreeze == "none":
        vectors = features[:, rows].reshape(-1, features.shape[2])
    else:
        suffix = build_suffix(load_network(config.backbone), config.unfreeze).to(features.device).eval()
        with torch.no_grad():
            train_features = features[:, rows].flatten(0, 1)
            vectors = _in_batches(lambda part: {"v": suffix_vectors(suffix, part)}, train_features)["v"]
    heads = AttributeHeads(vectors.shape[1], classes, config.hidden, config.dropout, config.trunk,
                           ordinal).to(features.device)
    heads.mean.copy_(vectors.mean(dim=0))
    heads.scale.copy_(vectors.std(dim=0).clamp_min(1e-6))
    if heads.ordinal_age:
        # Start each boundary's bias at the training split's log-odds of "older than group k": Adam
        # moves a parameter by about lr a step, too slowly to get there from zero on its own.
        groups = targets["age"][train & (targets["age"] >= 0)]
        above = np.array([np.mean(groups > k) for k in range(classes["age"] - 1)]).clip(1e-3, 1 - 1e-3)
        heads.age_output.bias.data.copy_(torch.from_numpy(np.log(above / (1 - above))).float())
    return heads if suffix is None else AttributeNetwork(suffix, heads)


def _train_epoch(model: nn.Module, optimizer, features: torch.Tensor, labels: dict[str, torch.Tensor],
                 batches: list, weights: dict[str, Optional[torch.Tensor]], ordinal: bool) -> float:
    """One optimiser step per (rows, views) batch with a labelled row; the mean batch loss."""
    model.train()
    parameters = list(model.parameters())
    total, steps = 0.0, 0
    for rows, row_views in batches:
        loss = _loss(model(features[row_views, rows]), {task: labels[task][rows] for task in labels}, weights,
                     ordinal)
        if loss is None:
            continue
        optimiser_step(loss, optimizer, parameters)
        total += loss.item()
        steps += 1
    return total / max(steps, 1)


def balanced_draw_weights(targets: dict[str, np.ndarray], train: np.ndarray) -> np.ndarray:
    """A draw weight per training row, ``1 / size`` of its cell of labels (e.g. age group x gender), so every
    cell is drawn equally often (few faces over 56 are drawn as often as the many children)."""
    rows = np.flatnonzero(train)
    cells = np.stack([targets[task][rows] for task in sorted(targets)], axis=1)
    _, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    return (1.0 / counts[inverse.reshape(-1)]).astype(np.float64)


def _loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
          weights: dict[str, Optional[torch.Tensor]], ordinal: bool = False) -> Optional[torch.Tensor]:
    """Sum over the heads of the (class-weighted) loss on the rows labelled for each head: cross-entropy, or
    for an ordinal age head the binary cross-entropy of each "older than group k" threshold."""
    total = None
    for task, output in logits.items():
        labelled = targets[task] >= 0
        if not labelled.any():
            continue
        truth = targets[task][labelled]
        if task == "age" and ordinal:
            levels = (truth[:, None] > torch.arange(output.shape[1], device=truth.device)).float()
            per_row = nn.functional.binary_cross_entropy_with_logits(output[labelled], levels,
                                                                     reduction="none").sum(dim=1)
            row_weights = weights[task][truth] if weights[task] is not None else torch.ones_like(per_row)
            loss = (per_row * row_weights).sum() / row_weights.sum()
        else:
            loss = nn.functional.cross_entropy(output[labelled], truth, weight=weights[task])
        total = loss if total is None else total + loss
    return total


@torch.no_grad()
def _evaluate_split(model: nn.Module, features: torch.Tensor, targets: dict[str, torch.Tensor],
                    weights: dict[str, Optional[torch.Tensor]], ordinal: bool = False) -> dict:
    """Loss on the first view; accuracy from the probabilities averaged over the views (``features`` (V, N, ...))."""
    model.eval()
    loss = _loss(_in_batches(model, features[0]), targets, weights, ordinal)
    views = [_in_batches(model.probabilities, view) for view in features]
    record: dict[str, float] = {"val_loss": float(loss) if loss is not None else float("nan")}
    accuracies = []
    for task in views[0]:
        probs = torch.stack([view[task] for view in views]).mean(dim=0)
        labelled = targets[task] >= 0
        accuracy = float((probs[labelled].argmax(dim=1) == targets[task][labelled]).float().mean())
        record[f"val_{task}_accuracy"] = accuracy
        accuracies.append(accuracy)
    record["val_accuracy"] = float(np.mean(accuracies))
    return record


class AttributeModel(AttributeAnswers):
    """Trained heads (and, with ``--unfreeze``, the backbone's layers after the cut) with everything needed to
    use them: tasks, age bins, backbone and face settings."""

    def __init__(self, network: nn.Module, meta: dict, device: str = "auto"):
        self.network = network.eval()
        self.meta = meta
        self.device = device  # where the backbone's frozen prefix runs for chips (the trained layers: CPU)
        self._prefix = None

    @property
    def cut(self) -> str:
        """Where the backbone's trained layers start (``none``: the heads read its frozen embedding)."""
        return self.meta.get("config", {}).get("unfreeze", "none")

    @property
    def input(self) -> str:
        return "embeddings" if self.cut == "none" else "chips"

    @torch.no_grad()
    def probabilities(self, embeddings: np.ndarray, mirrored: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
        """Class probabilities per task, (N, K) float64 rows summing to 1, from what the model trained on (the
        embeddings, or the prefix features at its cut); with ``mirrored`` (the mirror-image faces') the
        average of both views'."""
        views = [embeddings] + ([mirrored] if mirrored is not None else [])
        held = np.float32 if self.cut == "none" else np.float16
        outputs = [_in_batches(self.network.probabilities, torch.from_numpy(np.ascontiguousarray(view, dtype=held)))
                   for view in views]
        return {task: average_views([output[task].numpy() for output in outputs]) for task in outputs[0]}

    def chip_probabilities(self, chips: np.ndarray) -> dict[str, np.ndarray]:
        """Class probabilities per task of (N, S, S, 3) uint8 aligned chips (models with ``--unfreeze``): the
        backbone's frozen prefix, then the trained layers (both views averaged with ``--tta flip``)."""
        if self._prefix is None:
            self._prefix = PrefixNetwork(self.backbone, self.cut, self.device)
        features = self._prefix(chips)  # (N, 2, ...): the chip and its mirror image, as the store holds them
        return self.probabilities(features[:, 0], features[:, 1] if self.tta == "flip" else None)


def save_attribute_model(path: os.PathLike, network: nn.Module, meta: dict) -> None:
    """Write the checkpoint atomically (temp file beside it, then rename)."""
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **meta,
               "state_dict": {name: tensor.detach().cpu() for name, tensor in network.state_dict().items()}}
    save_checkpoint(path, payload)


def load_attribute_model(path: os.PathLike, device: str = "auto") -> AttributeModel:
    """Load a checkpoint written by :func:`~kface.attributes.train.train_attributes` (``weights_only=True``);
    ``device`` runs the backbone's prefix where the model reads chips (``--unfreeze``)."""
    path = Path(path)
    payload = read_checkpoint(path, "not a kface model file")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not an attribute model (train one with kface train-attributes)")
    if payload.get("format_version") != CHECKPOINT_VERSION:
        raise InputError(f"{path}: attribute model format {payload.get('format_version')} is not supported "
                         f"by kface {__version__} (expected {CHECKPOINT_VERSION})")
    classes = {task: len(names) for task, names in payload["classes"].items()}
    config = payload["config"]
    network: nn.Module = AttributeHeads(int(payload["embedding_size"]), classes, int(config["hidden"]),
                                        float(config["dropout"]), config.get("trunk", "separate"),
                                        config.get("age_loss", "ce") == "ordinal")
    cut = config.get("unfreeze", "none")
    if cut != "none":
        network = AttributeNetwork(build_suffix(empty_network(payload["backbone"]), cut), network)
    network.load_state_dict(payload.pop("state_dict"))
    return AttributeModel(network, payload, device)
