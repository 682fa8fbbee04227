"""facenet-pytorch's InceptionResnetV1 (512-d), trained on VGGFace2 or CASIA-WebFace.

facenet-pytorch downloads these weights on first use into ``$TORCH_HOME/checkpoints``; kface lets it
do so when online and uses the file it left there afterwards. Offline, ``--weights FILE`` loads a
state dict from disk (for example the file facenet-pytorch downloaded on another machine).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import InputError, KfaceError

PRETRAINED = {"facenet-vggface2": "vggface2", "facenet-casia": "casia-webface"}
BATCH = 64


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
    from ``weights`` (a state dict file) when given, else facenet-pytorch's download or its cached copy."""
    from facenet_pytorch import InceptionResnetV1

    if weights:
        model = InceptionResnetV1(classify=False)
        _load_weights_file(model, weights)
        return model.eval()
    try:
        model = InceptionResnetV1(pretrained=PRETRAINED[name], classify=False)
    except Exception as exc:  # the download's network errors come in many types
        raise KfaceError(
            f"{name}: facenet-pytorch could not load or download its {PRETRAINED[name]} "
            f"weights ({exc.__class__.__name__}); offline, pass --weights FILE") from None
    return model.eval()


class FacenetBackbone:
    def __init__(self, spec, device: str = "auto", weights: Optional[str] = None):
        import torch

        from ..devices import resolve_device

        self.name = spec.name
        self.spec = spec
        self.device = resolve_device(device)
        self._model = load_inception_resnet(spec.name, weights).to(self.device)
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
