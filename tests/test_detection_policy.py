"""The HOG policy sized to the image: which passes run, that they find today's faces, and the cache key."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import EXAMPLES, SHARED, lfw_people, require

from kface.faces.detect import DETECT_MAX_SIDE, FaceFinder, FaceSettings, hog_passes
from kface.faces.images import load_image


def test_passes_are_sized_to_the_image():
    sized = FaceSettings()
    # A 910 x 1137 portrait: a 182 px face (a fifth of the shorter side) fills HOG's 80 px window at
    # 0.44, then the old pass (longer side to 800, upsampled once) only on a miss.
    assert hog_passes(1137, 910, sized) == [(pytest.approx(80 / 182), 0), (pytest.approx(800 / 1137), 1)]
    # A 128 px face crop: searched at its own size first (faces of 80 px and up: the face fills a crop),
    # then by the old pass (upsampled once, faces down to 40 px) only on a miss.
    assert hog_passes(128, 128, sized) == [(1.0, 0), (1.0, 1)]
    # LFW's 250 px images: a sized pass would search 0.8 of the old pass's resolution: not worth a second
    # pass on a miss, so the old pass alone runs and LFW's chips are what they were.
    assert hog_passes(250, 250, sized) == [(1.0, 1)]
    # A big photo is never searched above DETECT_MAX_SIDE by the sized pass.
    scale, upsample = hog_passes(3000, 6000, sized)[0]
    assert upsample == 0 and scale * 6000 <= DETECT_MAX_SIDE
    assert hog_passes(1137, 910, FaceSettings(policy="fixed")) == [(pytest.approx(800 / 1137), 1)]


def test_policy_is_part_of_the_cache_key_and_fixed_keeps_the_old_key():
    assert FaceSettings().key() != FaceSettings(policy="fixed").key()
    assert FaceSettings(policy="fixed").key() == "det=dlib;up=1;chip=150;pad=0.25"
    # MTCNN and the whole-image detector do not run HOG: the policy does not split their cache.
    assert FaceSettings(detector="mtcnn").key() == FaceSettings(detector="mtcnn", policy="fixed").key()


def test_unknown_policy_is_an_input_error():
    from kface.errors import InputError

    with pytest.raises(InputError, match="unknown HOG policy"):
        FaceSettings(policy="fast")


def _found(finder: FaceFinder, paths) -> dict[str, str]:
    from kface.errors import NoFaceError

    stages = {}
    for path in paths:
        try:
            stages[str(path)] = finder.find(load_image(path), str(path)).stage
        except NoFaceError:
            stages[str(path)] = "none"
    return stages


def test_sized_policy_finds_every_face_the_fixed_one_finds_on_real_photos():
    crops = sorted((require(SHARED / "data" / "korean_family" / "images")).glob("*.jpg"))[:40:2]
    paths = sorted(EXAMPLES.glob("*.jpg")) + [p for _, images in lfw_people(10, 2) for p in images] + crops
    fixed = _found(FaceFinder(FaceSettings(policy="fixed"), "cpu"), paths)
    sized = _found(FaceFinder(FaceSettings(policy="sized"), "cpu"), paths)
    missed = [path for path, stage in fixed.items() if stage != "none" and sized[path] == "none"]
    assert not missed
    # 128 px crops run the same passes under both policies (the padded retry included).
    assert [sized[str(p)] for p in crops] == [fixed[str(p)] for p in crops]


def test_sized_pass_cuts_the_same_face(samples_dir):
    from kface.engines.shipped import shipped_network

    image = load_image(samples_dir / "obama.jpg")
    fixed = FaceFinder(FaceSettings(policy="fixed"), "cpu").find(image)
    sized = FaceFinder(FaceSettings(policy="sized"), "cpu").find(image)
    assert _iou(fixed.box, sized.box) > 0.7  # HOG's box at another scale; the landmarks re-fit it
    assert np.abs(fixed.landmarks - sized.landmarks).max() < 0.05 * (fixed.box[2] - fixed.box[0])
    vectors = shipped_network("dlib-resnet-v1", "cpu").run(np.stack([fixed.chip, sized.chip]))
    assert np.linalg.norm(vectors[0] - vectors[1]) < 0.1  # same-person threshold: 0.6144


def _iou(a, b) -> float:
    left, top, right, bottom = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, right - left) * max(0, bottom - top)
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_the_saved_hog_detector_is_dlibs_frontal_face_detector():
    import dlib

    from kface.faces.detect import HOG_DETECTOR_FILE, hog_detector

    assert HOG_DETECTOR_FILE.is_file()
    saved, built = hog_detector(), dlib.get_frontal_face_detector()
    paths = sorted(EXAMPLES.glob("*.jpg")) + [p for _, images in lfw_people(8, 1) for p in images]
    for path in paths:
        image = load_image(path)
        for upsample in (0, 1):
            boxes = [[(r.left(), r.top(), r.right(), r.bottom()) for r in detector(image, upsample)]
                     for detector in (saved, built)]
            assert boxes[0] == boxes[1], (path, upsample)


def test_every_face_is_still_found_when_all_are_wanted(samples_dir):
    from PIL import Image

    obama = load_image(samples_dir / "obama.jpg")
    small = np.asarray(Image.fromarray(obama).resize((obama.shape[1] // 3, obama.shape[0] // 3)))
    canvas = np.full((obama.shape[0], obama.shape[1] + small.shape[1], 3), 255, dtype=np.uint8)
    canvas[:, :obama.shape[1]] = obama
    canvas[:small.shape[0], obama.shape[1]:] = small
    finder = FaceFinder(FaceSettings(), "cpu")
    # find() wants the largest face: the sized pass takes it without seeing the small one ...
    assert finder.find(canvas).n_faces == 1
    # ... find_all() wants every face: the fixed passes run, and see both.
    assert [face.n_faces for face in finder.find_all(canvas)] == [2, 2]
