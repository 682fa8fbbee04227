"""Every loss kface trains with: the pair losses of ``--loss`` and the batch losses of identity batches.

Pair losses (:data:`LOSSES`: ``bce``, ``contrastive``, ``metric``, ``arcface``) judge pairs of images and
return one value per pair, so the trainer decides how a batch is reduced (which keeps multi-process
training equal to one process); :class:`PairLoss` is their template. ``metric`` and ``arcface`` train on
P x K identity batches through the batch losses below (their :meth:`~PairLoss.batch_loss`).

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


# -- pair losses (--loss) ------------------------------------------------------------------------------
class PairLoss(nn.Module):
    """Per-pair loss from distances, P(same) logits and labels (1 = same person, 0 = different).

    Template: :meth:`forward` checks the shapes and hands float labels to :meth:`compute`, which
    subclasses write. ``uses_margin`` says whether the constructor takes ``margin``.
    ``trains_through_probability`` says whether the loss reaches the embedding through the probability
    mapping (BCE) or only through the distance (then the model detaches the distance before the
    mapping, which still learns, as a calibration, from the BCE term such losses add).
    """

    name = ""
    trains_through_probability = True
    uses_margin = False
    #: True when training draws identity batches instead of pairs (``batch_loss`` gives the loss).
    identity_batches = False
    #: The distance the loss is written for, when it is written for one (``--distance`` must match).
    distance: Optional[str] = None

    def forward(self, distances: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if distances.shape != logits.shape or distances.shape != labels.shape or distances.ndim != 1:
            raise ValueError(f"distances, logits and labels must be equal 1-D shapes; got {tuple(distances.shape)}, "
                             f"{tuple(logits.shape)}, {tuple(labels.shape)}")
        return self.compute(distances, logits, labels.to(distances.dtype))

    def compute(self, distances: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class BinaryCrossEntropyLoss(PairLoss):
    """The study's loss: binary cross-entropy of P(same) against the label."""

    name = "bce"

    def compute(self, distances, logits, labels):
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")


class ContrastiveLoss(PairLoss):
    """Hadsell, Chopra & LeCun (2006): ``y d^2 + (1 - y) max(0, margin - d)^2``, plus the calibration BCE.

    The margin is in distance units: different-person pairs farther apart than it cost nothing.
    """

    name = "contrastive"
    trains_through_probability = False
    uses_margin = True

    def __init__(self, margin: float = 1.0):
        super().__init__()
        if not margin > 0:
            raise InputError(f"--margin must be positive, got {margin}")
        self.margin = float(margin)

    def compute(self, distances, logits, labels):
        distances = distances.float()
        pull = labels * distances.pow(2)
        push = (1 - labels) * F.relu(self.margin - distances).pow(2)
        calibration = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
        return pull + push + calibration


class MetricLoss(PairLoss):
    """dlib's metric loss (:class:`MarginMetricLoss`, ``--loss metric``).

    It trains on P x K identity batches (``identity_batches``: see :meth:`batch_loss`); on pairs, as
    here, each pair's own margin term is the loss that val reports: same-person pairs beyond
    ``threshold - margin``, different-person pairs within ``threshold + margin``.
    """

    name = "metric"
    trains_through_probability = False
    uses_margin = True
    identity_batches = True

    def __init__(self, margin: float = DEFAULT_MARGIN):
        super().__init__()
        self.batch = MarginMetricLoss(DEFAULT_THRESHOLD, margin)
        self.margin = float(margin)

    def batch_loss(self, distance: str | Distance = "euclidean", classes: int = 0, features: int = 0, seed: int = 0):
        """The loss over an identity batch's embeddings, measuring with ``distance`` (the other
        arguments are for losses that learn one centre per identity)."""
        return MarginMetricLoss(self.batch.threshold, self.margin, distance)

    def compute(self, distances, logits, labels):
        return self.batch.pair_terms(distances.float(), labels.bool())


class ArcFaceLoss(PairLoss):
    """ArcFace (:class:`AngularMarginLoss`, ``--loss arcface``): a softmax over the
    train identities with an angular margin, on P x K identity batches like ``metric``.

    It learns angles, so the run measures cosine distance (``--distance cosine``). On pairs (val) there is
    no identity softmax: each pair's loss is the BCE of P(same), which is calibrated on each epoch's
    in-batch distances.
    """

    name = "arcface"
    trains_through_probability = False
    uses_margin = True
    identity_batches = True
    distance = "cosine"

    def __init__(self, margin: float = 0.5):
        super().__init__()
        self.margin = angular_margin(margin)

    def batch_loss(self, distance: str | Distance = "cosine", classes: int = 0, features: int = 0, seed: int = 0):
        """The loss over an identity batch's embeddings: ``classes`` centres of size ``features``, first
        drawn with ``seed``."""
        return AngularMarginLoss(classes, features, self.margin, seed=seed)

    def compute(self, distances, logits, labels):
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")


#: Losses by name (``--loss``).
LOSSES: dict[str, type[PairLoss]] = {loss.name: loss for loss in (BinaryCrossEntropyLoss, ContrastiveLoss, MetricLoss,
                                                                  ArcFaceLoss)}


def loss_class(name: str) -> type[PairLoss]:
    """The loss class called ``name``; an unknown one is an :class:`InputError` listing the valid ones."""
    try:
        return LOSSES[name]
    except KeyError:
        raise InputError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}") from None


def get_loss(name: str, margin: Optional[float] = None) -> PairLoss:
    """The loss called ``name``, with ``margin`` where it takes one (None: the loss's own default)."""
    cls = loss_class(name)
    return cls(margin) if cls.uses_margin and margin is not None else cls()
