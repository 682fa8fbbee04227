"""A network run as an ordered list of steps that training can cut in two (see :mod:`.trainable`).

Subclasses declare their steps and how many of the last steps each partial cut trains; this base turns
a cut point into the frozen prefix (:meth:`CutPointNetwork.forward_prefix`) and the trainable suffix
(:meth:`CutPointNetwork.suffix_modules`). It holds no modules itself, so subclasses' state-dict keys
are their own.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from ..errors import InputError
from .cuts import CUT_POINTS


class CutPointNetwork(nn.Module, ABC):
    """An ``nn.Module`` whose forward pass is :meth:`_steps` applied in order, cut at a named point of
    :data:`~kface.backbones.cuts.CUT_POINTS`: ``none`` trains no step, ``all`` every step, and
    the partial cuts the last :meth:`_suffix_lengths` steps."""

    @abstractmethod
    def _steps(self) -> list[nn.Module]:
        """The network's steps, in the order the input runs through them."""

    @abstractmethod
    def _suffix_lengths(self) -> dict[str, int]:
        """For ``fc``, ``last-block`` and ``last-stage``: how many of the last steps train."""

    def _cut_index(self, cut: str) -> int:
        """Index into :meth:`_steps` where the trainable suffix starts."""
        steps = len(self._steps())
        indices = {"none": steps, **{name: steps - length for name, length in self._suffix_lengths().items()},
                   "all": 0}
        if cut not in indices:
            raise InputError(f"unknown cut point {cut!r}; choose one of: {', '.join(CUT_POINTS)}")
        return indices[cut]

    def for_inference(self) -> "CutPointNetwork":
        """The network to run the frozen prefix with: this one, unless a subclass has a faster
        equivalent (dlib's folds its affine layers)."""
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self._steps():
            x = step(x)
        return x

    def forward_prefix(self, x: torch.Tensor, cut: str) -> torch.Tensor:
        """The frozen part before ``cut`` (``none``: the whole network, giving the embedding)."""
        for step in self._steps()[:self._cut_index(cut)]:
            x = step(x)
        return x

    def forward_suffix(self, h: torch.Tensor, cut: str) -> torch.Tensor:
        """The trainable part after ``cut``, applied to :meth:`forward_prefix`'s output."""
        for step in self.suffix_modules(cut):
            h = step(h)
        return h

    def suffix_modules(self, cut: str) -> list[nn.Module]:
        """The steps after ``cut`` (empty for ``none``)."""
        return self._steps()[self._cut_index(cut):]

    def set_trainable(self, cut: str) -> list[nn.Parameter]:
        """Freeze every parameter before ``cut`` and unfreeze those after it; return the trainable ones.

        Layers that hold buffers rather than parameters (dlib's affine layers) stay frozen either way.
        """
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        trainable = [p for module in self.suffix_modules(cut) for p in module.parameters()]
        for parameter in trainable:
            parameter.requires_grad_(True)
        return trainable
