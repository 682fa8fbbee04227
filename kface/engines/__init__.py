"""Inference engines: the face networks run through ONNX Runtime, exported from their PyTorch modules.

Every network kface runs for a user takes aligned chips and returns vectors, so every exported graph has
one input and one output (see :data:`INPUT_SPEC`)::

    chips       uint8   (N, S, S, 3)  RGB aligned chips (dlib.get_face_chip), N dynamic
    embeddings  float32 (N, D)        the vectors distances are measured on

Preprocessing (mean subtraction, scaling, NCHW), flip averaging and any trained suffix or head are
inside the graph, so callers hand over chips and get vectors, with no torch.

The stable API (the shipped Korean model is made with it):

- :func:`export_checkpoint(model_pt, onnx_path, fp16) <kface.engines.export.export_checkpoint>`: a
  ``kface train`` checkpoint's whole chip -> vector path to an ONNX file, atomically; returns
  ``{sha256, size_bytes, input, output, fp16, parity, ...}``.
- :func:`export_onnx(module, path, chip_size, ...) <kface.engines.export.export_onnx>`: any
  ``nn.Module`` taking uint8 NHWC chips (e.g. :class:`~kface.engines.export.ChipGraph`) to ONNX.
- :class:`OnnxNetwork(path, device="auto") <kface.engines.runtime.OnnxNetwork>`: a lazily created
  ``onnxruntime.InferenceSession``; ``run(chips) -> vectors`` in batches. Imports no torch.
- :func:`checkpoint_network <kface.engines.cached.checkpoint_network>`: a checkpoint's ONNX file,
  exported on first use and cached by the checkpoint's sha256 under ``$KFACE_CACHE_DIR/onnx``.

``torch`` is imported only by :mod:`.export` (exporting); :mod:`.runtime` needs onnxruntime and numpy.
"""
from __future__ import annotations

#: The graph's input and output, as :func:`export_onnx` writes them (re-exported).
from .graph_names import INPUT_NAME, OUTPUT_NAME  # noqa: F401

ENGINES = ("onnx", "torch")
DEFAULT_ENGINE = "onnx"


def __getattr__(name: str):
    # Lazy: importing kface.engines must not import torch (export) or onnxruntime (runtime).
    if name == "OnnxNetwork":
        from .runtime import OnnxNetwork

        return OnnxNetwork
    if name in ("export_onnx", "export_checkpoint", "ChipGraph", "check_parity"):
        from . import export

        return getattr(export, name)
    raise AttributeError(f"module 'kface.engines' has no attribute {name!r}")


def backbone_for_engine(backbone: str, engine: str = DEFAULT_ENGINE) -> str:
    """The backbone name that runs ``backbone``'s network on ``engine`` (``--engine``).

    A backbone the registry serves through onnxruntime by default (``dlib-resnet``) runs on ``torch``
    as the trainable backbone of the same weights (``dlib-torch``). Other names already name their
    implementation (``dlib-native``, ``dlib-torch``; facenet runs on torch either way).
    """
    from ..backbones import ONNX_DEFAULT_MODULES, get_spec, trainable_backbone
    from ..errors import InputError

    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if engine == "torch" and get_spec(backbone).module in ONNX_DEFAULT_MODULES:
        return trainable_backbone(backbone)
    return backbone
