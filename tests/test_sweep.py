"""`kface sweep` end to end on a small LFW-derived dataset (two ratios x two K, two epochs each)."""
from __future__ import annotations

import csv
import json
import os

import pytest
from click.testing import CliRunner

from kface.cli import cli
from kface.errors import InputError
from kface.evaluation.sweep import COLUMNS, parse_images_per_identity, parse_ratios

IDENTITIES = 16
IMAGES = 4


@pytest.fixture
def small_lfw(lfw_dir, tmp_path):
    """The first identities of LFW with at least IMAGES images, IMAGES each, linked into a folder layout."""
    root = tmp_path / "lfw-small"
    people = sorted(entry for entry in (lfw_dir / "images").iterdir() if entry.is_dir())
    chosen = [person for person in people if len(list(person.glob("*.jpg"))) >= IMAGES][:IDENTITIES]
    for person in chosen:
        (root / person.name).mkdir(parents=True)
        for image in sorted(person.glob("*.jpg"))[:IMAGES]:
            os.symlink(image, root / person.name / image.name)
    return root


@pytest.mark.slow
def test_sweep_end_to_end(small_lfw, tmp_path):
    out = tmp_path / "sweep"
    # --detector none (the whole 250x250 deep-funneled image is the face) keeps the test fast.
    args = ["sweep", "--dataset", "folder", "--root", str(small_lfw), "--ratios", "4:6,6:4",
            "--images-per-identity", "3,4", "--pairs", "40", "--split", "0.5:0.25:0.25", "--epochs", "2",
            "--detector", "none", "--workers", "0", "--samples", "all", "--out", str(out), "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output

    with open(out / "sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["setting"] for row in rows] == ["k3-ratio-4-6", "k3-ratio-6-4", "k4-ratio-4-6", "k4-ratio-6-4"]
    assert list(rows[0]) == list(COLUMNS)
    for row in rows:
        assert 0 <= float(row["accuracy"]) <= 1 and float(row["loss"]) > 0 and row["overlap"] != ""
        assert int(row["best_epoch"]) in (0, 1, 2)
        report = json.loads((out / row["report"] / "metrics.json").read_text())
        assert report["threshold_chosen_on"] == "val" and report["trained"] is True
        assert float(row["threshold"]) == report["threshold"]
        manifest = json.loads((out / "pairs" / f"{row['setting']}.json").read_text())
        assert manifest["ratio"] == row["ratio"] and manifest["images_per_identity"] == int(row["images_per_identity"])
        assert (out / "runs" / row["setting"] / "model.pt").is_file()
    # 40 pairs at 4:6 over 0.5:0.25:0.25: the test split holds 4 different and 6 same-person pairs.
    assert (rows[0]["n_diff"], rows[0]["n_same"]) == ("4", "6")
    text = (out / "sweep.md").read_text()
    assert "## 3 images per identity" in text and "## 4 images per identity" in text
    assert "| ratio | accuracy | loss | overlap | threshold | AUC | EER | report |" in text
    assert "kface sweep --dataset folder" in text
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"

    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "add --resume" in again.stderr
    resumed = CliRunner().invoke(cli, args + ["--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert [row["accuracy"] for row in json.loads(resumed.stdout)["rows"]] == [float(r["accuracy"]) for r in rows]


def test_sweep_fails_before_training_when_a_ratio_is_impossible(small_lfw, tmp_path):
    out = tmp_path / "sweep"
    result = CliRunner().invoke(cli, ["sweep", "--dataset", "folder", "--root", str(small_lfw), "--ratios", "5:5,1:9",
                                      "--pairs", "1000", "--out", str(out)])
    assert result.exit_code == 2 and result.stderr.startswith("error: setting ratio-5-5: cannot make 1000 pairs")
    assert not (out / "runs").exists()


def test_sweep_fails_before_sampling_when_training_cannot_take_a_setting(small_lfw, tmp_path):
    out = tmp_path / "sweep"
    result = CliRunner().invoke(cli, ["sweep", "--dataset", "folder", "--root", str(small_lfw), "--ratios", "4:6",
                                      "--loss", "arcface",
                                      "--distance", "cosine,euclidean", "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: setting ratio-4-6-base-euclidean: --loss arcface learns a cosine "
                                     "embedding: train it with --distance cosine")
    assert not (out / "pairs").exists()


def test_parsers():
    assert [str(ratio) for ratio in parse_ratios("1:9, 5:5,9:1")] == ["1:9", "5:5", "9:1"]
    with pytest.raises(InputError, match="twice"):
        parse_ratios("4:6,2:3")
    assert parse_images_per_identity(None) == (None,)
    assert parse_images_per_identity("5,10,all") == (5, 10, None)
    with pytest.raises(InputError, match="2 or more"):
        parse_images_per_identity("1")
