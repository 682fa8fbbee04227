"""Inference engines: the face networks run through ONNX Runtime, exported from their PyTorch modules.

Every network kface runs for a user takes aligned chips and returns vectors, so every exported graph has
one input and one output (see :data:`INPUT_SPEC`)::

    chips       uint8   (N, S, S, 3)  RGB aligned chips (dlib.get_face_chip), N dynamic
    embeddings  float32 (N, D)        the vectors distances are measured on

Preprocessing (mean subtraction, scaling, NCHW), flip averaging and any trained suffix or head are
inside the graph, so callers hand over chips and get vectors, with no torch.

The stable API (the shipped Korean model is made with it):

- :func:`export_onnx(module, path, chip_size, ...) <kface.engines.export.export_onnx>`: any
  ``nn.Module`` taking uint8 NHWC chips (e.g. :class:`~kface.engines.export.ChipGraph`) to ONNX.
- :class:`OnnxNetwork(path, device="auto") <kface.engines.runtime.OnnxNetwork>`: a lazily created
  ``onnxruntime.InferenceSession``; ``run(chips) -> vectors`` in batches. Imports no torch.

``torch`` is imported only by :mod:`.export` (exporting); :mod:`.runtime` needs onnxruntime and numpy.
A ``kface train`` checkpoint is exported by :func:`kface.training.export.export_checkpoint` and cached
by :func:`kface.training.onnx_cache.checkpoint_network`, which build on these parts.
"""
from __future__ import annotations

#: The graph's input and output, as :func:`export_onnx` writes them (re-exported).
from .graph_names import INPUT_NAME, OUTPUT_NAME  # noqa: F401
from .runtime import OnnxNetwork

ENGINES = ("onnx", "torch")
DEFAULT_ENGINE = "onnx"


def __getattr__(name: str):
    # Lazy: importing kface.engines must not import torch (export) or onnxruntime (runtime).
    if name == "OnnxNetwork":
        return OnnxNetwork
    if name in ("export_onnx", "ChipGraph", "check_parity"):
        from . import export

        return getattr(export, name)
    raise AttributeError(f"module 'kface.engines' has no attribute {name!r}")

