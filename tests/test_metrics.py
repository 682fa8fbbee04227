"""kface.metrics against hand-computed cases, known distributions and planted val/test shifts."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kface import metrics
from kface.errors import InputError

# Eight pairs: sorted by distance the labels read s s s d d s d d.
SMALL_SAME = [0.1, 0.2, 0.3, 0.6]
SMALL_DIFF = [0.4, 0.5, 0.7, 0.8]
SMALL_D = np.array(SMALL_SAME + SMALL_DIFF)
SMALL_L = np.array([1] * 4 + [0] * 4)

# Seven pairs where FAR and FRR cross between two ROC points: s s d d s d d.
SKEW_D = np.array([0.1, 0.2, 0.5, 0.3, 0.4, 0.6, 0.7])
SKEW_L = np.array([1, 1, 1, 0, 0, 0, 0])


def gaussian_pairs(rng, n_same, n_diff, same=(0.4, 0.1), diff=(0.8, 0.1)):
    distances = np.concatenate([rng.normal(*same, n_same), rng.normal(*diff, n_diff)])
    return distances, np.r_[np.ones(n_same, int), np.zeros(n_diff, int)]


# --------------------------------------------------------------------------- hand-computed small sets


def test_accuracy_by_hand_and_threshold_is_inclusive():
    assert metrics.accuracy_at(SMALL_D, SMALL_L, 0.35) == 7 / 8
    assert metrics.accuracy_at(SMALL_D, SMALL_L, 0.4) == 6 / 8  # the 0.4 different-person pair is accepted
    assert metrics.accuracy_at(SMALL_D, SMALL_L, 0.0) == 4 / 8


def test_eer_at_an_roc_point_by_hand():
    # t = 0.4 accepts 3 of 4 same (FRR 1/4) and 1 of 4 different (FAR 1/4).
    result = metrics.eer(SMALL_D, SMALL_L)
    assert result.rate == pytest.approx(0.25)
    assert result.threshold == pytest.approx(0.4)


def test_eer_interpolated_between_roc_points_by_hand():
    # t = 0.3: FAR 1/4, FRR 1/3 (gap -1/12); t = 0.4: FAR 1/2, FRR 1/3 (gap 1/6): a third of the way.
    result = metrics.eer(SKEW_D, SKEW_L)
    assert result.rate == pytest.approx(1 / 3)
    assert result.threshold == pytest.approx(0.3 + 0.1 / 3)


def test_auc_by_hand():
    assert metrics.auc(SMALL_D, SMALL_L) == pytest.approx(14 / 16)
    assert metrics.auc(SKEW_D, SKEW_L) == pytest.approx(10 / 12)


def test_roc_thresholds_are_distances():
    curve = metrics.roc(SMALL_D, SMALL_L)
    assert curve.thresholds[0] == -np.inf
    for threshold, far, tar in zip(curve.thresholds[1:], curve.false_accept_rate[1:], curve.true_accept_rate[1:]):
        accepted = SMALL_D <= threshold
        assert far == pytest.approx(accepted[SMALL_L == 0].mean())
        assert tar == pytest.approx(accepted[SMALL_L == 1].mean())


def test_max_accuracy_rule_by_hand():
    threshold = metrics.choose_threshold(SMALL_D, SMALL_L, "max-accuracy", split="val")
    assert threshold.value == pytest.approx(0.35)  # between 0.3 and 0.4: 7 of 8 right
    assert (threshold.rule, threshold.split) == ("max-accuracy", "val")


def test_max_accuracy_never_splits_equal_distances():
    threshold = metrics.choose_threshold([0.2, 0.5, 0.5, 0.9], [1, 1, 0, 0], "max-accuracy")
    assert metrics.accuracy_at([0.2, 0.5, 0.5, 0.9], [1, 1, 0, 0], threshold.value) == 0.75


def test_eer_rule_uses_the_eer_threshold():
    assert metrics.choose_threshold(SKEW_D, SKEW_L, "eer").value == pytest.approx(0.3 + 0.1 / 3)


def test_far_rule_and_tar_at_far_by_hand():
    # FAR <= 1/4 allows one of the four negatives (0.4); the next one (0.5) must be rejected.
    threshold = metrics.choose_threshold(SMALL_D, SMALL_L, "far=0.25")
    assert threshold.value == pytest.approx(0.45)
    assert threshold.rule == "far=0.25"
    point = metrics.tar_at_far(SMALL_D, SMALL_L, 0.25)
    assert (point.tar, point.note) == (0.75, None)
    assert point.threshold == pytest.approx(0.45)


def test_tar_at_far_without_enough_negatives_says_so():
    point = metrics.tar_at_far(SMALL_D, SMALL_L, 0.2)  # 4 negatives < 1 / 0.2
    assert point.tar is None and point.threshold is None
    assert "at least 5 different-person pairs" in point.note and "there are 4" in point.note
    with pytest.raises(InputError, match="far=0.2 on the val split"):
        metrics.choose_threshold(SMALL_D, SMALL_L, "far=0.2", split="val")


def test_bce_loss_by_hand_and_clipped():
    assert metrics.bce_loss([0.9, 0.2], [1, 0]) == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2)
    assert metrics.bce_loss([1.0], [0]) == pytest.approx(-math.log(1e-7), rel=1e-6)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        metrics.bce_loss([1.5], [1])


# --------------------------------------------------------------------------- overlap area


def test_overlap_of_identical_distributions_is_one():
    values = np.random.default_rng(0).normal(0.5, 0.1, 1000)
    assert metrics.overlap_area(values, values) == pytest.approx(1.0, abs=1e-6)
    assert metrics.overlap_area(values, values, "histogram") == pytest.approx(1.0, abs=1e-9)


def test_overlap_of_disjoint_distributions_is_zero():
    rng = np.random.default_rng(1)
    same, diff = rng.normal(0.0, 0.1, 1000), rng.normal(5.0, 0.1, 1000)
    assert metrics.overlap_area(same, diff) < 1e-6
    assert metrics.overlap_area(same, diff, "histogram") == 0.0


def test_overlap_of_unit_gaussians_one_apart_is_2_phi_minus_half():
    from scipy.stats import norm

    expected = 2 * norm.cdf(-0.5)  # 0.6171
    rng = np.random.default_rng(2)
    same, diff = rng.normal(0.0, 1.0, 20000), rng.normal(1.0, 1.0, 20000)
    assert metrics.overlap_area(same, diff, "kde") == pytest.approx(expected, abs=0.02)
    assert metrics.overlap_area(same, diff, "histogram") == pytest.approx(expected, abs=0.02)


def test_overlap_is_symmetric_and_densities_integrate_to_one():
    rng = np.random.default_rng(3)
    same, diff = rng.normal(0.4, 0.1, 300), rng.normal(0.7, 0.2, 500)
    assert metrics.overlap_area(same, diff) == pytest.approx(metrics.overlap_area(diff, same))
    densities = metrics.kde_densities(same, diff)
    assert np.trapezoid(densities.same, densities.x) == pytest.approx(1.0, abs=1e-6)
    assert np.trapezoid(densities.diff, densities.x) == pytest.approx(1.0, abs=1e-6)


def test_overlap_errors_are_clear():
    with pytest.raises(InputError, match="kde or histogram"):
        metrics.overlap_area([0.1, 0.2], [0.3, 0.4], "violin")
    with pytest.raises(InputError, match="same-person distances needs at least 2 different values"):
        metrics.overlap_area([0.3, 0.3, 0.3], [0.5, 0.6])


# --------------------------------------------------------------------------- intersection rule


def test_intersection_of_equal_gaussians_is_halfway_whatever_the_class_sizes():
    rng = np.random.default_rng(4)
    for n_same, n_diff in [(3000, 3000), (500, 4000)]:
        distances, labels = gaussian_pairs(rng, n_same, n_diff)
        threshold = metrics.choose_threshold(distances, labels, "intersection")
        assert threshold.value == pytest.approx(0.6, abs=0.02)
        assert threshold.note is None


def test_intersection_of_unequal_gaussians_matches_the_analytic_crossing():
    from scipy.optimize import brentq
    from scipy.stats import norm

    crossing = brentq(lambda x: norm.pdf(x, 0.4, 0.05) - norm.pdf(x, 0.8, 0.1), 0.4, 0.8)
    distances, labels = gaussian_pairs(np.random.default_rng(5), 4000, 4000, same=(0.4, 0.05), diff=(0.8, 0.1))
    assert metrics.choose_threshold(distances, labels).value == pytest.approx(crossing, abs=0.02)


def test_intersection_without_a_crossing_falls_back_and_says_so():
    # A backwards model: same-person pairs are farther apart than different-person pairs.
    distances, labels = gaussian_pairs(np.random.default_rng(6), 500, 500, same=(0.8, 0.05), diff=(0.4, 0.05))
    threshold = metrics.choose_threshold(distances, labels, "intersection")
    assert "do not cross" in threshold.note
    assert 0.35 <= threshold.value <= 0.85


# --------------------------------------------------------------------------- rule parsing


@pytest.mark.parametrize(
    "text, name, far",
    [("intersection", "intersection", None), ("max-accuracy", "max-accuracy", None), ("eer", "eer", None),
     ("far=1e-3", "far", 1e-3), (" far=0.01 ", "far", 0.01)],
)
def test_rules_parse(text, name, far):
    rule = metrics.parse_rule(text)
    assert (rule.name, rule.far) == (name, far)


def test_far_rule_prints_canonically():
    assert str(metrics.parse_rule("far=1e-3")) == "far=0.001"


@pytest.mark.parametrize(
    "text, message",
    [("far=", "must be a number"), ("far=abc", "must be a number"), ("far=0", "strictly between 0 and 1"),
     ("far=1", "strictly between 0 and 1"), ("far=-0.1", "strictly between 0 and 1"),
     ("far=nan", "strictly between 0 and 1"), ("far=inf", "strictly between 0 and 1"),
     ("fa=0.1", "unknown threshold rule"), ("", "unknown threshold rule"), ("accuracy", "unknown threshold rule")],
)
def test_bad_rules_are_input_errors(text, message):
    with pytest.raises(InputError, match=message):
        metrics.parse_rule(text)


@pytest.mark.parametrize("far", [0, 1, -1e-3, float("nan"), "x"])
def test_bad_far_levels_are_input_errors(far):
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        metrics.tar_at_far(SMALL_D, SMALL_L, far)


@pytest.mark.parametrize(
    "distances, labels, message",
    [([0.1, 0.2], [1], "2 distances but 1 labels"), ([0.1, 0.2], [1, 2], "labels must be 1"),
     ([0.1, float("nan")], [1, 0], "NaN"), ([], [], "no pairs")],
)
def test_bad_pairs_are_input_errors(distances, labels, message):
    with pytest.raises(InputError, match=message):
        metrics.accuracy_at(distances, labels, 0.5)


def test_one_class_only_is_an_input_error():
    with pytest.raises(InputError, match="got 3 same and 0 different"):
        metrics.auc([0.1, 0.2, 0.3], [1, 1, 1])


# --------------------------------------------------------------------------- sampling


def test_sample_per_class_caps_each_class_and_is_seeded():
    labels = np.r_[np.ones(1000, int), np.zeros(50, int)]
    sample = metrics.sample_per_class(labels, 400, seed=7)
    assert (sample.n_same, sample.n_diff, sample.available_same, sample.available_diff) == (400, 50, 1000, 50)
    assert labels[sample.indices].sum() == 400
    assert np.array_equal(sample.indices, np.unique(sample.indices))
    assert np.array_equal(sample.indices, metrics.sample_per_class(labels, 400, seed=7).indices)
    assert not np.array_equal(sample.indices, metrics.sample_per_class(labels, 400, seed=8).indices)
    assert sample.to_dict() == {"samples": 400, "seed": 7, "n_same": 400, "n_diff": 50,
                                "available_same": 1000, "available_diff": 50}
    everything = metrics.sample_per_class(labels, "all", seed=7)
    assert np.array_equal(everything.indices, np.arange(1050))


@pytest.mark.parametrize("text, value", [("400", 400), (25, 25), ("all", "all"), ("ALL", "all")])
def test_parse_samples(text, value):
    assert metrics.parse_samples(text) == value


@pytest.mark.parametrize("text", ["0", "-3", "many", "1.5"])
def test_bad_samples_are_input_errors(text):
    with pytest.raises(InputError, match="positive number of pairs per class or 'all'"):
        metrics.parse_samples(text)


# --------------------------------------------------------------------------- val -> test


def test_threshold_is_chosen_on_val_and_applied_to_test():
    rng = np.random.default_rng(8)
    val_d, val_l = gaussian_pairs(rng, 1000, 1000)
    test_d, test_l = gaussian_pairs(rng, 1000, 1000)
    shifted = val_d + 0.3  # the same val pairs, planted 0.3 farther apart

    clean = metrics.select_and_score(val_d, val_l, test_d, test_l, "intersection", samples="all")
    moved = metrics.select_and_score(shifted, val_l, test_d, test_l, "intersection", samples="all")

    # Only val changed, so only the threshold moved: from ~0.6 to ~0.9, where test accuracy falls to
    # 1/2 + 1/2 * P(different-person distance > 0.9) = 1/2 + 1/2 * Phi(-1) ~= 0.58.
    assert clean.threshold.value == pytest.approx(0.6, abs=0.02)
    assert moved.threshold.value == pytest.approx(0.9, abs=0.02)
    assert clean.accuracy > 0.95
    assert moved.accuracy == pytest.approx(0.58, abs=0.03)
    assert moved.accuracy == metrics.accuracy_at(test_d, test_l, moved.threshold.value)
    # Threshold-free metrics come from test alone and do not move with val.
    assert moved.separation.auc == clean.separation.auc
    assert (moved.split, moved.threshold.split) == ("test", "val")


def test_a_shifted_test_split_is_scored_at_the_val_threshold():
    rng = np.random.default_rng(9)
    val_d, val_l = gaussian_pairs(rng, 1000, 1000)
    test_d, test_l = gaussian_pairs(rng, 1000, 1000)
    result = metrics.select_and_score(val_d, val_l, test_d + 0.3, test_l, "max-accuracy", samples="all")
    # At ~0.6 almost every shifted same-person pair (mean 0.7) is rejected: ~1/2 + 1/2 * Phi(-1) ~= 0.58,
    # where a threshold chosen on test itself would score ~0.98.
    assert result.accuracy == pytest.approx(0.58, abs=0.03)
    on_test = metrics.choose_threshold(test_d + 0.3, test_l, "max-accuracy")
    assert metrics.accuracy_at(test_d + 0.3, test_l, on_test.value) > 0.95


def test_select_and_score_samples_each_split_and_records_it():
    rng = np.random.default_rng(10)
    val_d, val_l = gaussian_pairs(rng, 1000, 1000)
    test_d, test_l = gaussian_pairs(rng, 1000, 700)
    perfect = test_l.astype(float)  # P(same) equal to the label: zero loss only if it follows the sample
    result = metrics.select_and_score(val_d, val_l, test_d, test_l, seed=3, test_probabilities=perfect)
    assert (result.separation.n_same, result.separation.n_diff) == (400, 400)
    assert (result.samples, result.seed) == (400, 3)
    assert result.loss < 1e-6


def test_a_threshold_is_never_scored_on_its_own_split():
    threshold = metrics.choose_threshold(SMALL_D, SMALL_L, "max-accuracy", split="val")
    with pytest.raises(InputError, match="chosen on the val split"):
        metrics.evaluate(SMALL_D, SMALL_L, threshold, split="val")
    with pytest.raises(InputError, match="different split"):
        metrics.select_and_score(SMALL_D, SMALL_L, SMALL_D, SMALL_L, val_split="test", test_split="test")


def test_metrics_dict_is_json_ready_and_has_the_contract_keys():
    rng = np.random.default_rng(11)
    val_d, val_l = gaussian_pairs(rng, 500, 500)
    test_d, test_l = gaussian_pairs(rng, 500, 500)
    result = metrics.select_and_score(val_d, val_l, test_d, test_l, "eer", samples="all").to_dict()
    json.dumps(result)
    for key in ("accuracy", "loss", "auc", "eer", "overlap", "threshold", "rule", "n_same", "n_diff"):
        assert key in result
    assert (result["split"], result["threshold_chosen_on"], result["rule"]) == ("test", "val", "eer")
    assert result["tar_at_far_1e-2"] is not None
    assert result["tar_at_far_1e-3"] is None
    assert "1000 different-person pairs" in result["notes"]["tar_at_far_1e-3"]
    assert result["loss"] is None and "trained model" in result["notes"]["loss"]
    assert result["overlap_histogram"] == pytest.approx(result["overlap"], abs=0.05)


def test_evaluate_with_a_plain_threshold_and_a_class_without_spread():
    distances = [0.3, 0.3, 0.3, 0.7, 0.8, 0.9]
    result = metrics.evaluate(distances, [1, 1, 1, 0, 0, 0], 0.5)
    assert (result.accuracy, result.threshold.rule) == (1.0, "fixed")
    assert result.separation.overlap is None
    assert "at least 2 different values" in result.separation.notes["overlap"]
    assert result.separation.overlap_histogram == 0.0


# --------------------------------------------------------------------------- k-fold protocol


def synthetic_folds(seed=12, folds=10, per_class=30):
    rng = np.random.default_rng(seed)
    parts = [gaussian_pairs(rng, per_class, per_class, same=(0.5, 0.15), diff=(0.9, 0.15)) for _ in range(folds)]
    distances = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return distances, labels, np.repeat(np.arange(folds), 2 * per_class)


def test_kfold_chooses_on_the_other_folds_and_scores_the_held_out_one():
    distances, labels, folds = synthetic_folds()
    result = metrics.kfold_protocol(distances, labels, folds)
    assert len(result.folds) == 10 and result.rule == "max-accuracy"
    for fold in result.folds:
        held_out = folds == fold.fold
        expected = metrics.choose_threshold(distances[~held_out], labels[~held_out], "max-accuracy").value
        assert fold.threshold == expected
        assert fold.accuracy == metrics.accuracy_at(distances[held_out], labels[held_out], expected)
        assert fold.n_pairs == 60
    accuracies = [fold.accuracy for fold in result.folds]
    assert result.mean_accuracy == pytest.approx(np.mean(accuracies))
    assert result.std_accuracy == pytest.approx(np.std(accuracies, ddof=1))
    assert result.standard_error == pytest.approx(result.std_accuracy / math.sqrt(10))
    assert result.separation.auc == pytest.approx(metrics.auc(distances, labels))
    assert (result.separation.n_same, result.separation.n_diff) == (300, 300)
    json.dumps(result.to_dict())


def test_kfold_threshold_ignores_the_held_out_fold():
    distances, labels, folds = synthetic_folds()
    planted = distances.copy()
    planted[folds == 3] += 0.5  # wreck fold 3 only
    before = metrics.kfold_protocol(distances, labels, folds)
    after = metrics.kfold_protocol(planted, labels, folds)
    assert after.folds[3].threshold == before.folds[3].threshold
    assert after.folds[3].accuracy < before.folds[3].accuracy - 0.2
    assert any(a.threshold != b.threshold for a, b in zip(after.folds, before.folds))


def test_kfold_rejects_bad_folds():
    distances, labels, folds = synthetic_folds(folds=2)
    with pytest.raises(InputError, match="fold ids"):
        metrics.kfold_protocol(distances, labels, folds[:-1])
    with pytest.raises(InputError, match="at least two folds"):
        metrics.kfold_protocol(distances, labels, np.zeros_like(folds))


def test_importing_metrics_does_not_import_scipy_or_sklearn():
    code = "import sys, kface.metrics; print([m for m in ('torch', 'scipy', 'sklearn') if m in sys.modules])"
    repo = Path(__file__).resolve().parents[1]
    output = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "[]"
