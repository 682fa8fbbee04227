"""Backbones whose last layers can train: a frozen prefix and a trainable suffix, per cut point.

``--unfreeze`` names the cut: ``none`` (nothing of the backbone trains), ``fc`` (its final layer),
``last-block`` (its last residual block and after), ``last-stage`` (its last stage and after), ``all``
(every layer; GPU only, see :func:`check_cut`). For the cached cuts (``fc``, ``last-block``,
``last-stage``) the prefix runs once per image and per mirror image, and its output is stored
(:mod:`kface.training.store`); for ``all`` the input is the aligned chip itself.

Each trainable backbone's registry entry (:data:`kface.backbones.BACKBONES`) names the module that
builds its network (``dlib-torch``: :mod:`~kface.backbones.dlib_torch`; ``facenet-*``:
:mod:`~kface.backbones.facenet_network`), each a :class:`~kface.backbones.cut_points.CutPointNetwork`
(``prepare_chips``, ``forward_prefix(x, cut)``, ``suffix_modules(cut)``, ``for_inference()``); this
module builds them and the suffix.
"""
from __future__ import annotations

import copy
import importlib
from types import ModuleType
from typing import Optional

from ..errors import InputError
from . import TRAINABLE_BACKBONES, BackboneSpec, get_spec
from .cuts import CACHED_CUTS, CUT_POINTS, VIEWS  # noqa: F401  (re-exported: training reads them here)


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


def _network_module(backbone: str) -> tuple[BackboneSpec, ModuleType]:
    """``backbone``'s registry entry and the module that builds its network (imports torch)."""
    spec = get_spec(backbone)
    if spec.network is None:
        raise InputError(f"--backbone {backbone} has no trainable network; use {' or '.join(TRAINABLE_BACKBONES)}")
    return spec, importlib.import_module(f"{__package__}.{spec.network}")


def load_network(backbone: str, weights: Optional[str] = None):
    """The pretrained network of ``backbone``, unfolded (as it trains), on the CPU, in eval mode."""
    spec, module = _network_module(backbone)
    return module.pretrained_network(spec, weights)


def empty_network(backbone: str):
    """The network of ``backbone`` with untrained weights: the layout a checkpoint's suffix loads into."""
    spec, module = _network_module(backbone)
    return module.empty_network(spec)


def inference_network(network):
    """A copy of ``network`` for running the frozen prefix (see :meth:`CutPointNetwork.for_inference
    <kface.backbones.cut_points.CutPointNetwork.for_inference>`)."""
    return network.for_inference()


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
