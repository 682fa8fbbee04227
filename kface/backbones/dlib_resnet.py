"""The default ``dlib-resnet``: dlib's descriptor, served by ONNX Runtime from the file kface ships.

``kface/models/dlib-resnet-v1.onnx`` is dlib's network exported from the PyTorch port (made by
``python -m kface.build.dlib_onnx``; cosine with dlib's own descriptor >= 0.99999, see its card):
one chip or a thousand, with no torch import (``import onnxruntime`` 0.2 s against 2.5 s for torch) and
faster than the torch port on this CPU. With ``--device cuda`` it runs on onnxruntime's CUDA provider
where the installed onnxruntime has one, else on ``dlib-torch``. A ``weights`` file other than the
packaged one, or an installation without the shipped file, runs as before: dlib's own API for a few
chips, the torch port for batches.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..engines.runtime import CUDA_PROVIDER
from ..models import has_network
from .dlib_native import DlibNativeBackbone
from .shipped_onnx import ShippedOnnxBackbone

#: Up to this many chips in a call (with torch not yet loaded), dlib's own API is faster end to end.
NATIVE_MAX_CHIPS = 8


def _onnx_serves(device: str, weights: Optional[str], family: str) -> bool:
    if weights is not None or not has_network(family):
        return False
    if device.startswith("cuda"):
        import onnxruntime

        return CUDA_PROVIDER in onnxruntime.get_available_providers()
    return True


class DlibResnetBackbone:
    def __init__(self, spec, device: str = "auto", weights: Optional[str] = None):
        self.name = spec.name
        self.spec = spec
        self._device = device
        self._weights = weights
        self._onnx = None
        self._native = None
        self._torch = None

    def _implementation(self, n_chips: int):
        if self._onnx is None and _onnx_serves(self._device, self._weights, self.spec.family):
            self._onnx = ShippedOnnxBackbone(self.spec, self._device)
        if self._onnx is not None:
            return self._onnx
        small_cpu_call = self._device in ("auto", "cpu") and n_chips <= NATIVE_MAX_CHIPS
        if self._torch is None and small_cpu_call:
            if self._native is None:
                self._native = DlibNativeBackbone(self.spec, "cpu", self._weights)
            return self._native
        if self._torch is None:
            from .dlib_torch import DlibTorchBackbone  # imports torch: only for batches or a GPU

            self._torch = DlibTorchBackbone(self.spec, self._device, self._weights)
        return self._torch

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        return self._implementation(len(chips)).embed_chips(chips)
