"""kface.distances: hand-computed values, NumPy/torch agreement, direction, shapes and lazy torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kface.distances import DISTANCES, CosineDistance, EuclideanDistance, get_distance, pairwise
from kface.errors import InputError

A = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
B = np.array([[3.0, 4.0], [0.0, 2.0], [-2.0, -2.0]])


def test_euclidean_by_hand():
    assert np.allclose(pairwise(A, B, "euclidean"), [5.0, np.sqrt(5.0), np.sqrt(18.0)])


def test_cosine_is_one_minus_cosine_similarity_by_hand():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = np.array([[0.0, 3.0], [2.0, 2.0], [-1.0, 0.0]])  # orthogonal, parallel, opposite
    assert np.allclose(pairwise(a, b, "cosine"), [1.0, 0.0, 2.0])


def test_cosine_of_zero_vector_is_finite():
    assert np.allclose(pairwise(np.zeros((1, 3)), np.ones((1, 3)), "cosine"), [1.0])


def test_direction_is_declared_and_decisions_are_inclusive():
    assert EuclideanDistance.is_inverted is False
    assert CosineDistance.is_inverted is True
    for distance in DISTANCES.values():
        same = distance.pairwise(np.array([1.0, 0.0]), np.array([1.0, 0.0]))
        other = distance.pairwise(np.array([1.0, 0.0]), np.array([0.0, 1.0]))
        assert same < other, f"{distance.name}: identical embeddings must be closer than different ones"
        assert distance.is_same(np.array([0.5, 0.6]), 0.5).tolist() == [True, False]
        assert distance.score(np.array([0.2])) > distance.score(np.array([0.3]))


def test_one_embedding_against_many_and_two_single_embeddings():
    euclidean = get_distance("euclidean")
    assert np.allclose(euclidean.pairwise(A, np.array([0.0, 0.0])), [0.0, 1.0, np.sqrt(2.0)])
    assert np.ndim(euclidean.pairwise(A[1], B[1])) == 0


@pytest.mark.parametrize("name", sorted(DISTANCES))
def test_matrix_matches_brute_force(name):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 8)), rng.normal(size=(3, 8))
    distance = get_distance(name)
    expected = np.array([[distance.pairwise(x, y) for y in b] for x in a])
    assert distance.matrix(a, b).shape == (4, 3)
    assert np.allclose(distance.matrix(a, b), expected)


@pytest.mark.parametrize("name", sorted(DISTANCES))
def test_torch_matches_numpy_and_keeps_gradients(name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 16)).astype(np.float32), rng.normal(size=(5, 16)).astype(np.float32)
    distance = get_distance(name)
    ta = torch.tensor(a, requires_grad=True)
    result = distance.pairwise(ta, torch.tensor(b))
    assert isinstance(result, torch.Tensor)
    assert np.allclose(result.detach().numpy(), distance.pairwise(a, b), atol=1e-5)
    assert np.allclose(distance.matrix(torch.tensor(a), torch.tensor(b)).numpy(), distance.matrix(a, b), atol=1e-5)
    # Identical rows (distance 0) must not poison training with NaN gradients.
    same = torch.tensor(a, requires_grad=True)
    distance.pairwise(same, torch.tensor(a)).sum().backward()
    assert torch.isfinite(same.grad).all()
    result.sum().backward()
    assert torch.isfinite(ta.grad).all() and ta.grad.abs().sum() > 0


def test_unknown_name_lists_the_choices():
    with pytest.raises(InputError, match="euclidean, cosine"):
        get_distance("manhattan")
    assert get_distance(DISTANCES["cosine"]) is DISTANCES["cosine"]


@pytest.mark.parametrize(
    "a, b, message",
    [
        (np.zeros((3, 4)), np.zeros((3, 5)), "embedding sizes differ"),
        (np.zeros((3, 4)), np.zeros((2, 4)), "same number of rows"),
        (np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), r"\(D,\) or \(N, D\)"),
    ],
)
def test_bad_shapes_are_input_errors(a, b, message):
    with pytest.raises(InputError, match=message):
        pairwise(a, b)


def test_importing_distances_does_not_import_torch_or_scipy():
    code = "import sys, kface.distances; print([m for m in ('torch', 'scipy', 'sklearn') if m in sys.modules])"
    repo = Path(__file__).resolve().parents[1]
    output = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "[]"
