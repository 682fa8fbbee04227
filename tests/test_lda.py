"""The closed-form LDA head (kface.training.lda) on synthetic embeddings whose classes differ in known ways."""
from __future__ import annotations

import numpy as np
import pytest

from kface.errors import InputError
from kface.training.lda import LdaProjection, choose_dimensions, dimension_candidates, fit_lda, image_classes


def _classes_along(direction: np.ndarray, classes: int, per_class: int, rng: np.random.Generator,
                   mixing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classes whose means differ only along ``direction``; within-class noise ``N(0, I) @ mixing``."""
    positions = rng.normal(0.0, 1.0, classes)
    labels = np.repeat(np.arange(classes), per_class)
    noise = rng.normal(size=(len(labels), len(direction))) @ mixing
    return positions[labels, None] * direction + noise, labels, positions


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def test_recovers_the_one_direction_classes_differ_along():
    rng = np.random.default_rng(0)
    direction = _unit(rng.normal(size=16))
    x, labels, _ = _classes_along(direction, 100, 10, rng, 0.1 * np.eye(16))
    projection = fit_lda(x, labels)
    # |cos| to the true direction (a random direction in 16-d gives about 0.2); what is left is the
    # sampling error of the within-class covariance that the whitening estimates.
    assert abs(_unit(projection.matrix[:, 0]) @ direction) > 0.98
    # Nearly all the between-class variance lies along that first direction.
    assert projection.ratios[0] > 0.9 and np.all(np.diff(projection.ratios) <= 1e-12)


def test_whitening_undoes_correlated_within_class_noise():
    # With correlated noise the best direction is Sw^-1 u, not u: the projection must still put the
    # classes in their true order along its first output, and whiten within-class spread to `scale`.
    rng = np.random.default_rng(1)
    direction = _unit(rng.normal(size=12))
    mixing = 0.3 * rng.normal(size=(12, 12))
    x, labels, positions = _classes_along(direction, 80, 6, rng, mixing)
    projection = fit_lda(x, labels)
    projected = projection.transform(x)
    class_means = np.array([projected[labels == c].mean(axis=0) for c in range(80)])
    assert abs(np.corrcoef(class_means[:, 0], positions)[0, 1]) > 0.99
    residuals = projected - class_means[labels]
    within = residuals.T @ residuals / len(x)
    np.testing.assert_allclose(within, projection.scale ** 2 * np.eye(projection.dims), atol=1e-4)


def test_val_pairs_choose_the_informative_dimension_only():
    rng = np.random.default_rng(2)
    direction = np.eye(10)[0]
    train_x, train_labels, _ = _classes_along(direction, 100, 5, rng, 0.1 * np.eye(10))
    projection = fit_lda(train_x, train_labels)
    val_x, val_labels, _ = _classes_along(direction, 40, 4, rng, 0.1 * np.eye(10))
    same = [(i, i + 1) for i in range(0, len(val_x), 2)]
    different = [(i, (i + 4) % len(val_x)) for i in range(0, len(val_x), 2)]
    a, b = np.array(same + different).T
    labels = (val_labels[a] == val_labels[b]).astype(int)
    for criterion in ("overlap", "accuracy"):
        choice = choose_dimensions(projection, val_x[a], val_x[b], labels, criterion=criterion)
        assert [row["dims"] for row in choice.table] == dimension_candidates(projection.dims)
        assert choice.dims == 1, choice.table
    cosine = choose_dimensions(projection, val_x[a], val_x[b], labels, distance="cosine")
    assert cosine.to_dict()["split"] == "val" and cosine.dims in dimension_candidates(projection.dims)


def test_dimension_candidates():
    assert dimension_candidates(128) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]
    assert dimension_candidates(5) == [1, 2, 3, 4, 5]
    assert dimension_candidates(1) == [1]


def test_classes_from_identity_columns_or_linked_pairs():
    a, b = np.array([0, 2, 0, 4]), np.array([1, 3, 2, 5])
    labels = np.array([1, 1, 0, 0])
    rows, classes, source = image_classes(a, b, labels, ["x", "y", "x", "z"], ["x", "y", "y", "w"])
    assert rows.tolist() == [0, 1, 2, 3, 4, 5] and "identity" in source
    assert classes[0] == classes[1] and classes[2] == classes[3] and len(set(classes.tolist())) == 4
    rows, classes, source = image_classes(a, b, labels, ["", "", "", ""], ["", "", "", ""])
    assert "linked" in source
    # 0-1 and 2-3 are linked by same-person pairs; 4 and 5 are only in a different-person pair.
    assert classes[0] == classes[1] and classes[2] == classes[3] and classes[0] != classes[2]
    assert len(set(classes.tolist())) == 4
    with pytest.raises(InputError, match="two identities"):
        image_classes(np.array([0, 0]), np.array([1, 2]), np.array([1, 0]), ["x", "y"], ["x", "y"])


def test_round_trips_through_plain_lists():
    rng = np.random.default_rng(3)
    x, labels, _ = _classes_along(_unit(rng.normal(size=6)), 10, 3, rng, 0.2 * np.eye(6))
    projection = fit_lda(x, labels).truncated(3)
    restored = LdaProjection.from_dict(projection.to_dict())
    np.testing.assert_array_equal(restored.transform(x), projection.transform(x))
    assert restored.dims == 3 and restored.transform(x).dtype == np.float32
    with pytest.raises(InputError, match="takes"):
        projection.transform(x[:, :5])
    with pytest.raises(InputError, match="inconsistent"):
        LdaProjection.from_dict({**projection.to_dict(), "ratios": [1.0]})


def test_refuses_what_it_cannot_fit():
    x = np.random.default_rng(4).normal(size=(4, 3))
    with pytest.raises(InputError, match="at least 2 identities"):
        fit_lda(x, np.zeros(4))
    with pytest.raises(InputError, match="2 or more train images"):
        fit_lda(x, np.arange(4))
    with pytest.raises(InputError, match="NaN"):
        fit_lda(np.full((4, 3), np.nan), np.array([0, 0, 1, 1]))
