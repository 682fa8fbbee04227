"""The trainable part of a Siamese verifier: heads, the distance-to-probability mapping, pair losses.

A :class:`PairModel` takes the frozen features of two images (see :mod:`kface.features`) and returns
their distance and the logit of P(same)::

    features ─► [backbone suffix] ─► head ─► distance(a, b) ─► DistanceToProbability ─► logit

- the *suffix* is empty unless the last layers of the ``dlib-torch`` network train too
  (``--unfreeze fc|last-block|last-stage``); it then holds copies of those layers;
- the *head* comes from :data:`HEADS` (``siamese``: a d->d linear layer ending in tanh, the study's);
- the *distance* is one of :mod:`kface.distances` (smaller = more alike);
- :class:`DistanceToProbability` turns a distance into P(same) = sigmoid(s * (t - d)), s > 0 and t
  learnt, so the mapping always says "closer is more likely the same person".

Losses (:data:`LOSSES`) return one value per pair, so the trainer decides how a batch is reduced
(which keeps multi-process training equal to one process).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .distances import Distance, get_distance
from .errors import InputError


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


@dataclass(frozen=True)
class HeadSpec:
    """A head kind: ``build(features)`` makes the module for ``features``-d embeddings."""

    name: str
    build: Callable[[int], nn.Module]
    description: str


#: Head kinds by name (``--head``). A new head is a module plus one line here.
HEADS: dict[str, HeadSpec] = {
    spec.name: spec
    for spec in [
        HeadSpec("siamese", SiameseHead, "d->d linear layer ending in tanh on the frozen embedding (the study's)"),
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


#: Losses by name (``--loss``).
LOSSES: dict[str, type[PairLoss]] = {loss.name: loss for loss in (BinaryCrossEntropyLoss, ContrastiveLoss)}


def loss_class(name: str) -> type[PairLoss]:
    """The loss class called ``name``; an unknown one is an :class:`InputError` listing the valid ones."""
    try:
        return LOSSES[name]
    except KeyError:
        raise InputError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}") from None


def get_loss(name: str, margin: float = 1.0) -> PairLoss:
    """The loss called ``name``, with ``margin`` where it takes one."""
    cls = loss_class(name)
    return cls(margin) if cls.uses_margin else cls()


# -- the model -------------------------------------------------------------------------------------------
class PairModel(nn.Module):
    """Frozen features of two images -> (distance, logit of P(same)).

    Args:
        head: the module applied to each image's embedding (e.g. :class:`SiameseHead`).
        distance: a name from :mod:`kface.distances` or a :class:`~kface.distances.Distance`.
        suffix: trainable backbone layers run before the head (None: the features are embeddings).
        detach_probability: feed the mapping a detached distance (losses that train the distance
            directly, see :attr:`PairLoss.trains_through_probability`).
    """

    def __init__(self, head: nn.Module, distance: str | Distance = "euclidean", suffix: Optional[nn.Module] = None,
                 detach_probability: bool = False):
        super().__init__()
        self.suffix = suffix
        self.head = head
        self.probability = DistanceToProbability()
        self.distance = get_distance(distance)
        self.detach_probability = detach_probability

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Features (N, ...) in any float dtype -> embeddings in the space the distance is measured in."""
        x = features.float()
        if self.suffix is not None:
            x = self.suffix(x)
        return self.head(x)

    def forward(self, features_a: torch.Tensor, features_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One pass over both sides: half the kernel launches of two calls, same result.
        embeddings = self.embed(torch.cat([features_a, features_b]))
        a, b = embeddings[:len(features_a)], embeddings[len(features_a):]
        distances = self.distance.pairwise(a, b)
        source = distances.detach() if self.detach_probability else distances
        return distances, self.probability.logits(source)


def backbone_suffix(cut: str, network: Optional[nn.Module] = None) -> Optional[nn.Module]:
    """Trainable copies of the ``dlib-torch`` layers after ``cut`` (None for ``none``).

    ``network`` is a :class:`~kface.backbones.dlib_torch.DlibResNet` holding the pretrained weights;
    without one the layers are built empty, to receive a checkpoint's state dict.
    """
    if cut == "none":
        return None
    from .backbones.dlib_torch import DlibResNet

    source = network if network is not None else DlibResNet()
    suffix = nn.Sequential(*copy.deepcopy(source.suffix_modules(cut)))
    for parameter in suffix.parameters():
        parameter.requires_grad_(True)
    return suffix


def build_pair_model(head: str, embedding_size: int, distance: str = "euclidean", cut: str = "none",
                     loss: str = "bce", network: Optional[nn.Module] = None) -> PairModel:
    """A :class:`PairModel` for the given head kind, embedding size, distance, cut point and loss."""
    return PairModel(get_head(head).build(embedding_size), distance, backbone_suffix(cut, network),
                     detach_probability=not loss_class(loss).trains_through_probability)


def trainable_parameters(model: nn.Module) -> Sequence[nn.Parameter]:
    """The parameters the optimiser updates."""
    return [parameter for parameter in model.parameters() if parameter.requires_grad]
