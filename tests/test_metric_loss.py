"""dlib's metric loss against a brute-force transcription of dlib's loop, on tiny hand-placed embeddings."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kface.errors import InputError
from kface.training.losses import MarginMetricLoss

THRESHOLD, MARGIN = 0.6, 0.04


def dlib_loss_and_gradient(x: np.ndarray, labels: np.ndarray, threshold: float = THRESHOLD,
                           margin: float = MARGIN) -> tuple[float, np.ndarray]:
    """loss_metric_::compute_loss_value_and_gradient as dlib writes it: a loop over ordered pairs (r, c),
    r != c, scaled by 0.5 / (same-person pairs), negatives cut at the k-th smallest negative distance
    (k = same-person pairs), and the gradient accumulated row by row.

    dlib's hand-written gradient is half the derivative of the loss it reports: each pair's value is
    added from both of its ends, its gradient at each end only once. The gradient returned here is the
    derivative of the reported loss (twice dlib's; Adam's steps do not depend on that factor)."""
    n = len(x)
    dist = np.array([[math.sqrt(max(float(np.sum((x[r] - x[c]) ** 2)), 0.0)) for c in range(n)] for r in range(n)])
    positives = sum(labels[r] == labels[c] for r in range(n) for c in range(r + 1, n))
    negatives = sorted(dist[r, c] for r in range(n) for c in range(r + 1, n) if labels[r] != labels[c])
    scale = 0.5 / positives
    negative_cutoff = negatives[min(positives, len(negatives)) - 1]
    loss, weights = 0.0, np.zeros((n, n))
    for r in range(n):
        for c in range(n):
            if r == c:
                continue
            d = dist[r, c]
            if labels[r] == labels[c]:
                if d >= threshold - margin:
                    loss += scale * (d - (threshold - margin))
                    weights[r, r] += scale / d
                    weights[r, c] = -scale / d
            elif not (d > threshold + margin or d > negative_cutoff):
                loss += scale * ((threshold + margin) - d)
                weights[r, r] -= scale / d
                weights[r, c] = scale / d
    return loss, 2 * (weights @ x)


def torch_loss(x: np.ndarray, labels, **settings):
    embeddings = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    result = MarginMetricLoss(**settings)(embeddings, torch.tensor(labels))
    result.loss.backward()
    return result, embeddings.grad.numpy()


# Three people on a line and around it: person 0's two images 0.7 apart (too far), person 1's 0.3 apart,
# person 2 beside person 0 (a hard negative) and one image far away. Distances avoid the margins' edges.
PLACED = np.array([[0.0, 0.0], [0.7, 0.0], [3.0, 0.0], [3.3, 0.0], [0.2, 0.5], [5.0, 5.0], [0.65, 0.4]])
PLACED_LABELS = np.array([0, 0, 1, 1, 2, 2, 2])


def test_hand_placed_batch_matches_dlib_loss_and_gradient():
    result, gradient = torch_loss(PLACED, PLACED_LABELS)
    expected_loss, expected_gradient = dlib_loss_and_gradient(PLACED, PLACED_LABELS)
    assert result.loss.item() == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-10, atol=1e-12)
    assert result.positives == 5  # 1 + 1 + 3 same-person pairs
    assert result.pairs == 21


@pytest.mark.parametrize("seed", range(5))
def test_random_batches_match_dlib(seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), 3)
    x = rng.normal(0, 0.35, (12, 8)) + np.repeat(rng.normal(0, 0.2, (4, 8)), 3, axis=0)
    result, gradient = torch_loss(x, labels)
    expected_loss, expected_gradient = dlib_loss_and_gradient(x, labels)
    assert result.loss.item() == pytest.approx(expected_loss, rel=1e-10)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-9, atol=1e-12)


def test_only_as_many_negatives_as_positives_enter_the_loss():
    # One positive pair, three negatives all inside t + m: only the closest negative counts.
    x = np.array([[0.0], [0.1], [0.2], [0.5]])
    result, gradient = torch_loss(x, np.array([0, 0, 1, 2]))
    assert (result.positives, result.negatives) == (1, 1)
    # The positive pair (0.1 apart) costs nothing; the hardest negative is point 2 with point 1 (0.1).
    assert result.loss.item() == pytest.approx(THRESHOLD + MARGIN - 0.1)
    assert gradient[3, 0] == 0.0 and gradient[0, 0] == 0.0  # neither the easier negatives nor point 0 move


def test_ties_at_the_cutoff_all_count_as_in_dlib():
    x = np.array([[0.0], [0.125], [0.375], [-0.25]])  # negatives 1-2 and 0-3 are both exactly 0.25 apart
    result, _ = torch_loss(x, np.array([0, 0, 1, 2]))
    expected, _ = dlib_loss_and_gradient(x, np.array([0, 0, 1, 2]))
    assert result.negatives == 2
    assert result.loss.item() == pytest.approx(expected)


def test_a_separated_batch_costs_nothing_and_is_judged_right():
    x = np.array([[0.0, 0.0], [0.2, 0.0], [2.0, 0.0], [2.1, 0.0]])
    result, gradient = torch_loss(x, np.array([5, 5, 9, 9]))
    assert result.loss.item() == 0.0 and not gradient.any()
    assert result.correct == result.pairs == 6


def test_identical_embeddings_give_finite_gradients():
    x = np.array([[0.1, 0.1], [0.1, 0.1], [0.1, 0.1]])  # a duplicate positive and a zero-distance negative
    result, gradient = torch_loss(x, np.array([0, 0, 1]))
    assert np.isfinite(result.loss.item()) and np.isfinite(gradient).all()


def test_cosine_distance_pulls_same_person_directions_together():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.1], [-1.0, -0.1]])
    loss = MarginMetricLoss(distance="cosine")
    embeddings = torch.tensor(x, requires_grad=True)
    loss(embeddings, torch.tensor([0, 0, 1, 1])).loss.backward()
    stepped = embeddings.detach() - 0.1 * embeddings.grad
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(stepped[0], stepped[1], dim=0) > cosine(embeddings[0], embeddings[1], dim=0)


def test_the_gradient_is_bitwise_the_same_on_every_run():
    # Gathering rows by repeated indices sums their gradients in a thread-dependent order on CPU;
    # the loss must not, or two trainings with one seed end with different weights.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    x = torch.randn(128, 128, generator=torch.Generator().manual_seed(0)) * 0.1
    labels = torch.arange(32).repeat_interleave(4)
    gradients = []
    try:
        for _ in range(10):
            embeddings = x.clone().requires_grad_(True)
            MarginMetricLoss()(embeddings, labels).loss.backward()
            gradients.append(embeddings.grad)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(gradient, gradients[0]) for gradient in gradients)


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [4, 4, 4, 4]])
def test_a_batch_without_both_kinds_of_pair_is_refused(labels):
    with pytest.raises(ValueError, match="at least two images of one identity"):
        MarginMetricLoss()(torch.zeros(4, 3), torch.tensor(labels))


def test_shapes_and_settings_are_checked():
    with pytest.raises(ValueError, match="expected"):
        MarginMetricLoss()(torch.zeros(4), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(InputError, match="--margin"):
        MarginMetricLoss(margin=0.6)
