"""Age editing: the editor's training command on a few real faces, its ONNX export, the photo path (find, edit,
paste back), the shipped editor's file, and one-line errors on bad input."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SAMPLES, SHARED, require
from PIL import Image

from kface.cli import cli

KOREAN = SHARED / "data" / "korean_family"
PORTRAIT = SAMPLES / "obama.jpg"
#: Faces per age class in the tiny training set (enough for a batch and a group-disjoint val).
PER_CLASS = 3
STEPS = 3


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny editor trained for a few steps on a few faces of each age class, by the CLI."""
    root = require(KOREAN)
    folder = tmp_path_factory.mktemp("age-editor")
    with open(root / "identities.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    chosen = []
    for age_class in sorted({row["age_class"] for row in rows}):
        chosen += [row for row in rows if row["age_class"] == age_class][::97][:PER_CLASS]
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    out = folder / "run"
    result = invoke("train-age-editor", "--dataset", "csv", "--root", root, "--manifest", manifest, "--steps", STEPS,
                    "--batch-size", 4, "--size", 32, "--width", 4, "--device", "cpu", "--out", out, "--json", "-q")
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout), len(chosen)


def test_train_age_editor_writes_a_run(tiny_run):
    out, summary, faces = tiny_run
    assert summary["steps"] == STEPS
    assert summary["train_chips"] + summary["val_chips"] <= faces
    assert summary["val_chips"] > 0 and summary["train_chips"] > 0
    assert summary["onnx"]["parity"]["max_pixel_diff"] < 0.5
    for name in ("chips.npz", "checkpoint.pt", "log.jsonl", "samples.png", "summary.json", "editor.onnx"):
        assert (out / name).is_file(), name
    assert 0 < summary["val"]["reconstruction_l1"] < 1


def test_train_age_editor_resumes(tiny_run, tmp_path):
    import shutil

    out, _, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    result = invoke("train-age-editor", "--dataset", "csv", "--root", KOREAN, "--manifest", "unused.csv",
                    "--steps", STEPS + 1, "--batch-size", 4, "--size", 32, "--width", 4, "--device", "cpu",
                    "--out", copy, "--json", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == STEPS + 1  # one more step, from the checkpoint's
    changed = invoke("train-age-editor", "--dataset", "csv", "--root", KOREAN, "--manifest", "unused.csv",
                     "--steps", STEPS + 2, "--batch-size", 4, "--size", 32, "--width", 8, "--device", "cpu",
                     "--out", copy, "-q")
    assert changed.exit_code == 2
    assert changed.output.startswith("error:") and "other settings" in changed.output


def test_chip_to_image_is_dlibs_alignment():
    from kface.ageedit.editor import _find_face, chip_to_image

    require(PORTRAIT)
    image, face = _find_face(PORTRAIT, "auto", "cpu")
    # dlib blurs as it shrinks; on a blurred photo its chip and the affine warp must agree to a fraction of a level.
    import dlib
    from PIL import ImageFilter

    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(2)))
    points = dlib.points([dlib.point(x, y) for x, y in np.rint(face.landmarks).astype(int).tolist()])
    chip = dlib.get_face_chip(blurred, dlib.full_object_detection(dlib.rectangle(*face.box), points), size=150,
                              padding=0.25)
    warped = np.asarray(Image.fromarray(blurred).transform((150, 150), Image.AFFINE,
                                                           tuple(chip_to_image(face.landmarks, face.box).ravel()),
                                                           Image.BILINEAR))
    assert np.abs(warped.astype(int) - chip.astype(int))[10:-10, 10:-10].mean() < 0.5


def test_age_edit_writes_photo_chip_and_strip(tiny_run, tmp_path):
    require(PORTRAIT)
    out, _, _ = tiny_run
    editor = out / "editor.onnx"
    photo = tmp_path / "old.png"
    result = invoke("age-edit", PORTRAIT, "--to", "67+", "--out", photo, "--model", editor, "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["written"] == "photo" and body["target_class"] == "67+"
    original = Image.open(PORTRAIT)
    edited = np.asarray(Image.open(photo))
    assert edited.shape[:2] == original.size[::-1]
    # Pasted into the face only: the corners of the photo are untouched.
    assert np.array_equal(edited[:20, :20], np.asarray(original.convert("RGB"))[:20, :20])
    chip = tmp_path / "chip.png"
    assert invoke("age-edit", PORTRAIT, "--to", "0-6", "--chip", "--out", chip, "--model", editor).exit_code == 0
    assert Image.open(chip).size == (150, 150)
    strip = tmp_path / "strip.png"
    assert invoke("age-edit", PORTRAIT, "--all-ages", "--out", strip, "--model", editor).exit_code == 0
    assert Image.open(strip).size[0] == 9 * 150


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_age_edit_bad_input(tiny_run, tmp_path):
    require(PORTRAIT)
    editor = tiny_run[0] / "editor.onnx"
    out = tmp_path / "out.png"
    assert "choose one of" in _one_error_line(invoke("age-edit", PORTRAIT, "--to", "99", "--out", out, "--model",
                                                     editor))
    _one_error_line(invoke("age-edit", PORTRAIT, "--out", out, "--model", editor))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    _one_error_line(invoke("age-edit", broken, "--to", "20-30", "--out", out, "--model", editor))
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(blank)
    assert "no face" in _one_error_line(invoke("age-edit", blank, "--to", "20-30", "--out", out, "--model", editor))
    assert "--strength" in _one_error_line(invoke("age-edit", PORTRAIT, "--to", "0-6", "--strength", "0", "--out",
                                                  out, "--model", editor))
    assert not out.exists()


def test_strength_scales_the_change_carried_onto_the_chip():
    from kface.ageedit.editor import AgeEditorModel
    from kface.errors import InputError

    editor = AgeEditorModel(device="cpu")
    chips = np.random.default_rng(0).integers(60, 196, size=(3, 150, 150, 3)).astype(np.uint8)
    targets = [0, 4, 7]
    change = {s: editor.edit_chips(chips, targets, strength=s).chips.astype(np.float32) - chips
              for s in (0.5, 1.0, 2.0)}
    assert np.abs(change[1.0]).mean() > 1
    for s in (0.5, 2.0):  # rounding and clipping aside, the change scales with the strength
        assert np.abs(change[s] - s * change[1.0]).mean() < 0.02 * s * np.abs(change[1.0]).mean() + 1
    with pytest.raises(InputError, match="strength"):
        editor.edit_chips(chips, targets, strength=-1)


def test_shipped_editor_loads_with_its_checksum_and_edits_a_portrait(tmp_path):
    from kface.ageedit.editor import CARD_FILE, editor_card
    from kface.models import MODELS_DIR
    from kface.util.hashing import file_sha256

    require(PORTRAIT)
    card = editor_card()
    network = MODELS_DIR / card["file"]
    assert file_sha256(network) == card["sha256"] and CARD_FILE.is_file()
    assert network.stat().st_size < 20 * 2**20
    for key in ("data", "seed", "steps", "seconds", "held_out_families_sha256"):
        assert key in card["training"], key
    out = tmp_path / "old.png"
    result = invoke("age-edit", PORTRAIT, "--to", "67+", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["source_class"] in card["classes"]
    assert Image.open(out).size == Image.open(PORTRAIT).size


def test_serve_page_edits_a_face_at_every_age():
    from fastapi.testclient import TestClient

    from kface.api import FaceOptions, load_verifier
    from kface.serve.app import Pipeline, create_app

    require(PORTRAIT)
    with TestClient(create_app([Pipeline(load_verifier(options=FaceOptions(cache=False)))])) as client:
        answer = client.post("/age-edit", files={"image": ("obama.jpg", PORTRAIT.read_bytes(), "image/jpeg")})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [edit["class"] for edit in body["edits"]] == ["0-6", "7-12", "13-19", "20-30", "31-45", "46-55",
                                                              "56-66", "67+"]
        assert all(edit["chip"].startswith("data:image/png;base64,") for edit in body["edits"])
        blank = Image.new("RGB", (200, 200), (128, 128, 128))
        buffer = io.BytesIO()
        blank.save(buffer, format="PNG")
        faceless = client.post("/age-edit", files={"image": ("blank.png", buffer.getvalue(), "image/png")})
        assert faceless.status_code == 422 and "no face" in faceless.json()["detail"]
