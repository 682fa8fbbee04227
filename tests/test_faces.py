"""The face stage on real photos: detection, the largest face, padded retry, fallbacks, MTCNN."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from kface.embeddings.embedder import Embedder
from kface.errors import NoFaceError
from kface.faces.detect import FaceFinder, FaceSettings
from kface.faces.images import load_image


def test_portrait_gives_aligned_chip(samples_dir):
    face = FaceFinder().find(load_image(samples_dir / "obama.jpg"))
    assert face.stage == "hog" and face.found
    assert face.chip.shape == (150, 150, 3) and face.chip.dtype == np.uint8
    left, top, right, bottom = face.box
    assert 300 < left < right < 700 and 100 < top < bottom < 500  # the face, not the suit
    assert face.landmarks.shape == (5, 2)


def test_largest_of_several_faces_is_taken(samples_dir, tmp_path, caplog):
    obama = load_image(samples_dir / "obama.jpg")
    small = np.asarray(Image.fromarray(obama).resize((obama.shape[1] // 3, obama.shape[0] // 3)))
    canvas = np.full((obama.shape[0], obama.shape[1] + small.shape[1], 3), 255, dtype=np.uint8)
    canvas[:, :obama.shape[1]] = obama
    canvas[:small.shape[0], obama.shape[1]:] = small
    # The small face is a third of the big one: the sized HOG pass (faces of a fifth of the shorter side
    # and up) takes the big face without seeing it; the fixed passes see both.
    assert FaceFinder().find(canvas, "group.jpg").n_faces == 1
    face = FaceFinder(FaceSettings(policy="fixed")).find(canvas, "group.jpg")
    assert face.n_faces == 2 and face.box[2] < obama.shape[1]
    group = tmp_path / "group.png"
    Image.fromarray(canvas).save(group)
    embedder = Embedder()
    embedder.settings = replace(embedder.settings, policy="fixed")
    with caplog.at_level("INFO", logger="kface"):
        embedder.embed([group])
    assert "group.png: 2 faces found, using the largest" in caplog.text


def test_no_face_is_an_error_unless_fallback():
    blank = np.full((200, 200, 3), 128, dtype=np.uint8)
    with pytest.raises(NoFaceError, match="blank.png: no face found"):
        FaceFinder().find(blank, "blank.png")
    face = FaceFinder(FaceSettings(fallback="whole-image")).find(blank, "blank.png")
    assert face.stage == "whole-image" and not face.found and face.chip.shape == (150, 150, 3)


def test_detector_none_uses_whole_image(lfw_dir):
    image = load_image(lfw_dir / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")
    face = FaceFinder(FaceSettings(detector="none")).find(image[60:200, 60:200])
    assert face.stage == "whole-image" and face.box == (0, 0, 139, 139)


def test_padded_retry_finds_faces_touching_the_border(lfw_dir):
    """Tight crops where the first HOG pass misses: the padded pass recovers some of them."""
    finder = FaceFinder()
    stages = []
    for path in sorted((lfw_dir / "images").glob("B*/*_0001.jpg"))[:100]:
        tight = np.asarray(Image.fromarray(load_image(path)[80:170, 80:170]).resize((128, 128)))
        try:
            stages.append(finder.find(tight).stage)
        except NoFaceError:
            stages.append("none")
    assert stages.count("hog-padded") >= 1
    assert stages.count("none") <= 10


def test_auto_asks_mtcnn_before_the_padded_hog_pass(lfw_dir, monkeypatch):
    """A tight crop both HOG passes miss and the padded pass finds: ``auto`` takes MTCNN's face first (it
    costs less there), and the padded pass is still tried where MTCNN finds nothing."""
    path = lfw_dir / "images" / "Bart_Freundlich" / "Bart_Freundlich_0001.jpg"
    tight = np.asarray(Image.fromarray(load_image(path)[80:170, 80:170]).resize((128, 128)))
    assert FaceFinder().find(tight).stage == "hog-padded"
    auto = FaceFinder(FaceSettings(detector="auto"), device="cpu")
    assert auto.find(tight).stage == "mtcnn"
    assert [face.stage for face in auto.find_all(tight)] == ["mtcnn"]
    monkeypatch.setattr(FaceFinder, "_mtcnn_boxes", lambda self, image: [])
    assert auto.find(tight).stage == "hog-padded"
    assert [face.stage for face in auto.find_all(tight)] == ["hog-padded"]
    assert ";order=" in FaceSettings(detector="auto").key()  # cached chips of the old order are not reused


def test_mtcnn_detector_finds_the_same_face(samples_dir):
    image = load_image(samples_dir / "obama2.jpg")
    hog = FaceFinder().find(image)
    mtcnn = FaceFinder(FaceSettings(detector="mtcnn"), device="cpu").find(image)
    assert mtcnn.stage == "mtcnn"
    centre = lambda b: np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])  # noqa: E731
    assert np.linalg.norm(centre(hog.box) - centre(mtcnn.box)) < 40
