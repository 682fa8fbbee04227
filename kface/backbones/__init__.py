"""Stage 3: face backbones, behind one registry.

A backbone turns aligned face chips (N, S, S, 3 RGB uint8, S = its ``input_size``) into embeddings
(N, D float32). Each entry names its module, so torch, dlib and facenet-pytorch are imported only when
that backbone is loaded. ``family`` names the weights, not the implementation: two implementations of
the same network (``dlib-native`` and ``dlib-torch``) share cached embeddings. ``network`` names the module
building a backbone's trainable PyTorch network (see :mod:`.trainable`), and so its cut points.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np

from ..engines import DEFAULT_ENGINE, ENGINES
from ..errors import InputError
from .cuts import CUT_POINTS


class Backbone(Protocol):
    """What every backbone provides."""

    name: str
    spec: "BackboneSpec"

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB aligned chips -> (N, D) float32 embeddings."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    module: str  # module under kface.backbones holding the class
    class_name: str
    family: str  # identity of the weights, used in cache keys
    input_size: int  # chip side in pixels
    chip_padding: float  # dlib.get_face_chip padding used to cut the chip
    embedding_size: int
    description: str
    #: Module under kface.backbones with ``pretrained_network(spec, weights)`` and ``empty_network(spec)``
    #: (a :class:`~kface.backbones.cut_points.CutPointNetwork`); None: no layer of it can train.
    network: Optional[str] = None

    @property
    def cut_points(self) -> tuple[str, ...]:
        """The ``--unfreeze`` cuts this backbone trains from."""
        return CUT_POINTS if self.network else CUT_POINTS[:1]


DEFAULT_BACKBONE = "dlib-resnet"
#: Backbone modules that run their network through onnxruntime by default; on ``--engine torch`` a
#: backbone of theirs runs as the trainable backbone of the same weights (see kface.engines).
ONNX_DEFAULT_MODULES = ("dlib_resnet",)
#: The module of backbones that run a shipped model's network (its card may also ship an int8 copy).
SHIPPED_NETWORK_MODULE = "shipped_onnx"

BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec("dlib-native", "dlib_native", "DlibNativeBackbone", "dlib-resnet-v1", 150, 0.25, 128,
                     "dlib's ResNet descriptor through dlib's own Python API (the reference)"),
        BackboneSpec("dlib-torch", "dlib_torch", "DlibTorchBackbone", "dlib-resnet-v1", 150, 0.25, 128,
                     "dlib's ResNet ported to PyTorch: batched, CPU or GPU, last layers trainable", "dlib_torch"),
        BackboneSpec("facenet-vggface2", "facenet", "FacenetBackbone", "facenet-vggface2", 160, 0.3, 512,
                     "facenet-pytorch InceptionResnetV1 trained on VGGFace2 (weights: download or --weights)",
                     "facenet_network"),
        BackboneSpec("facenet-casia", "facenet", "FacenetBackbone", "facenet-casia-webface", 160, 0.3, 512,
                     "facenet-pytorch InceptionResnetV1 trained on CASIA-WebFace (weights: download or --weights)",
                     "facenet_network"),
    ]
}
#: Networks of the shipped models (kface/models/), run through ONNX Runtime; use them as --model NAME.
BACKBONES["kface-korean-v4"] = BackboneSpec(
    "kface-korean-v4", SHIPPED_NETWORK_MODULE, "ShippedOnnxBackbone", "kface-korean-v4", 150, 0.25, 256,
    "the shipped Korean face model's network (dlib's ResNet, last stage tuned on Korean faces, with 0.5 x stock "
    "dlib's vector); --model korean")
#: The default name: dlib's descriptor served by dlib-native for one-off calls, dlib-torch for batches.
BACKBONES[DEFAULT_BACKBONE] = BackboneSpec(
    DEFAULT_BACKBONE, "dlib_resnet", "DlibResnetBackbone", "dlib-resnet-v1", 150, 0.25, 128,
    "dlib's ResNet descriptor from face_recognition_models (default; offline)")
#: Backbones with a trainable network, in registry order.
TRAINABLE_BACKBONES = tuple(name for name, spec in BACKBONES.items() if spec.network)


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name``; an unknown name is an :class:`InputError` listing the valid ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise InputError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(BACKBONES))}") from None


def trainable_backbone(name: str) -> str:
    """The trainable backbone that runs the same weights (family) as ``name``; ``name`` when none does."""
    family = get_spec(name).family
    return next((other for other in TRAINABLE_BACKBONES if BACKBONES[other].family == family), name)


def load_backbone(name: str = DEFAULT_BACKBONE, device: str = "auto", weights: Optional[str] = None) -> Backbone:
    """Construct the backbone registered as ``name`` (imports its libraries now, not before)."""
    spec = get_spec(name)
    module = importlib.import_module(f"{__name__}.{spec.module}")
    return getattr(module, spec.class_name)(spec, device=device, weights=weights)


def backbone_for_engine(backbone: str, engine: str = DEFAULT_ENGINE) -> str:
    """The backbone name that runs ``backbone``'s network on ``engine`` (``--engine``).

    A backbone the registry serves through onnxruntime by default (``dlib-resnet``) runs on ``torch``
    as the trainable backbone of the same weights (``dlib-torch``). Other names already name their
    implementation (``dlib-native``, ``dlib-torch``; facenet runs on torch either way).
    """
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if engine == "torch" and get_spec(backbone).module in ONNX_DEFAULT_MODULES:
        return trainable_backbone(backbone)
    return backbone
