"""Metric learning on identity batches (``kface train --loss metric``): its images and its epoch.

The pair file's val pairs still choose the epoch and the threshold; training itself draws P x K
batches (:class:`~kface.training.samplers.IdentityBatchSampler`) from the images of the train split's
identities and minimises :class:`~kface.training.losses.MarginMetricLoss` over each batch. Which images:

- from a pair file: every image its train pairs use, labelled by their ``identity_a``/``identity_b``;
- from ``--dataset/--root``: every image of each identity in the train split (:func:`write_dataset_pairs`
  samples the split and its pairs first).

Features hold two views per image (the chip and its mirror image, see :mod:`kface.training.store`); a batch
takes the view the sampler drew for each image, which is the mirror augmentation.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..datasets import load_dataset
from ..errors import InputError
from ..pairs import PairRequest, make_pair_file, parse_ratio, parse_split, read_pairs
from .loop import optimiser_step

#: How many in-batch distances (about) an epoch keeps for calibrating P(same).
CALIBRATION_SAMPLES = 20000


@dataclass
class IdentityImages:
    """Training images for metric learning: absolute ``paths`` and the ``identities`` they show."""

    paths: list[str]
    identities: list[str]


def train_identity_images(pairs, index=None) -> IdentityImages:
    """The images of the train split's identities.

    ``pairs`` is a :class:`~kface.pairs.PairSet`; with ``index`` (the
    :class:`~kface.datasets.DatasetIndex` it was sampled from) every image of those identities is
    used, else only the images its train pairs use. Pairs without identities are an :class:`InputError`.
    """
    train = pairs.select("train")
    identity_of: dict[str, str] = {}
    for paths, identities in ((train.abs_path_a, train.identity_a), (train.abs_path_b, train.identity_b)):
        for path, identity in zip(paths, identities):
            if not identity:
                raise InputError("--loss metric learns from identities, and the pair file's train pairs have none "
                                 "(fill identity_a/identity_b, or train from --dataset/--root)")
            identity_of[path] = str(identity)
    if index is not None:
        wanted = set(identity_of.values())
        for i, code in enumerate(index.identity_codes):
            name = index.identity_names[code]
            if name in wanted:
                identity_of.setdefault(str(index.absolute_path(i)), name)
    paths = sorted(identity_of)
    return IdentityImages(paths, [identity_of[path] for path in paths])


def write_dataset_pairs(kind: str, root: str, out: Path, *, ratio: str, pair_count: int, split: str, seed: int,
                        group_by: Optional[str] = None, options: Optional[dict] = None, progress: bool = False):
    """Sample identity-disjoint (with ``group_by``, group-disjoint) train/val/test pairs from a dataset into ``out``
    (a pair CSV and its
    manifest, as ``kface make-pairs`` writes them); return the pairs and the dataset index."""
    index = load_dataset(kind, root, progress=progress, **(options or {}))
    request = PairRequest(parse_ratio(ratio), pair_count, parse_split(split), None, seed, group_by=group_by)
    make_pair_file(index, request, out)
    return read_pairs(out), index


def identity_inputs(table: torch.Tensor, items: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """What the model embeds for images ``items`` of ``table``: frozen vectors (images, D) as they are,
    or stored maps (images, views, ...) in view ``views[i]`` each (one view per image)."""
    if table.ndim == 2:
        return table[items]
    return table[items, views].unsqueeze(1)


class Embedding(nn.Module):
    """``model.embed`` as a module's forward, so DDP can wrap it (its gradient hooks run in forward).

    ``criterion`` rides along when it has parameters of its own (ArcFace's centres): they are used
    outside ``forward``, but as the wrapped module's parameters DDP still averages their gradients.
    """

    def __init__(self, model: nn.Module, criterion: Optional[nn.Module] = None):
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.embed(features)


@dataclass
class IdentityEpochOutput:
    """One epoch of metric learning: mean batch loss, the share of in-batch pairs judged right at the
    loss's threshold, batches, and a sample of in-batch distances with labels (for calibrating P(same))."""

    loss: float
    accuracy: float
    count: int
    distances: np.ndarray
    labels: np.ndarray


def run_identity_epoch(embedding: nn.Module, table: torch.Tensor, rows: np.ndarray, batches: Sequence, criterion,
                       optimizer, *, scaler=None, amp: bool = False, reduce: Callable = lambda t: t,
                       seed: int = 0) -> IdentityEpochOutput:
    """One optimiser step per batch of ``batches`` (:class:`~kface.training.samplers.Batch`).

    ``embedding`` maps features to embeddings (an :class:`Embedding`, or its DDP wrapper); ``table``
    holds the features, (images, views, ...); item ``i`` of a batch is image ``rows[i]`` in view
    ``batch.mirrored[i]``. ``reduce`` sums the epoch's totals over processes; ``seed`` draws the
    sample of distances kept for calibration.
    """
    embedding.train(True)
    device = table.device
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    rows = torch.as_tensor(rows, device=device)
    total_loss, correct, pairs = 0.0, 0, 0
    kept_distances, kept_labels = [], []
    sample_rng = np.random.default_rng(seed)
    for batch in batches:
        items = rows[torch.as_tensor(batch.items, device=device)]
        views = torch.as_tensor(batch.mirrored.astype(np.int64), device=device)
        labels = torch.as_tensor(batch.labels, device=device)
        with torch.autocast(device.type, dtype=torch.float16) if amp else contextlib.nullcontext():
            embeddings = embedding(identity_inputs(table, items, views))
        result = criterion(embeddings.float(), labels)
        optimiser_step(result.loss, optimizer, parameters, scaler)
        total_loss += float(result.loss.detach())
        correct, pairs = correct + result.correct, pairs + result.pairs
        distances, same = batch_pair_distances(criterion.distance, embeddings.detach().float(), labels)
        share = CALIBRATION_SAMPLES / max(1, len(distances) * len(batches))
        keep = torch.from_numpy(sample_rng.random(len(distances)) < share).to(device)
        kept_distances.append(distances[keep].cpu().numpy())
        kept_labels.append(same[keep].cpu().numpy())
    totals = reduce(torch.tensor([total_loss, float(len(batches)), float(correct), float(pairs)], dtype=torch.float64))
    count = int(totals[1].item())
    if count == 0:
        return IdentityEpochOutput(math.nan, math.nan, 0, np.zeros(0), np.zeros(0, np.int8))
    return IdentityEpochOutput(float(totals[0] / count), float(totals[2] / totals[3]), count,
                               np.concatenate(kept_distances).astype(np.float64),
                               np.concatenate(kept_labels).astype(np.int8))


def batch_pair_distances(distance, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances of every pair i < j of a batch, and whether each pair is one identity."""
    first, second = torch.triu_indices(len(labels), len(labels), offset=1, device=labels.device)
    return distance.pairwise(embeddings[first], embeddings[second]), labels[first] == labels[second]
