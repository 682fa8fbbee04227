"""Losses over a batch of embeddings with identity labels (metric learning on P x K identity batches).

:class:`MarginMetricLoss` is dlib's ``loss_metric``, the loss dlib's face ResNet was trained with:
every pair of the batch is judged against one distance threshold ``t`` (0.6, dlib's "same person"
threshold) with a margin ``m`` on each side::

    same person:       max(0, d - (t - m))      (pulled below t - m)
    different people:  max(0, (t + m) - d)      (pushed above t + m)

Every same-person pair of the batch counts; of the different-person pairs only the hardest (the
smallest distances) count, as many as there are same-person pairs, so the two kinds weigh alike
however many identities a batch holds. The sum is divided by the number of same-person pairs.

:class:`AngularMarginLoss` is ArcFace (Deng et al., 2019), the loss of insightface's ``arcface_torch``: a
softmax over the training identities, each with a learnt unit centre, where an image's angle to its own
centre is widened by a margin ``m`` before the softmax (``s cos(theta + m)`` against ``s cos(theta_j)``).
It judges angles, so the verifier measures cosine distance. Its centres train with the network, start
as each identity's mean direction (:meth:`AngularMarginLoss.imprint_`: fine-tuning starts from the
pretrained embedding, not from random centres that would first pull it apart) and are dropped after
training: only the embedding ships.

:class:`EmbeddingLoss` is the template: its ``forward`` checks the inputs and hands them to
``compute``, which a subclass writes.
"""
from __future__ import annotations

import math
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
    count what the loss already judges right, and all it judged: the batch's pairs at the threshold
    (:class:`MarginMetricLoss`), or its images' identities (:class:`AngularMarginLoss`).
    """

    loss: torch.Tensor
    positives: int
    negatives: int
    correct: int
    pairs: int


def check_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    """(N, D) embeddings and their (N,) labels, or a ValueError."""
    if embeddings.ndim != 2 or labels.ndim != 1 or len(embeddings) != len(labels):
        raise ValueError(f"expected (N, D) embeddings and (N,) labels; got {tuple(embeddings.shape)} and "
                         f"{tuple(labels.shape)}")


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
        check_batch(embeddings, labels)
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


def angular_margin(margin: float) -> float:
    """``margin`` as ArcFace's angle, checked: radians in (0, pi/2)."""
    if not 0 < margin < math.pi / 2:
        raise InputError(f"--margin for --loss arcface is an angle in radians in (0, {math.pi / 2:.4f}), got {margin}")
    return float(margin)


class AngularMarginLoss(EmbeddingLoss):
    """ArcFace (see the module docstring) over ``classes`` identities of ``features``-d embeddings.

    Args:
        classes: how many identities the labels number (labels lie in ``[0, classes)``).
        features: the embedding size.
        margin: the additive angle ``m`` in radians, in (0, pi/2) (insightface: 0.5).
        scale: ``s``, the logits' scale (insightface: 64 for millions of faces; 30 suits hundreds of
            identities, whose softmax saturates sooner).
        seed: the seed of the centres' first draw (:meth:`imprint_` then replaces those of identities
            with images).
    """

    def __init__(self, classes: int, features: int, margin: float = 0.5, scale: float = 30.0, seed: int = 0):
        super().__init__("cosine")
        self.margin, self.scale = angular_margin(margin), float(scale)
        generator = torch.Generator().manual_seed(seed)
        self.centres = nn.Parameter(F.normalize(torch.randn(classes, features, generator=generator), dim=1))

    @torch.no_grad()
    def imprint_(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Set each identity's centre to the mean direction of its images' ``embeddings``."""
        directions = F.normalize(embeddings.float(), dim=1)
        sums = torch.zeros_like(self.centres).index_add_(0, labels, directions.to(self.centres.device))
        present = sums.norm(dim=1) > 0
        self.centres[present] = F.normalize(sums[present], dim=1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
        check_batch(embeddings, labels)
        cosines = F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.centres, dim=1))
        own = cosines.gather(1, labels[:, None])
        # Clamped inside (-1, 1): acos has an infinite slope at the ends.
        widened = torch.cos(torch.clamp(torch.acos(own.clamp(-1 + 1e-6, 1 - 1e-6)) + self.margin, max=math.pi))
        logits = self.scale * cosines.scatter(1, labels[:, None], widened)
        loss = F.cross_entropy(logits, labels)
        same = labels[:, None] == labels[None, :]
        positives = int(same.triu(diagonal=1).sum())
        correct = int((cosines.detach().argmax(dim=1) == labels).sum())
        return BatchLoss(loss, positives, len(labels) * (len(labels) - 1) // 2 - positives, correct, len(labels))
