"""The trainable part of a Siamese verifier: heads and the distance-to-probability mapping.

A :class:`~kface.training.model.PairModel` takes the frozen features of two images (see :mod:`kface.training.store`)
and returns
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

The losses they train with are in :mod:`kface.training.losses`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

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
