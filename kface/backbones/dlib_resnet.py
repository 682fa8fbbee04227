"""The default ``dlib-resnet``: dlib's descriptor, served by whichever implementation is faster now.

``dlib-torch`` matches ``dlib-native`` to 5e-7 (see tests/test_dlib_torch.py) and runs a batch about 8x
faster, but importing torch costs about 2.5 s. A one-off ``kface verify`` (two chips) is therefore
served by dlib's own API, and anything larger, or any GPU run, by the torch port.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

#: Up to this many chips in a call (with torch not yet loaded), dlib's own API is faster end to end.
NATIVE_MAX_CHIPS = 8


class DlibResnetBackbone:
    def __init__(self, spec, device: str = "auto", weights: Optional[str] = None):
        self.name = spec.name
        self.spec = spec
        self._device = device
        self._weights = weights
        self._native = None
        self._torch = None

    def _implementation(self, n_chips: int):
        small_cpu_call = self._device in ("auto", "cpu") and n_chips <= NATIVE_MAX_CHIPS
        if self._torch is None and small_cpu_call:
            if self._native is None:
                from .dlib_native import DlibNativeBackbone

                self._native = DlibNativeBackbone(self.spec, "cpu", self._weights)
            return self._native
        if self._torch is None:
            from .dlib_torch import DlibTorchBackbone  # imports torch: only for batches or a GPU

            self._torch = DlibTorchBackbone(self.spec, self._device, self._weights)
        return self._torch

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        return self._implementation(len(chips)).embed_chips(chips)
