"""facenet-pytorch's InceptionResnetV1 (512-d), trained on VGGFace2 or CASIA-WebFace.

facenet-pytorch keeps its downloaded weights in ``$TORCH_HOME/checkpoints``. kface loads the file from
there when it is present, without touching the network; ``--weights FILE`` loads a state dict from
elsewhere. With neither, facenet-pytorch downloads the file when online (and a failure is one clear
error); ``KFACE_DOWNLOAD_WEIGHTS=0`` forbids that, for machines that must never reach the network, and
kface then stops at once naming the file and the folder it looked in.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError, KfaceError
from ..util.devices import resolve_device

PRETRAINED = {"facenet-vggface2": "vggface2", "facenet-casia": "casia-webface"}
#: The name facenet-pytorch gives each downloaded weight set (its release URL's last part).
WEIGHT_FILES = {"facenet-vggface2": "20180402-114759-vggface2.pt",
                "facenet-casia": "20180408-102900-casia-webface.pt"}
#: Set to 0 to forbid facenet-pytorch's download of missing weights (the only path that uses the network).
DOWNLOAD_VARIABLE = "KFACE_DOWNLOAD_WEIGHTS"
BATCH = 64


def weights_folder() -> Path:
    """The folder facenet-pytorch downloads into: ``$TORCH_HOME/checkpoints``, with ``TORCH_HOME``
    defaulting to ``$XDG_CACHE_HOME/torch``, then ``~/.cache/torch``. Its rule, restated so that
    the check needs no torch import."""
    torch_home = os.environ.get("TORCH_HOME", os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(torch_home)) / "checkpoints"


def downloaded_weights(name: str) -> Optional[Path]:
    """facenet-pytorch's downloaded weights for backbone ``name``: the file when it is present; None
    when it is absent and may be downloaded; an InputError at once when ``KFACE_DOWNLOAD_WEIGHTS=0``."""
    path = weights_folder() / WEIGHT_FILES[name]
    if path.is_file():
        return path
    if os.environ.get(DOWNLOAD_VARIABLE, "1") != "0":
        return None
    raise InputError(
        f"{name}: no weights file {path.name} in {path.parent} (facenet-pytorch's download folder, "
        f"$TORCH_HOME/checkpoints) and {DOWNLOAD_VARIABLE}=0 forbids downloading it; put it there or pass "
        f"--weights FILE")


def _load_weights_file(model, path: str) -> None:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a state dict
        raise InputError(f"{path}: not a loadable state dict ({exc.__class__.__name__})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict of InceptionResnetV1 weights")
    state = {k: v for k, v in state.items() if not k.startswith("logits.")}  # the classifier is unused
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"{path}: does not match InceptionResnetV1 ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected keys, e.g. {(missing or unexpected)[0]})")


def load_inception_resnet(name: str, weights: Optional[str] = None):
    """The InceptionResnetV1 of backbone ``name`` (without its classifier), on the CPU, in eval mode:
    from ``weights`` (a state dict file) when given, else from facenet-pytorch's downloaded file
    (which facenet-pytorch downloads when it is missing, unless ``KFACE_DOWNLOAD_WEIGHTS=0``)."""
    local = weights or downloaded_weights(name)  # raises before any heavy import when nothing is there
    from facenet_pytorch import InceptionResnetV1

    if local:
        model = InceptionResnetV1(classify=False)
        _load_weights_file(model, str(local))
        return model.eval()
    try:
        model = InceptionResnetV1(pretrained=PRETRAINED[name], classify=False)
    except Exception as exc:  # the download's network errors come in many types
        raise KfaceError(
            f"{name}: facenet-pytorch could not download its {PRETRAINED[name]} weights "
            f"({exc.__class__.__name__}); offline, put {WEIGHT_FILES[name]} in {weights_folder()} or pass "
            f"--weights FILE") from None
    return model.eval()


class FacenetBackbone:
    def __init__(self, spec, device: str = "auto", weights: Optional[str] = None):
        self.name = spec.name
        self.spec = spec
        model = load_inception_resnet(spec.name, weights)  # first: missing weights fail before torch loads
        import torch

        self.device = resolve_device(device)
        self._model = model.to(self.device)
        self._torch = torch

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        torch = self._torch
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(chips), BATCH):
                batch = torch.from_numpy(np.ascontiguousarray(chips[start:start + BATCH])).to(self.device)
                # facenet-pytorch's fixed_image_standardization: (x - 127.5) / 128, NCHW
                x = (batch.permute(0, 3, 1, 2).float() - 127.5) / 128.0
                outputs.append(self._model(x).float().cpu().numpy())
        if not outputs:
            return np.zeros((0, self.spec.embedding_size), dtype=np.float32)
        return np.concatenate(outputs).astype(np.float32)
