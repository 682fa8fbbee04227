"""The `auto` detector cascade (HOG → MTCNN → padded HOG) on real LFW faces and tight crops of them."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from kface.datasets.degradations import old_album_crop, tight_crop
from kface.errors import NoFaceError
from kface.faces.detect import FaceFinder, FaceSettings
from kface.faces.images import load_image


@pytest.fixture(scope="module")
def lfw_sample(request):
    from conftest import LFW, require

    # Every 60th image of the sorted tree: 221 images of 215 people, spread over the alphabet.
    return sorted((require(LFW) / "images").glob("*/*.jpg"))[::60]


def _stages(images) -> Counter:
    finder = FaceFinder(FaceSettings(detector="auto"), device="cpu")
    stages = Counter()
    for image in images:
        try:
            stages[finder.find(image).stage] += 1
        except NoFaceError:
            stages["none"] += 1
    return stages


def test_auto_finds_faces_in_lfw(lfw_sample):
    stages = _stages(load_image(p) for p in lfw_sample)
    assert stages["none"] / len(lfw_sample) <= 0.001, stages


def test_auto_finds_faces_in_tight_crops(lfw_sample):
    stages = _stages(tight_crop(load_image(p)) for p in lfw_sample)
    assert stages["none"] / len(lfw_sample) <= 0.01, stages


def test_mtcnn_rescues_degraded_crops_hog_misses(lfw_sample):
    rng = np.random.default_rng(0)
    stages = _stages(old_album_crop(load_image(p), rng) for p in lfw_sample)
    assert stages["mtcnn"] >= 1 and stages["none"] / len(lfw_sample) <= 0.02, stages
