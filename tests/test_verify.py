"""verify and embed end to end on the sample portraits, through the API and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import default_embedding_size
from PIL import Image

from kface import embed, verify
from kface.cli import cli
from kface.models import MODEL_FAMILIES


@pytest.mark.parametrize("other, same", [("obama2.jpg", True), ("obama3.jpg", True), ("biden.jpg", False),
                                         ("32bit.png", True)])
def test_sample_portraits(samples_dir, other, same):
    answer = verify(samples_dir / "obama.jpg", samples_dir / other)
    assert answer.same is same
    assert answer.threshold > 0 and answer.model == "korean" and answer.backbone == MODEL_FAMILIES["korean"]


@pytest.mark.parametrize("partial", ["obama_partial_face.jpg", "obama_partial_face2.jpg"])
def test_partial_face_verifies(samples_dir, partial):
    assert verify(samples_dir / "obama.jpg", samples_dir / partial).same


def test_verify_accepts_bytes(samples_dir):
    answer = verify((samples_dir / "obama.jpg").read_bytes(), (samples_dir / "biden.jpg").read_bytes())
    assert not answer.same


def test_cli_verify_text_and_json(samples_dir):
    runner = CliRunner()
    result = runner.invoke(cli, ["verify", str(samples_dir / "obama.jpg"), str(samples_dir / "obama2.jpg")])
    assert result.exit_code == 0 and result.output.startswith("same person")
    result = runner.invoke(cli, ["verify", "--json", str(samples_dir / "obama.jpg"), str(samples_dir / "biden.jpg")])
    payload = json.loads(result.stdout)
    assert result.exit_code == 0 and payload["same"] is False
    assert payload["distance"] > payload["threshold"]
    assert [face["stage"] for face in payload["faces"]] == ["hog", "hog"]


def test_embed_writes_npz_and_second_run_uses_cache(samples_dir, tmp_path):
    runner = CliRunner()
    images = [str(samples_dir / name) for name in ("obama.jpg", "obama2.jpg", "biden.jpg")]
    out = tmp_path / "e.npz"
    first = runner.invoke(cli, ["embed", *images, "--out", str(out), "--json"])
    assert first.exit_code == 0, first.output
    with np.load(out) as data:
        assert list(data["paths"]) == images
        assert data["embeddings"].shape == (3, default_embedding_size()) and data["embeddings"].dtype == np.float32
        assert data["found"].all()
    second = runner.invoke(cli, ["embed", *images, "--out", str(out), "--json"])
    assert json.loads(second.stdout)["computed"] == 0


def test_api_embed_skips_bad_images_when_asked(samples_dir, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    result = embed([samples_dir / "obama.jpg", bad], on_error="skip")
    assert result.stages == ["hog", "error"] and np.isnan(result.embeddings[1]).all()
    assert "not an image" in result.errors[str(bad)]


def _bad_inputs(tmp_path, samples_dir):
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((samples_dir / "obama.jpg").read_bytes()[:5000])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    noface = tmp_path / "noface.png"
    Image.new("RGB", (300, 300), (120, 130, 140)).save(noface)
    huge = tmp_path / "huge.png"
    Image.new("L", (8000, 6000)).save(huge)
    return {
        "missing": (tmp_path / "missing.jpg", "no such file"),
        "text": (text, "not an image"),
        "truncated": (truncated, "corrupt or truncated"),
        "empty": (empty, "empty file"),
        "directory": (folder, "is a directory"),
        "noface": (noface, "no face found"),
        "huge": (huge, "over the limit"),
    }


@pytest.mark.parametrize("case", ["missing", "text", "truncated", "empty", "directory", "noface", "huge"])
def test_bad_input_is_one_error_line_exit_2(samples_dir, tmp_path, case):
    path, message = _bad_inputs(tmp_path, samples_dir)[case]
    runner = CliRunner()
    result = runner.invoke(cli, ["verify", str(samples_dir / "obama.jpg"), str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert str(path.name) in lines[0]
    out = tmp_path / "out" / "e.npz"
    # --strict: without it, embed writes a faceless image as a row (found false) instead of failing.
    result = runner.invoke(cli, ["embed", str(samples_dir / "obama.jpg"), str(path), "--out", str(out), "--strict"])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no output, no temp file left


def test_usage_errors_exit_2(samples_dir):
    runner = CliRunner()
    assert runner.invoke(cli, ["verify", str(samples_dir / "obama.jpg")]).exit_code == 2
    result = runner.invoke(cli, ["verify", "--backbone", "nope", str(samples_dir / "obama.jpg"),
                                 str(samples_dir / "biden.jpg")])
    assert result.exit_code == 2 and "unknown backbone 'nope'" in result.stderr


def test_verify_pairs_file(samples_dir, tmp_path):
    pair_file = tmp_path / "hand.csv"
    pair_file.write_text("split,path_a,path_b,label,identity_a,identity_b\n"
                         "test,obama.jpg,obama2.jpg,1,,\n"
                         "test,obama.jpg,biden.jpg,0,,\n"
                         "test,obama.jpg,missing.jpg,1,,\n")
    out = tmp_path / "results.csv"
    result = CliRunner().invoke(cli, ["verify", "--pairs", str(pair_file), "--root", str(samples_dir),
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["scored"] == 2 and summary["failed"] == 1 and summary["accuracy"] == 1.0
    rows = out.read_text().splitlines()
    assert rows[1].split(",")[5] == "1" and rows[2].split(",")[5] == "0"
    assert "no such file" in rows[3]
