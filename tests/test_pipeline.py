"""The streaming face pipeline (worker processes, batches cached as they come, no-face rows) and MTCNN
without torch (ONNX networks + numpy box logic), checked against facenet-pytorch's MTCNN."""
from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import LFW, REPO, SHARED, require
from PIL import Image

from kface.util.cache import CacheSetting

KOREAN = SHARED / "data" / "korean_family" / "images"


def korean_crops(count: int, seed: int = 0) -> list[str]:
    images = sorted(str(p) for p in require(KOREAN).glob("*.jpg"))
    return random.Random(seed).sample(images, count)


def lfw_images(count: int, seed: int = 0) -> list[str]:
    images = sorted(str(p) for p in (require(LFW) / "images").glob("*/*.jpg"))
    return random.Random(seed).sample(images, count)


@pytest.fixture
def blank(tmp_path) -> str:
    path = tmp_path / "blank.png"
    Image.new("RGB", (120, 120), (90, 140, 200)).save(path)
    return str(path)


# -- MTCNN: ONNX + numpy against facenet-pytorch ---------------------------------------------------
@pytest.mark.slow
def test_mtcnn_boxes_match_facenet_pytorch_on_lfw_and_korean_crops():
    from facenet_pytorch import MTCNN as Reference

    from kface.faces.images import decode_image, read_bytes
    from kface.faces.mtcnn import MTCNN

    reference = Reference(keep_all=True, device="cpu", post_process=False)
    ours = MTCNN(threads=1)
    compared = 0
    for path in lfw_images(12) + korean_crops(12, seed=1):
        image = decode_image(read_bytes(path), path)
        expected, expected_scores = reference.detect(image)
        boxes, scores = ours.detect(image)
        if expected is None:
            assert len(boxes) == 0, path
            continue
        expected = np.asarray(expected, dtype=np.float32)  # facenet-pytorch hands back object arrays
        # facenet-pytorch puts the largest face first (select_largest); compare in that order.
        order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
        assert boxes.shape == expected.shape, path
        np.testing.assert_allclose(boxes[order], expected, atol=0.01, err_msg=path)
        np.testing.assert_allclose(scores[order], np.asarray(expected_scores, dtype=np.float32), atol=1e-4)
        compared += len(boxes)
    assert compared >= 20


def test_area_resize_matches_torch_area_interpolation():
    import torch
    from torch.nn.functional import interpolate

    from kface.faces.mtcnn import area_resize

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (3, 37, 53)).astype(np.float32)  # dense matrices
    large = rng.integers(0, 256, (3, 300, 270)).astype(np.float32)  # prefix sums
    for image, sizes in ((small, [(24, 24), (12, 17), (37, 53), (50, 80)]), (large, [(213, 192), (12, 12)])):
        for size in sizes:
            expected = interpolate(torch.from_numpy(image)[None], size=size, mode="area")[0].numpy()
            np.testing.assert_allclose(area_resize(image, *size), expected, atol=1e-3)


def test_area_resize_dense_and_prefix_sum_ways_agree_on_whole_pixels(monkeypatch):
    import kface.faces.mtcnn as mtcnn

    rng = np.random.default_rng(1)
    cases = [((3, 128, 128), (77, 77)), ((3, 128, 128), (13, 13)), ((3, 31, 29), (24, 24)),
             ((3, 20, 21), (48, 48)), ((3, 250, 200), (120, 96))]
    images = [rng.integers(0, 256, shape).astype(np.float32) for shape, _ in cases]
    dense = [mtcnn.area_resize(image, *size) for image, (_, size) in zip(images, cases)]
    monkeypatch.setattr(mtcnn, "DENSE_RESIZE_MAX_SIDE", 0)
    for image, (_, size), got in zip(images, cases, dense):
        np.testing.assert_array_equal(got, mtcnn.area_resize(image, *size))


def test_mtcnn_detection_imports_no_torch():
    code = ("import sys; import numpy as np; from kface.faces.detect import FaceFinder, FaceSettings; "
            "from kface.faces.images import load_image; "
            f"face = FaceFinder(FaceSettings('mtcnn')).find(load_image({str(REPO / 'examples' / 'obama.jpg')!r})); "
            "assert face.stage == 'mtcnn', face.stage; assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr


def test_shipped_mtcnn_files_match_their_card():
    from kface.faces.mtcnn import _checked_files

    assert set(_checked_files()) == {"pnet", "rnet", "onet"}


# -- the pipeline ----------------------------------------------------------------------------------
def test_workers_give_the_same_faces_and_embeddings_as_one_process(tmp_path, monkeypatch):
    from kface.embeddings.embedder import Embedder
    from kface.faces import workers as pipeline

    paths = korean_crops(pipeline.POOL_MIN_IMAGES + 6)
    pools = []
    real_context = pipeline._context
    monkeypatch.setattr(pipeline, "_context", lambda: pools.append(1) or real_context())
    results = {}
    for workers in (0, 2):
        embedder = Embedder(detector="auto", fallback="whole-image",
                            cache=CacheSetting(folder=tmp_path / f"cache{workers}"),
                            workers=workers)
        results[workers] = embedder.embed(paths)
        embedder.close()
    assert pools == [1]  # the pool started for workers=2 only
    assert results[0].stages == results[2].stages
    assert results[0].boxes == results[2].boxes
    np.testing.assert_allclose(results[0].embeddings, results[2].embeddings, atol=1e-5)
    assert results[2].computed == len(paths)


def test_small_inputs_stay_in_this_process(tmp_path, monkeypatch):
    from kface.embeddings.embedder import Embedder
    from kface.faces import workers as pipeline

    def no_pool():
        raise AssertionError("a pool was started for two images")

    monkeypatch.setattr(pipeline, "_context", no_pool)
    embedder = Embedder(cache=CacheSetting(folder=tmp_path), workers=8)
    result = embedder.embed([str(REPO / "examples" / "obama.jpg"), str(REPO / "examples" / "obama2.jpg")])
    embedder.close()
    assert result.found.all()


def test_no_face_is_a_row_or_an_error(tmp_path, blank):
    from kface.embeddings.embedder import Embedder
    from kface.errors import NoFaceError

    face = str(REPO / "examples" / "obama.jpg")
    embedder = Embedder(cache=CacheSetting(folder=tmp_path), workers=0)
    result = embedder.embed([face, blank, face], no_face="row")
    assert result.stages == ["hog", "none", "hog"]
    assert result.found.tolist() == [True, False, True]
    assert np.isnan(result.embeddings[1]).all() and not np.isnan(result.embeddings[0]).any()
    assert "no face found" in result.notes[blank] and not result.errors
    with pytest.raises(NoFaceError, match="no face found"):
        embedder.embed([face, blank])
    embedder.close()


def test_interrupted_run_resumes_through_the_cache(tmp_path):
    from kface.embeddings.embedder import EMBED_BATCH, Embedder
    from kface.errors import InputError

    paths = korean_crops(EMBED_BATCH + 4)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    embedder = Embedder(detector="dlib", fallback="whole-image", cache=CacheSetting(folder=tmp_path / "cache"),
                        workers=0)
    with pytest.raises(InputError, match="corrupt.jpg"):
        embedder.embed(paths + [str(corrupt)])  # fails after the first batch was embedded and stored
    again = embedder.embed(paths)
    embedder.close()
    assert again.computed == len(paths) - EMBED_BATCH


def test_kface_embed_writes_no_face_rows_unless_strict(tmp_path, blank):
    from kface.cli import cli

    face = str(REPO / "examples" / "obama.jpg")
    out = tmp_path / "e.npz"
    runner = CliRunner()
    done = runner.invoke(cli, ["embed", face, blank, "--out", str(out), "--workers", "0"])
    assert done.exit_code == 0, done.output
    assert "note: " in done.output and "no face found" in done.output
    with np.load(out) as data:
        assert data["found"].tolist() == [True, False]
        assert data["stages"].tolist() == ["hog", "none"]
        assert data["notes"][0] == "" and "no face found" in str(data["notes"][1])
        # what made them: the default model, its int8 copy on this CPU (KFACE_PRECISION=float: the float file)
        assert str(data["model"]) == "korean" and str(data["precision"]) == "int8"
    stock = runner.invoke(cli, ["embed", face, "--out", str(tmp_path / "d.npz"), "--model", "dlib"])
    assert stock.exit_code == 0, stock.output
    with np.load(tmp_path / "d.npz") as data:
        assert str(data["model"]) == "dlib" and str(data["precision"]) == "float"
    strict = runner.invoke(cli, ["embed", face, blank, "--out", str(tmp_path / "s.npz"), "--strict"])
    assert strict.exit_code == 2
    assert strict.output.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in strict.output
    assert not (tmp_path / "s.npz").exists()
