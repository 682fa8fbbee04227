"""Stock dlib and the default (Korean) verifier on real LFW pairs: fold 1's first 100 matched and first
100 mismatched pairs, each at its own threshold."""
from __future__ import annotations

import numpy as np
import pytest

from kface import FaceOptions, load_verifier
from kface.evaluation.lfw import read_lfw_pairs


@pytest.mark.parametrize("model, least", [("dlib", 0.96), (None, 0.93)])  # measured: 0.97, 0.95
def test_first_fold_accuracy_with_default_threshold(lfw_dir, model, least):
    pairs = read_lfw_pairs(lfw_dir)
    chosen = np.r_[0:100, 300:400]  # fold 1: 300 matched lines, then 300 mismatched
    assert pairs.labels[chosen].tolist() == [1] * 100 + [0] * 100
    # As in `kface benchmark lfw`: the few images where HOG finds nothing are taken whole.
    verifier = load_verifier(model, options=FaceOptions(fallback="whole-image"))
    vectors_a, _ = verifier.embed([pairs.path_a[i] for i in chosen])
    vectors_b, _ = verifier.embed([pairs.path_b[i] for i in chosen])
    same = verifier.distances(vectors_a, vectors_b) <= verifier.threshold
    accuracy = float(np.mean(same == (pairs.labels[chosen] == 1)))
    assert accuracy >= least, f"accuracy {accuracy:.3f} on 200 official pairs"
