"""Backbones whose last layers can train: a frozen prefix and a trainable suffix, per cut point.

``--unfreeze`` names the cut: ``none`` (nothing of the backbone trains), ``fc`` (its final layer),
``last-block`` (its last residual block and after), ``last-stage`` (its last stage and after), ``all``
(every layer; GPU only, see :func:`check_cut`). For the cached cuts (``fc``, ``last-block``,
``last-stage``) the prefix runs once per image and per mirror image, and its output is stored
(:mod:`kface.training.store`); for ``all`` the input is the aligned chip itself.

Networks (``dlib-torch``: :class:`~kface.backbones.dlib_torch.DlibResNet`; ``facenet-*``:
:class:`~kface.backbones.facenet_network.FacenetNetwork`) provide ``prepare_chips``,
``forward_prefix(x, cut)`` and ``suffix_modules(cut)`` (the cut-point part from their shared base,
:class:`~kface.backbones.cut_points.CutPointNetwork`); this module builds them and the suffix.
"""
from __future__ import annotations

import copy
from typing import Optional

from ..errors import InputError

CUT_POINTS = ("none", "fc", "last-block", "last-stage", "all")
#: Cuts whose prefix output is computed once and stored.
CACHED_CUTS = ("fc", "last-block", "last-stage")
#: Stored views of each image for the cached cuts: the chip, and the chip mirrored left-right.
VIEWS = 2
#: Backbones with a trainable network, and the module that builds it.
TRAINABLE_BACKBONES = ("dlib-torch", "facenet-vggface2", "facenet-casia")


def check_cut(backbone: str, cut: str) -> None:
    """An :class:`InputError` unless ``backbone`` can train from ``cut``."""
    if cut not in CUT_POINTS:
        raise InputError(f"unknown --unfreeze {cut!r}; choose one of: {', '.join(CUT_POINTS)}")
    if cut != "none" and backbone not in TRAINABLE_BACKBONES:
        raise InputError(f"--unfreeze {cut} trains the backbone's last layers, which needs --backbone "
                         f"{' or '.join(TRAINABLE_BACKBONES)} (got {backbone})")


def check_cut_device(cut: str, device_type: str) -> None:
    """``all`` trains the whole network from chips, which only a GPU does in useful time."""
    if cut == "all" and device_type != "cuda":
        raise InputError("--unfreeze all trains every layer of the backbone and needs a CUDA GPU (--device cuda); "
                         "on this machine use --unfreeze last-block or last-stage")


def load_network(backbone: str, weights: Optional[str] = None):
    """The pretrained network of ``backbone``, unfolded (as it trains), on the CPU, in eval mode."""
    if backbone == "dlib-torch":
        from .dlib_torch import load_dlib_resnet

        return load_dlib_resnet(weights)
    from .facenet import load_inception_resnet
    from .facenet_network import FacenetNetwork

    return FacenetNetwork(load_inception_resnet(backbone, weights)).eval()


def empty_network(backbone: str):
    """The network of ``backbone`` with untrained weights: the layout a checkpoint's suffix loads into."""
    if backbone == "dlib-torch":
        from .dlib_torch import DlibResNet

        return DlibResNet().eval()
    from facenet_pytorch import InceptionResnetV1

    from .facenet_network import FacenetNetwork

    return FacenetNetwork(InceptionResnetV1(classify=False)).eval()


def inference_network(network):
    """A copy of ``network`` for running the frozen prefix: dlib's affine layers folded into its
    convolutions (same function, about twice as fast); other networks unchanged."""
    from .dlib_torch import DlibResNet, fold_affine

    return fold_affine(network) if isinstance(network, DlibResNet) else network


def build_suffix(network, cut: str):
    """Trainable copies of ``network``'s layers after ``cut`` (None for ``none``), as one
    :class:`~kface.backbones.suffix.Suffix`. For ``all`` the suffix starts from uint8 chips."""
    import torch

    from .suffix import ChipInput, Suffix

    if cut == "none":
        return None
    modules = [copy.deepcopy(module) for module in network.suffix_modules(cut)]
    if cut == "all":
        modules.insert(0, ChipInput(network.input_mean.detach().clone(), network.pixel_scale))
    # Channels-last convolution weights: about a quarter faster to train on CPU here (measured on
    # dlib-torch's last stage), and what GPUs prefer; the input may keep either layout.
    suffix = Suffix(*modules).to(memory_format=torch.channels_last)
    for parameter in suffix.parameters():
        parameter.requires_grad_(True)
    return suffix
