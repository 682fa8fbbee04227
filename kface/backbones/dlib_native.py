"""dlib's ResNet face descriptor through dlib's own Python API: the reference implementation.

One chip at a time on the CPU (dlib-bin is built without BLAS), no gradients; ``dlib-torch`` is the
batched port of the same network.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import InputError
from ..models.dlib_files import DLIB_RESNET, model_file


class DlibNativeBackbone:
    def __init__(self, spec, device: str = "auto", weights: Optional[str] = None):
        import dlib

        if device.startswith("cuda"):
            raise InputError(f"backbone {spec.name} runs on the CPU only; use dlib-torch for --device cuda")
        self.name = spec.name
        self.spec = spec
        self._model = dlib.face_recognition_model_v1(str(weights or model_file(DLIB_RESNET)))

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, self.spec.embedding_size), dtype=np.float32)
        descriptors = self._model.compute_face_descriptor(list(chips))
        return np.asarray([np.asarray(d) for d in descriptors], dtype=np.float32)
