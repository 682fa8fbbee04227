"""A trainable backbone's frozen prefix as an embedder: the features a checkpoint trained on, from images.

:class:`PrefixNetwork` runs the frozen layers before a cut (:mod:`kface.backbones.trainable`) on both views
of each chip (the chip and its mirror image); :class:`PrefixEmbedder` puts it behind the
:class:`~kface.embeddings.embedder.Embedder` interface so a :class:`~kface.api.Verifier` serves a model that
trained the backbone's last layers. The feature store of training (:mod:`kface.training.store`) keeps the same
features on disk. torch is imported when a prefix network is built, not before.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np

from ..backbones import get_spec
from ..backbones.trainable import VIEWS, check_cut, empty_network, inference_network, load_network
from ..faces.detect import mirror
from ..util.devices import resolve_device
from .embedder import ChipEmbedder, Embedder

PREFIX_BATCH = 64


def store_dtype(shape: Sequence[int]) -> np.dtype:
    """float32 for vectors, float16 for feature maps (see the module docstring)."""
    return np.dtype(np.float32 if len(shape) == 1 else np.float16)


def feature_dtype(cut: str, shape: Sequence[int]) -> np.dtype:
    """What a cut's features are held as: the store's dtype, or uint8 chips for ``all``."""
    return np.dtype(np.uint8) if cut == "all" else store_dtype(shape)


@functools.lru_cache(maxsize=None)
def feature_shape(backbone: str, cut: str) -> tuple[int, ...]:
    """The shape of one image's feature for ``backbone`` cut at ``cut``: (D,) for ``none``, else
    (views, ...) with the chip's and the mirrored chip's prefix output (for ``all``, the chips)."""
    check_cut(backbone, cut)
    spec = get_spec(backbone)
    if cut == "none":
        return (spec.embedding_size,)
    if cut == "all":
        return (VIEWS, spec.input_size, spec.input_size, 3)
    import torch

    with torch.no_grad():
        probe = empty_network(backbone).forward_prefix(torch.zeros(1, 3, spec.input_size, spec.input_size), cut)
    return (VIEWS, *probe.shape[1:])


class PrefixNetwork:
    """The frozen layers before a cut of a trainable backbone's network, batched, on one device."""

    def __init__(self, backbone: str, cut: str, device: str = "auto", weights: Optional[str] = None):
        import torch

        self.backbone, self.cut = backbone, cut
        self.device = torch.device(resolve_device(device))
        # The prefix never trains, so it may run in its fastest equivalent form.
        network = inference_network(load_network(backbone, weights))
        self.network = network.to(self.device, memory_format=torch.channels_last).eval()

    def __call__(self, chips: np.ndarray, bar=None) -> np.ndarray:
        """(N, S, S, 3) uint8 chips -> (N, 2, ...) features of each chip and its mirror image."""
        import torch

        shape = feature_shape(self.backbone, self.cut)
        out = np.empty((len(chips), *shape), dtype=store_dtype(shape))
        with torch.inference_mode():
            for start in range(0, len(chips), PREFIX_BATCH):
                batch = np.ascontiguousarray(chips[start:start + PREFIX_BATCH])
                for view, pixels in enumerate((batch, mirror(batch))):
                    x = self.network.prepare_chips(torch.from_numpy(pixels).to(self.device))
                    out[start:start + len(batch), view] = self.network.forward_prefix(x, self.cut).float().cpu().numpy()
                if bar is not None:
                    bar.update(len(batch))
        return out


class PrefixEmbedder(ChipEmbedder):
    """Images -> flattened frozen-prefix features of both views, with :class:`~kface.embeddings.embedder.Embedder`'s
    interface.

    Lets a :class:`~kface.api.Verifier` serve a model that trained the backbone's last layers: its
    model receives exactly what training read from the store (same network, same dtype, both views;
    for cut ``all``, the chips).
    """

    def __init__(self, embedder: Embedder, cut: str, device: str = "auto"):
        super().__init__(embedder)
        self.spec = embedder.spec
        self.cut = cut
        self.shape = feature_shape(embedder.spec.name, cut)
        self.dtype = feature_dtype(cut, self.shape)
        self.empty_size = int(np.prod(self.shape))
        self._prefix = None if cut == "all" else PrefixNetwork(embedder.spec.name, cut, device, embedder.weights)

    def _features(self, chips: np.ndarray) -> np.ndarray:
        if self._prefix is not None:
            return self._prefix(chips)
        return np.stack([chips, mirror(chips)], axis=1)

    def _vectors(self, chips: np.ndarray) -> np.ndarray:
        # Through the training dtype first, so the model sees the values it trained on.
        return self._features(chips).astype(self.dtype).reshape(len(chips), -1).astype(np.float32)
