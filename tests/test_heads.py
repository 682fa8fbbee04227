"""The head registry end to end on real LFW faces: every head's checkpoint through verify and overlap-report,
the closed-form LDA head's fit, flip averaging at train and verify time, and sweep --heads/--distance.

24 LFW people, 4 images each, identity-disjoint splits; HOG without upsampling (LFW faces are ~100 px)
with the whole image as the face where it finds none, so no pair is dropped.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import lfw_people, link_tree, write_folder_pairs

from kface.api import FaceOptions, verifier_from_checkpoint
from kface.cli import cli
from kface.distances import get_distance
from kface.embeddings.embedder import Embedder
from kface.pairs import read_pairs
from kface.training.checkpoints import load_checkpoint
from kface.training.run import TrainConfig, train
from kface.training.store import FeatureStore

PEOPLE, IMAGES_EACH = 24, 4
FACES = {"detector": "dlib", "upsample": 0, "fallback": "whole-image"}
FAST = {**FACES, "device": "cpu", "workers": 0}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """An identity-folder tree of PEOPLE LFW people (hard links)."""
    return link_tree(lfw_people(PEOPLE, IMAGES_EACH), tmp_path_factory.mktemp("lfw-heads") / "tree")


@pytest.fixture(scope="module")
def pair_file(tree) -> Path:
    return write_folder_pairs(tree, tree.parent / "pairs.csv", 160, (0.5, 0.25, 0.25))


def _train(pair_file: Path, out: Path, **settings) -> Path:
    train(TrainConfig(pairs=str(pair_file), out=str(out), **{**FAST, "epochs": 2, **settings}))
    return out


def _reference_head(kind: str, state: dict):
    """The head's function written out from its stored tensors (what the checkpoint must round-trip)."""
    def lda(x, prefix):
        return (x - state[f"{prefix}mean"].numpy()) @ state[f"{prefix}projection"].numpy()

    def siamese(x, prefix):
        return np.tanh(x @ state[f"{prefix}linear.weight"].numpy().T + state[f"{prefix}linear.bias"].numpy())

    return {"siamese": lambda x: siamese(x, "head."), "lda": lambda x: lda(x, "head."),
            "lda+siamese": lambda x: siamese(lda(x, "head.0."), "head.1.")}[kind]


@pytest.mark.parametrize("head, distance", [("siamese", "cosine"), ("lda", "cosine"), ("lda+siamese", "euclidean")])
def test_every_head_round_trips_through_verify_and_overlap_report(pair_file, tmp_path, head, distance):
    run = _train(pair_file, tmp_path / "run", head=head, distance=distance)
    checkpoint = load_checkpoint(run / "model.pt")  # weights_only=True
    assert (checkpoint["head"]["kind"], checkpoint["distance"]) == (head, distance)

    test = read_pairs(pair_file).select("test")
    a, b = test.abs_path_a[0], test.abs_path_b[0]
    result = CliRunner().invoke(cli, ["verify", a, b, "--model", str(run / "model.pt"), "--detector", "dlib",
                                      "--fallback", "whole-image", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    raw = Embedder(**{**FACES, "backbone": checkpoint["backbone"]}).embed([a, b]).embeddings.astype(np.float64)
    projected = _reference_head(head, checkpoint["head"]["state"])(raw)
    expected = float(get_distance(distance).pairwise(projected[:1], projected[1:])[0])
    assert answer["distance"] == pytest.approx(expected, abs=1e-5)
    assert answer["threshold"] == pytest.approx(checkpoint["threshold"]["value"])

    report = tmp_path / "report"
    result = CliRunner().invoke(cli, ["overlap-report", "--pairs", str(pair_file), "--model", str(run / "model.pt"),
                                      "--detector", "dlib", "--samples", "all", "--out", str(report), "--quiet"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["trained"] and metrics["distance"] == distance and metrics["threshold_chosen_on"] == "val"
    assert 0.5 < metrics["accuracy"] <= 1 and metrics["loss"] is not None


def test_lda_head_is_fitted_not_trained_and_records_its_choice(pair_file, tmp_path):
    run = _train(pair_file, tmp_path / "run", head="lda", epochs=50)
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history["epochs"]] == [0]  # no training loop, whatever --epochs says
    lda = history["data"]["lda"]
    # 12 train people (split 0.5 by identity) x 4 images; LDA gives at most classes - 1 directions.
    assert (lda["classes"], lda["images"], lda["max_dims"]) == (12, 48, 11)
    assert lda["criterion"] == "overlap" and lda["split"] == "val"
    chosen = min(lda["candidates"], key=lambda row: (row["overlap"], row["dims"]))
    assert lda["dims"] == chosen["dims"] == load_checkpoint(run / "model.pt")["head"]["dims"]
    assert lda["classes_from"] == "identities of the train split"


def test_lda_head_from_a_pair_file_without_identities(pair_file, tmp_path):
    blank = tmp_path / "blank.csv"
    with open(pair_file, newline="") as source, open(blank, "w", newline="") as target:
        rows = list(csv.DictReader(source))
        writer = csv.DictWriter(target, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "identity_a": "", "identity_b": ""} for row in rows)
    run = _train(blank, tmp_path / "run", head="lda", root=str(pair_file.parent / "tree"))
    lda = json.loads((run / "history.json").read_text())["data"]["lda"]
    assert "linked by same-person train pairs" in lda["classes_from"]
    # Same-person pairs link every train person's images (4 images, 1:1 ratio): the same 12 groups.
    assert lda["classes"] <= 48 and lda["images"] == 48


def test_flip_averaging_is_the_same_at_train_and_verify_time(pair_file, tmp_path):
    config = TrainConfig(pairs=str(pair_file), out=str(tmp_path / "run"), tta="flip", epochs=1, **FAST)
    train(config)
    assert load_checkpoint(tmp_path / "run" / "model.pt")["features"]["tta"] == "flip"
    paths = read_pairs(pair_file).select("test").abs_path_a[:4]
    trained_on = FeatureStore(config.feature_spec()).features(paths).features
    # The torch engine serves the backbone's embeddings before the head (ONNX runs head and all in one
    # graph, checked against this path in tests/test_engines.py).
    verifier = verifier_from_checkpoint(tmp_path / "run" / "model.pt", engine="torch",
                                        options=FaceOptions(detector="dlib", fallback="whole-image"))
    _, served = verifier.embed(paths)
    assert verifier.embedder.tta == "flip"
    np.testing.assert_allclose(served.embeddings, trained_on, rtol=0, atol=1e-6)
    # ... and flipping matters: without it the vectors differ.
    plain = Embedder(**FACES).embed(paths).embeddings
    assert np.abs(plain - trained_on).max() > 1e-3


@pytest.mark.slow
def test_sweep_compares_heads_and_distances_on_the_same_pairs(tree, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--dataset", "folder", "--root", str(tree), "--ratios", "1:1", "--pairs", "80",
            "--split", "0.5:0.25:0.25", "--epochs", "1", "--heads", "siamese,lda", "--distance", "euclidean,cosine",
            "--detector", "dlib", "--fallback", "whole-image", "--workers", "0", "--samples", "all",
            "--out", str(out), "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    with open(out / "sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # The base backbone is scored first (models are compared), then every head and distance.
    assert [(row["setting"], row["head"], row["distance"]) for row in rows] == [
        ("ratio-1-1-base-euclidean", "base", "euclidean"), ("ratio-1-1-base-cosine", "base", "cosine"),
        ("ratio-1-1-siamese-euclidean", "siamese", "euclidean"), ("ratio-1-1-siamese-cosine", "siamese", "cosine"),
        ("ratio-1-1-lda-euclidean", "lda", "euclidean"), ("ratio-1-1-lda-cosine", "lda", "cosine")]
    assert sorted(p.name for p in (out / "pairs").iterdir()) == ["ratio-1-1.csv", "ratio-1-1.json"]
    for row in rows:
        metrics = json.loads((out / row["report"] / "metrics.json").read_text())
        assert metrics["distance"] == row["distance"]
        assert (row["n_same"], row["n_diff"]) == (rows[0]["n_same"], rows[0]["n_diff"])  # the very same test pairs
        if row["head"] == "base":
            assert not (out / "runs" / row["setting"]).exists() and row["best_epoch"] == ""
            assert metrics["model"] is None and metrics["trained"] is False
            continue
        checkpoint = load_checkpoint(out / "runs" / row["setting"] / "model.pt")
        assert (checkpoint["head"]["kind"], checkpoint["distance"]) == (row["head"], row["distance"])
    markdown = (out / "sweep.md").read_text()
    assert "| ratio | head | distance | accuracy |" in markdown and "`base` (the backbone alone" in markdown
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"

    bad = CliRunner().invoke(cli, args[:-3] + ["--heads", "siamese,ldx", "--out", str(tmp_path / "other")])
    assert bad.exit_code == 2 and "--heads: unknown ldx" in bad.stderr
