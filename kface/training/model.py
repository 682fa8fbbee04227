"""The pair model (:class:`PairModel`): backbone suffix, head, distance and P(same), and its builder."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..backbones.trainable import build_suffix, empty_network
from ..distances import Distance, get_distance
from .heads import DistanceToProbability, get_head
from .losses import loss_class


class PairModel(nn.Module):
    """Frozen features of two images -> (distance, logit of P(same)).

    Args:
        head: the module applied to each image's embedding (e.g. :class:`SiameseHead`).
        distance: a name from :mod:`kface.distances` or a :class:`~kface.distances.Distance`.
        suffix: trainable backbone layers run before the head (None: the features are embeddings).
            With a suffix, features are (N, views, ...) and the views' outputs are averaged.
        detach_probability: feed the mapping a detached distance (losses that train the distance
            directly, see :attr:`PairLoss.trains_through_probability`).
    """

    def __init__(self, head: nn.Module, distance: str | Distance = "euclidean", suffix: Optional[nn.Module] = None,
                 detach_probability: bool = False):
        super().__init__()
        self.suffix = suffix
        self.head = head
        self.probability = DistanceToProbability()
        self.distance = get_distance(distance)
        self.detach_probability = detach_probability

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Features (N, ...) in any float dtype -> embeddings in the space the distance is measured in."""
        if self.suffix is None:
            return self.head(features.float())
        count, views = features.shape[:2]
        # uint8 chips (cut ``all``) convert themselves; stored maps are float16.
        x = features.flatten(0, 1)
        x = self.suffix(x if x.dtype == torch.uint8 else x.float())
        return self.head(x.view(count, views, -1).mean(dim=1))

    def forward(self, features_a: torch.Tensor, features_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One pass over both sides: half the kernel launches of two calls, same result.
        embeddings = self.embed(torch.cat([features_a, features_b]))
        a, b = embeddings[:len(features_a)], embeddings[len(features_a):]
        distances = self.distance.pairwise(a, b)
        source = distances.detach() if self.detach_probability else distances
        return distances, self.probability.logits(source)


def backbone_suffix(cut: str, network: Optional[nn.Module] = None, backbone: str = "dlib-torch") -> Optional[nn.Module]:
    """Trainable copies of ``backbone``'s layers after ``cut`` (None for ``none``).

    ``network`` holds the pretrained weights (:func:`kface.backbones.trainable.load_network`); without
    one the layers are built untrained, to receive a checkpoint's state dict.
    """
    if cut == "none":
        return None
    return build_suffix(network if network is not None else empty_network(backbone), cut)


def build_pair_model(head: str, embedding_size: int, distance: str = "euclidean", cut: str = "none",
                     loss: str = "bce", network: Optional[nn.Module] = None, backbone: str = "dlib-torch",
                     dims: Optional[int] = None) -> PairModel:
    """A :class:`PairModel` for the given head kind, embedding size, distance, cut point and loss.

    ``dims`` is the output size of a closed-form head's projection (required for those, unused otherwise).
    """
    spec = get_head(head)
    if spec.closed_form and dims is None:
        raise ValueError(f"head {head} needs the size of its projection (dims)")
    module = spec.build(embedding_size, dims) if spec.closed_form else spec.build(embedding_size)
    return PairModel(module, distance, backbone_suffix(cut, network, backbone),
                     detach_probability=not loss_class(loss).trains_through_probability)


def trainable_parameters(model: nn.Module) -> Sequence[nn.Parameter]:
    """The parameters the optimiser updates."""
    return [parameter for parameter in model.parameters() if parameter.requires_grad]
