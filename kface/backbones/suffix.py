"""The modules a trainable suffix is made of (see :func:`kface.backbones.trainable.build_suffix`)."""
from __future__ import annotations

import torch
from torch import nn


class Suffix(nn.Sequential):
    """The trainable layers, in order. Batch norm layers keep their pretrained statistics when the rest
    trains: P x K batches are small and unlike the data the statistics came from."""

    def train(self, mode: bool = True) -> "Suffix":
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self


class ChipInput(nn.Module):
    """(N, S, S, 3) uint8 RGB chips -> the network's NCHW float input, ``(pixel - mean) / scale``."""

    def __init__(self, mean: torch.Tensor, scale: float):
        super().__init__()
        self.register_buffer("mean", mean.float().view(1, 3, 1, 1))
        self.scale = float(scale)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return (chips.permute(0, 3, 1, 2).float() - self.mean) / self.scale
