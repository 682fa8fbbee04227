"""Losses over a batch of embeddings with identity labels (metric learning on P x K identity batches).

:class:`MarginMetricLoss` is dlib's ``loss_metric``, the loss dlib's face ResNet was trained with:
every pair of the batch is judged against one distance threshold ``t`` (0.6, dlib's "same person"
threshold) with a margin ``m`` on each side::

    same person:       max(0, d - (t - m))      (pulled below t - m)
    different people:  max(0, (t + m) - d)      (pushed above t + m)

Every same-person pair of the batch counts; of the different-person pairs only the hardest (the
smallest distances) count, as many as there are same-person pairs, so the two kinds weigh alike
however many identities a batch holds. The sum is divided by the number of same-person pairs.

:class:`EmbeddingLoss` is the template: its ``forward`` checks the inputs and hands them to
``compute``, which a subclass writes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..distances import Distance, get_distance
from ..errors import InputError

#: dlib's defaults: its face descriptor calls two faces the same person below 0.6.
DEFAULT_THRESHOLD = 0.6
DEFAULT_MARGIN = 0.04


@dataclass
class BatchLoss:
    """What a batch loss gives back.

    ``loss`` is the scalar to minimise (attached to the graph); ``positives`` and ``negatives`` count
    the same-person pairs and the different-person pairs that entered it; ``correct`` and ``pairs``
    count the batch's pairs that the threshold already judges right, and all its pairs.
    """

    loss: torch.Tensor
    positives: int
    negatives: int
    correct: int
    pairs: int


class EmbeddingLoss(nn.Module):
    """A loss over (N, D) embeddings and their (N,) identity labels.

    Template: :meth:`forward` checks shapes and that the batch holds both a same-person and a
    different-person pair, then calls :meth:`compute`, which subclasses write.

    Args:
        distance: a name from :mod:`kface.distances` or a :class:`~kface.distances.Distance`
            (default: :meth:`default_distance`).
    """

    def __init__(self, distance: Optional[Union[str, Distance]] = None):
        super().__init__()
        self.distance = get_distance(distance if distance is not None else self.default_distance())

    @staticmethod
    def default_distance() -> str:
        return "euclidean"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        if embeddings.ndim != 2 or labels.ndim != 1 or len(embeddings) != len(labels):
            raise ValueError(f"expected (N, D) embeddings and (N,) labels; got {tuple(embeddings.shape)} and "
                             f"{tuple(labels.shape)}")
        count = len(labels)
        upper = torch.ones(count, count, dtype=torch.bool, device=labels.device).triu(diagonal=1)
        same = (labels[:, None] == labels[None, :])[upper]  # the pairs i < j, row by row
        if not bool(same.any()) or bool(same.all()):
            raise ValueError("a metric-learning batch needs at least two images of one identity and images of "
                             "two identities")
        # Half-precision outputs (autocast) are measured in float32; float64 stays float64.
        embeddings = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))
        # Row-wise distances of every (i, j), not a cdist matrix: exact, and safe to differentiate where
        # two embeddings coincide. Broadcasting, not gathering rows by index: the gradient of a gather
        # with repeated indices is summed in a thread-dependent order on CPU, which made runs differ.
        rows = embeddings[:, None, :].expand(count, count, -1).reshape(count * count, -1)
        columns = embeddings[None, :, :].expand(count, count, -1).reshape(count * count, -1)
        distances = self.distance.pairwise(rows, columns).view(count, count)[upper]
        return self.compute(distances, same)

    def compute(self, distances: torch.Tensor, same: torch.Tensor) -> BatchLoss:
        """The loss from the distances of every pair i < j of the batch and whether each is one person."""
        raise NotImplementedError


class MarginMetricLoss(EmbeddingLoss):
    """dlib's ``loss_metric`` (see the module docstring).

    Args:
        threshold: the distance that separates "same" from "different" (dlib: 0.6).
        margin: how far on each side of ``threshold`` pairs are pushed (dlib: 0.04).
        distance: as in :class:`EmbeddingLoss` (dlib: Euclidean).
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, margin: float = DEFAULT_MARGIN,
                 distance: Optional[Union[str, Distance]] = None):
        super().__init__(distance)
        if not threshold > 0:
            raise InputError(f"the metric loss threshold must be positive, got {threshold}")
        if not 0 < margin < threshold:
            raise InputError(f"--margin for --loss metric must lie in (0, {threshold}), got {margin}")
        self.threshold = float(threshold)
        self.margin = float(margin)

    def pair_terms(self, distances: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        """Each pair's own term, before any mining: how far it lies on the wrong side of its margin."""
        pull = F.relu(distances - (self.threshold - self.margin))
        push = F.relu((self.threshold + self.margin) - distances)
        return torch.where(same, pull, push)

    def compute(self, distances: torch.Tensor, same: torch.Tensor) -> BatchLoss:
        positives = int(same.sum())
        negative_distances = distances[~same]
        hardest = min(positives, len(negative_distances))
        # Ties with the last one taken count too, as in dlib (which compares with that distance).
        cutoff = negative_distances.detach().kthvalue(hardest).values
        taken = negative_distances <= cutoff
        terms = self.pair_terms(distances, same)
        loss = (terms[same].sum() + terms[~same][taken].sum()) / positives
        # kface's decision everywhere: the same person iff distance <= threshold.
        correct = torch.where(same, distances <= self.threshold, distances > self.threshold)
        return BatchLoss(loss, positives, int(taken.sum()), int(correct.sum()), len(distances))
