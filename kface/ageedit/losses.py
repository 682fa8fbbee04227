"""The editor's losses from the frozen dlib face network kface ships: perceptual, identity and the age judge."""
from __future__ import annotations

import numpy as np

from ..backbones.trainable import load_network
from . import AGE_CLASSES

#: The face network's input side for the perceptual and identity losses (dlib reads 150 px chips; 112 px
#: costs half as much and compares a 64 px edit's content just as well).
IDENTITY_SIZE = 112


def to_tensor(chips: np.ndarray, device):
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float in [-1, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(chips)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1


class FaceLoss:
    """The frozen dlib face network as perceptual (early feature maps) and identity (descriptor) loss."""

    def __init__(self, device):
        import torch

        self.network = load_network("dlib-torch").to(device).eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.mean = (self.network.input_mean.view(1, 3, 1, 1) / 255.0).to(device)
        self.torch = torch

    def features(self, x):
        """(early feature maps, descriptor) of [-1, 1] chips."""
        F = self.torch.nn.functional
        pixels = F.interpolate((x + 1) / 2, size=(IDENTITY_SIZE, IDENTITY_SIZE), mode="bilinear", align_corners=False)
        h = (pixels - self.mean) * (255.0 / self.network.pixel_scale)
        h = self.network.stem(h)
        maps = []
        for index, stage in enumerate(self.network.stages):
            h = stage(h)
            if index < 2:
                maps.append(h)
        return maps, self.network.fc(self.network.pool(h))


class AgeJudge:
    """A linear age classifier on the frozen face network's descriptor, fitted once on real training chips
    before the editor trains: the age loss of the edits that a pretrained network gives from the first step
    (the editor's own classifier learns from scratch). Its fit is seeded and its accuracy on the held-back
    chips recorded."""

    def __init__(self, face_loss: FaceLoss, classes: int = len(AGE_CLASSES)):
        import torch

        self.face_loss = face_loss
        self.head = torch.nn.Linear(face_loss.network.fc.out_features, classes).to(face_loss.mean.device)

    def descriptors(self, chips: np.ndarray):
        import torch

        with torch.no_grad():
            return torch.cat([self.face_loss.features(to_tensor(chips[i:i + 64], self.face_loss.mean.device))[1]
                              for i in range(0, len(chips), 64)])

    def fit(self, chips: np.ndarray, ages: np.ndarray, seed: int, epochs: int = 300) -> None:
        """Full-batch Adam on cross-entropy weighted by inverse class frequency."""
        import torch
        from torch.nn import functional as F

        torch.manual_seed(seed)
        x = self.descriptors(chips)
        y = torch.from_numpy(ages.astype(np.int64)).to(x.device)
        counts = torch.bincount(y, minlength=self.head.out_features).float().clamp(min=1)
        weights = counts.sum() / (len(counts) * counts)
        optimizer = torch.optim.Adam(self.head.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(epochs):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(self.head(x), y, weight=weights).backward()
            optimizer.step()
        for parameter in self.head.parameters():
            parameter.requires_grad_(False)

    def accuracy(self, chips: np.ndarray, ages: np.ndarray) -> dict:
        import torch

        with torch.no_grad():
            predicted = self.head(self.descriptors(chips)).argmax(1).cpu().numpy()
        return {"exact": float((predicted == ages).mean()), "within_one": float((np.abs(predicted - ages) <= 1).mean())}
