"""The trainable part of a Siamese verifier: heads, the distance-to-probability mapping, pair losses.

A :class:`~kface.training.model.PairModel` takes the frozen features of two images (see :mod:`kface.training.store`) and returns
their distance and the logit of P(same)::

    features ─► [backbone suffix] ─► head ─► distance(a, b) ─► DistanceToProbability ─► logit

- the *suffix* is empty unless the backbone's last layers train too (``--unfreeze
  fc|last-block|last-stage|all``, :mod:`kface.backbones.trainable`); it then holds copies of those
  layers, and its input has a view axis, (N, views, ...): one view (the chip or its mirror image) or
  both, whose outputs are averaged (``--tta flip``);
- the *head* comes from :data:`HEADS` (``siamese``: a d->d linear layer ending in tanh, the study's;
  ``lda``: the closed-form projection of :mod:`kface.training.lda`, fitted on the train identities, nothing
  trained; ``lda+siamese``: the study's head trained on that projection; ``none``: the embedding as
  it is, for training the backbone's own layers);
- the *distance* is one of :mod:`kface.distances` (smaller = more alike);
- :class:`DistanceToProbability` turns a distance into P(same) = sigmoid(s * (t - d)), s > 0 and t
  learnt, so the mapping always says "closer is more likely the same person".

Losses (:data:`LOSSES`) return one value per pair, so the trainer decides how a batch is reduced
(which keeps multi-process training equal to one process).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..distances import Distance
from ..errors import InputError


# -- heads -------------------------------------------------------------------------------------------
class SiameseHead(nn.Module):
    """The study's trainable last layer: ``tanh(W x + b)``, d -> d.

    Starts as the identity map (W = I, b = 0): backbone embeddings are small (dlib's lie within about
    +-0.3, where tanh is nearly linear), so the untrained head measures almost the backbone's own
    distances and training starts from the pretrained model instead of a random projection.
    """

    def __init__(self, features: int):
        super().__init__()
        self.linear = nn.utils.skip_init(nn.Linear, features, features)  # no random draw: set just below
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(features))
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.linear(x, self.linear.weight, self.linear.bias))  # F.linear: one module call less


class LdaHead(nn.Module):
    """The closed-form head, fixed: ``(x - mean) @ projection``, D -> K (see :mod:`kface.training.lda`).

    Buffers, not parameters: nothing here trains, and the fitted values travel in the state dict.
    """

    def __init__(self, features: int, dims: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("projection", torch.zeros(features, dims))

    def load_projection_(self, projection) -> None:
        """Take the values of a fitted :class:`kface.training.lda.LdaProjection` of the same shape."""
        if tuple(projection.matrix.shape) != tuple(self.projection.shape):
            raise ValueError(f"projection {projection.matrix.shape} does not fit head {tuple(self.projection.shape)}")
        with torch.no_grad():
            self.mean.copy_(torch.from_numpy(projection.mean))
            self.projection.copy_(torch.from_numpy(projection.matrix))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.projection


def lda_head_of(head: nn.Module) -> Optional[LdaHead]:
    """The :class:`LdaHead` inside a head (``lda``, ``lda+siamese``), or None."""
    return next((module for module in head.modules() if isinstance(module, LdaHead)), None)


@dataclass(frozen=True)
class HeadSpec:
    """A head kind: ``build(features)`` makes the module for ``features``-d embeddings.

    A ``closed_form`` head starts with an :class:`LdaHead` that is fitted before training (on the
    train identities, its size chosen on val); its ``build`` takes ``(features, dims)``. A head that
    does not ``train`` has no parameters of its own: training stops after epoch 0 (the fit and the
    calibration of P(same)).
    """

    name: str
    build: Callable[..., nn.Module]
    description: str
    closed_form: bool = False
    trains: bool = True


#: Head kinds by name (``--head``). A new head is a module plus one line here.
HEADS: dict[str, HeadSpec] = {
    spec.name: spec
    for spec in [
        HeadSpec("siamese", SiameseHead, "d->d linear layer ending in tanh on the frozen embedding (the study's)"),
        HeadSpec("none", lambda features: nn.Identity(), "no head: the (tuned) backbone's embedding as it is"),
        HeadSpec("lda", LdaHead, "within-class whitening + LDA projection, fitted in closed form on the train "
                 "identities (no training loop)", closed_form=True, trains=False),
        HeadSpec("lda+siamese", lambda features, dims: nn.Sequential(LdaHead(features, dims), SiameseHead(dims)),
                 "the study's tanh head trained on the LDA projection", closed_form=True),
    ]
}


def get_head(name: str) -> HeadSpec:
    """The head kind called ``name``; an unknown one is an :class:`InputError` listing the valid ones."""
    try:
        return HEADS[name]
    except KeyError:
        raise InputError(f"unknown head {name!r}; choose one of: {', '.join(HEADS)}") from None


# -- distance -> probability ---------------------------------------------------------------------------
class DistanceToProbability(nn.Module):
    """P(same) = sigmoid(s * (t - d)) with a learnt offset ``t`` (where P = 0.5) and sharpness ``s`` > 0.

    ``s`` is stored as its logarithm so it stays positive: the mapping can never invert the meaning of
    a distance. :meth:`calibrate_` sets a data-driven start.
    """

    def __init__(self, offset: float = 0.5, sharpness: float = 10.0):
        super().__init__()
        self.offset = nn.Parameter(torch.tensor(float(offset)))
        self.log_sharpness = nn.Parameter(torch.tensor(math.log(sharpness)))

    def logits(self, distances: torch.Tensor) -> torch.Tensor:
        """log(P / (1 - P)) per distance (what the BCE loss takes, numerically safer than P)."""
        return self.log_sharpness.exp() * (self.offset - distances)

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(distances))

    @torch.no_grad()
    def calibrate_(self, distances: torch.Tensor, labels: torch.Tensor) -> None:
        """Start halfway between the class medians, with P = sigmoid(2) ~ 0.88 at each median.

        Any backbone and distance then start with a sensible mapping, whatever their scale.
        """
        same = labels.bool()
        if not same.any() or same.all():
            raise InputError("calibrating P(same) needs same-person and different-person pairs")
        median_same, median_diff = distances[same].median(), distances[~same].median()
        gap = (median_diff - median_same).clamp_min(1e-6)
        self.offset.copy_((median_same + median_diff) / 2)
        self.log_sharpness.copy_(torch.log(4.0 / gap))


# -- losses --------------------------------------------------------------------------------------------
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
    """dlib's metric loss (:class:`~kface.training.losses.MarginMetricLoss`, ``--loss metric``).

    It trains on P x K identity batches (``identity_batches``: see :meth:`batch_loss`); on pairs, as
    here, each pair's own margin term is the loss that val reports: same-person pairs beyond
    ``threshold - margin``, different-person pairs within ``threshold + margin``.
    """

    name = "metric"
    trains_through_probability = False
    uses_margin = True
    identity_batches = True

    def __init__(self, margin: float = 0.04):
        super().__init__()
        from .losses import DEFAULT_THRESHOLD, MarginMetricLoss

        self.batch = MarginMetricLoss(DEFAULT_THRESHOLD, margin)
        self.margin = float(margin)

    def batch_loss(self, distance: str | Distance = "euclidean", classes: int = 0, features: int = 0, seed: int = 0):
        """The loss over an identity batch's embeddings, measuring with ``distance`` (the other
        arguments are for losses that learn one centre per identity)."""
        from .losses import MarginMetricLoss

        return MarginMetricLoss(self.batch.threshold, self.margin, distance)

    def compute(self, distances, logits, labels):
        return self.batch.pair_terms(distances.float(), labels.bool())


class ArcFaceLoss(PairLoss):
    """ArcFace (:class:`~kface.training.losses.AngularMarginLoss`, ``--loss arcface``): a softmax over the
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
        from .losses import angular_margin

        self.margin = angular_margin(margin)

    def batch_loss(self, distance: str | Distance = "cosine", classes: int = 0, features: int = 0, seed: int = 0):
        """The loss over an identity batch's embeddings: ``classes`` centres of size ``features``, first
        drawn with ``seed``."""
        from .losses import AngularMarginLoss

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
