"""ArcFace (``--loss arcface``): the angular-margin softmax against its formula written out by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kface.errors import InputError
from kface.training.config import TrainConfig
from kface.training.losses import AngularMarginLoss, get_loss


def by_hand(embeddings: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor, margin: float,
            scale: float) -> float:
    """Mean over images of -log softmax, the own class's logit s cos(theta + m), the others' s cos(theta_j)."""
    total = 0.0
    for x, label in zip(embeddings, labels.tolist()):
        cosines = [float(F.cosine_similarity(x, c, dim=0)) for c in centres]
        logits = [scale * (math.cos(math.acos(cos) + margin) if j == label else cos) for j, cos in enumerate(cosines)]
        total += -logits[label] + math.log(sum(math.exp(v) for v in logits))
    return total / len(labels)


def test_the_loss_is_the_formula():
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2, 2, 3])
    loss = AngularMarginLoss(classes=4, features=5, margin=0.3, scale=10.0, seed=2)
    result = loss(embeddings, labels)
    assert result.loss.item() == pytest.approx(by_hand(embeddings, loss.centres.detach(), labels, 0.3, 10.0), rel=1e-5)
    assert (result.pairs, result.positives, result.negatives) == (6, 2, 13)  # 15 pairs i < j, 2 of one person


def test_imprinting_starts_each_centre_at_its_identity_s_mean_direction():
    embeddings = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-0.3, 3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    loss = AngularMarginLoss(classes=3, features=2, seed=0)
    untouched = loss.centres.detach()[2].clone()
    loss.imprint_(embeddings, labels)
    centres = loss.centres.detach()
    root = math.sqrt(0.5)
    assert torch.allclose(centres[0], F.normalize(torch.tensor([1 + root, root]), dim=0))  # mean of unit vectors
    length = math.hypot(0.3, 3)
    assert torch.allclose(centres[1], F.normalize(torch.tensor([-0.3 / length, 1 + 3 / length]), dim=0))
    assert torch.equal(centres[2], untouched)  # no image: the seeded draw stays
    # From imprinted centres every image is already nearest its own identity's centre.
    assert loss(embeddings, labels).correct == 4


def test_training_pulls_images_to_their_centre_and_the_margin_costs():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(12, 8, generator=generator, requires_grad=True)
    labels = torch.arange(4).repeat_interleave(3)
    loss = AngularMarginLoss(classes=4, features=8, margin=0.5, seed=0)
    optimizer = torch.optim.Adam([embeddings, *loss.parameters()], lr=0.05)
    first = None
    for _ in range(100):
        result = loss(embeddings, labels)
        first = first if first is not None else result.loss.item()
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
    assert result.loss.item() < first / 4 and result.correct == 12
    # With no margin the same (separated) images cost less: the margin is what keeps pushing.
    plain = AngularMarginLoss(classes=4, features=8, margin=1e-6, seed=0)
    plain.load_state_dict(loss.state_dict())
    assert plain(embeddings, labels).loss.item() < loss(embeddings, labels).loss.item()


def test_the_same_seed_draws_the_same_centres_and_gradients():
    runs = []
    for _ in range(2):
        embeddings = torch.linspace(-1, 1, 40).view(8, 5).requires_grad_(True)
        loss = AngularMarginLoss(classes=3, features=5, seed=7)
        loss(embeddings, torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])).loss.backward()
        runs.append((loss.centres.detach().clone(), embeddings.grad.clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("margin", [0.0, -0.1, 1.6])
def test_the_margin_is_an_angle_below_a_right_angle(margin):
    with pytest.raises(InputError, match="--margin for --loss arcface"):
        get_loss("arcface", margin)


def test_arcface_trains_a_cosine_embedding(tmp_path):
    with pytest.raises(InputError, match="--loss arcface learns a cosine embedding: train it with --distance cosine"):
        TrainConfig(pairs=str(tmp_path / "p.csv"), out=str(tmp_path / "run"), loss="arcface")
    TrainConfig(pairs=str(tmp_path / "p.csv"), out=str(tmp_path / "run"), loss="arcface", distance="cosine")
