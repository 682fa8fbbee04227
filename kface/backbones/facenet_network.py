"""facenet-pytorch's InceptionResnetV1 as a sequence of steps, so that training can cut it.

The cut points mean what they mean for ``dlib-torch`` (see :mod:`kface.backbones.trainable`):
``fc`` = the final linear layer and its batch norm, ``last-block`` = the last Inception-ResNet-C
block (``block8``) and after, ``last-stage`` = the last stage (the five ``repeat_3`` blocks and
``block8``) and after, ``all`` = everything. The output is L2-normalised, as facenet-pytorch returns it.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .cut_points import CutPointNetwork
from .facenet import load_inception_resnet


class PoolAndFlatten(nn.Module):
    """The global average pool, as a (N, C) vector."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x).flatten(1)


class L2Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2, dim=1)


class FacenetNetwork(CutPointNetwork):
    """An InceptionResnetV1 (``model``, without classifier) split into steps; dropout, which only acts
    in training, is left out so that a tuned suffix computes what the pretrained network computes."""

    #: facenet-pytorch's ``fixed_image_standardization``: (pixel - 127.5) / 128.
    pixel_scale = 128.0

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("input_mean", torch.full((3,), 127.5))

    def prepare_chips(self, chips: torch.Tensor) -> torch.Tensor:
        """(N, 160, 160, 3) uint8 RGB chips -> NCHW float32, standardised as facenet-pytorch does."""
        x = chips.permute(0, 3, 1, 2).to(self.input_mean.device, torch.float32)
        return (x - self.input_mean.view(1, 3, 1, 1)) / self.pixel_scale

    def _steps(self) -> list[nn.Module]:
        m = self.model
        return [m.conv2d_1a, m.conv2d_2a, m.conv2d_2b, m.maxpool_3a, m.conv2d_3b, m.conv2d_4a, m.conv2d_4b,
                m.repeat_1, m.mixed_6a, m.repeat_2, m.mixed_7a, *m.repeat_3, m.block8,
                PoolAndFlatten(m.avgpool_1a), m.last_linear, m.last_bn, L2Normalize()]

    def _suffix_lengths(self) -> dict[str, int]:
        fc = 3  # last_linear, last_bn, normalise
        last_block = fc + 2  # block8 and the pool, then the fc steps
        return {"fc": fc, "last-block": last_block, "last-stage": last_block + len(self.model.repeat_3)}


def pretrained_network(spec, weights: Optional[str] = None) -> FacenetNetwork:
    """The registry's network builder (:mod:`.trainable`): ``spec``'s pretrained weights (or ``weights``)."""
    return FacenetNetwork(load_inception_resnet(spec.name, weights)).eval()


def empty_network(spec) -> FacenetNetwork:
    """The registry's network builder: the layout alone, untrained, in eval mode."""
    from facenet_pytorch import InceptionResnetV1

    return FacenetNetwork(InceptionResnetV1(classify=False)).eval()
