"""kface.evaluation.report and `kface overlap-report`: val chooses, test scores; files, subgroups, fallbacks.

Most tests use a synthetic verifier (points scattered around one centre per identity, no images),
so expected numbers can be recomputed independently; one test runs the command on real LFW faces.
"""
from __future__ import annotations

import csv
import json
import math
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from kface import metrics
from kface.cli import cli
from kface.distances import get_distance
from kface.errors import InputError
from kface.evaluation.report import overlap_report, pair_groups, save_report_threshold, subgroup_table
from kface.pairs import HEADER

CONTRACT_KEYS = {"accuracy", "loss", "auc", "eer", "overlap", "threshold", "rule", "n_same", "n_diff"}


class FakeVerifier:
    """Embeds ``<split>/<identity>/<n>.jpg`` near its identity's centre; test images are noisier than val."""

    def __init__(self, threshold=math.nan, probability=None, failing=(), noise=None):
        self.embedder = SimpleNamespace(spec=SimpleNamespace(name="fake-backbone"),
                                        settings=SimpleNamespace(detector="none", fallback="none"))
        self.distance = get_distance("euclidean")
        self.threshold = threshold
        self.threshold_source = "fake" if math.isfinite(threshold) else ""
        self.probability = probability
        self.model_path = None
        self.failing = set(failing)
        self.noise = noise or {"val": 0.25, "test": 0.4, "train": 0.25}

    def vector(self, path: str) -> np.ndarray:
        parts = Path(path).parts
        split, identity = parts[-3], parts[-2]
        centre = np.random.default_rng(zlib.crc32(identity.encode())).normal(0, 1, 8)
        jitter = np.random.default_rng(zlib.crc32(path.encode())).normal(0, self.noise[split], 8)
        return centre + jitter

    def embed(self, paths, on_error="raise"):
        vectors = np.array([np.full(8, np.nan) if Path(p).name in self.failing else self.vector(p) for p in paths])
        errors = {p: f"{p}: unreadable" for p in paths if Path(p).name in self.failing}
        return vectors, SimpleNamespace(errors=errors, stage_counts=lambda: {"fake": len(paths)})

    def distances(self, a, b):
        return self.distance.pairwise(a, b)


def write_pair_file(folder: Path, splits=("val", "test"), identities=8, images=4, seed=0) -> Path:
    """A hand-written pair file (no manifest): every same-person pair, and as many different-person pairs."""
    rng = np.random.default_rng(seed)
    rows = []
    for split in splits:
        names = [f"{split}{i}" for i in range(identities)]
        same = [(f"{split}/{n}/{a}.jpg", f"{split}/{n}/{b}.jpg", 1, n, n)
                for n in names for a in range(images) for b in range(a + 1, images)]
        diff = []
        while len(diff) < len(same):
            i, j = rng.choice(identities, 2, replace=False)
            diff.append((f"{split}/{names[i]}/{rng.integers(images)}.jpg",
                         f"{split}/{names[j]}/{rng.integers(images)}.jpg", 0, names[i], names[j]))
        rows += [(split, *row) for row in same + diff]
    path = folder / "pairs.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


FAILING = "3.jpg"  # every identity's fourth image cannot be embedded in the shared report


def probability(distances):
    return 1 / (1 + np.exp(4 * (np.asarray(distances) - 1.5)))


def expected_split(pair_file: Path, split: str, failing=()):
    """Distances, labels and identities of a split's pairs, recomputed without the report's code path."""
    from kface.pairs import read_pairs

    verifier = FakeVerifier()
    part = read_pairs(pair_file).select(split)
    kept = np.array([Path(a).name not in failing and Path(b).name not in failing
                     for a, b in zip(part.path_a, part.path_b)])
    d = verifier.distances(np.array([verifier.vector(p) for p in part.abs_path_a]),
                           np.array([verifier.vector(p) for p in part.abs_path_b]))
    return SimpleNamespace(d=d[kept], labels=part.label[kept], identity_a=part.identity_a[kept],
                           identity_b=part.identity_b[kept], dropped=int((~kept).sum()))


GENDERS = {f"{split}{i}": ("female" if i % 2 else "male") for split in ("val", "test") for i in range(8)}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One report with everything on: a manifest naming a csv dataset with genders, P(same), a failing image."""
    folder = tmp_path_factory.mktemp("report")
    pair_file = write_pair_file(folder)
    with open(folder / "people.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "identity", "gender"])
        for identity, gender in GENDERS.items():
            for n in range(4):
                image = folder / identity[:-1] / identity / f"{n}.jpg"
                image.parent.mkdir(parents=True, exist_ok=True)
                image.touch()  # the csv layout checks that images exist; the fake verifier never reads them
                writer.writerow([image.relative_to(folder).as_posix(), identity, gender])
    manifest = {"dataset": {"kind": "csv", "root": str(folder)}, "filters": {"manifest": str(folder / "people.csv")}}
    (folder / "pairs.json").write_text(json.dumps(manifest))
    verifier = FakeVerifier(probability=probability, failing={FAILING})
    body = overlap_report(pair_file, verifier, rule="max-accuracy", samples="all", out_dir=folder / "report")
    return SimpleNamespace(folder=folder, pair_file=pair_file, body=body)


def test_threshold_is_chosen_on_val_and_every_number_comes_from_test(shared):
    body = shared.body
    val = expected_split(shared.pair_file, "val", {FAILING})
    test = expected_split(shared.pair_file, "test", {FAILING})
    expected = metrics.choose_threshold(val.d, val.labels, "max-accuracy").value
    assert body["threshold"] == pytest.approx(expected)
    # Test images are noisier than val's, so test's own best threshold differs: the report did not use it.
    assert metrics.choose_threshold(test.d, test.labels, "max-accuracy").value != pytest.approx(expected)
    assert body["accuracy"] == pytest.approx(metrics.accuracy_at(test.d, test.labels, expected))
    assert body["auc"] == pytest.approx(metrics.auc(test.d, test.labels))
    assert body["overlap"] == pytest.approx(metrics.overlap_area(test.d[test.labels == 1], test.d[test.labels == 0]))
    assert (body["split"], body["threshold_chosen_on"], body["rule"]) == ("test", "val", "max-accuracy")
    assert body["n_same"] == int(test.labels.sum()) and body["n_diff"] == int((test.labels == 0).sum())
    assert CONTRACT_KEYS <= body.keys()
    rules = {row["rule"]: row for row in body["rules_compared"]}
    assert rules["max-accuracy"]["threshold"] == body["threshold"]
    assert rules["max-accuracy"]["accuracy"] == body["accuracy"]
    eer = metrics.choose_threshold(val.d, val.labels, "eer").value
    assert rules["eer"]["false_accept_rate"] == pytest.approx(np.mean(test.d[test.labels == 0] <= eer))
    assert rules["far=1e-2"]["threshold"] is None and "100 different-person pairs" in rules["far=1e-2"]["note"]

    folder = shared.folder / "report"
    assert json.loads((folder / "metrics.json").read_text()) == json.loads(json.dumps(body))
    for image in ("distributions.png", "roc.png"):
        assert (folder / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (folder / "report.md").read_text()
    assert f"| accuracy at the threshold | {100 * body['accuracy']:.2f}% | test |" in text
    assert "chosen by the `max-accuracy` rule on the **val** split" in text


def test_loss_uses_the_models_probability(shared):
    test = expected_split(shared.pair_file, "test", {FAILING})
    assert shared.body["loss"] == pytest.approx(metrics.bce_loss(probability(test.d), test.labels))


def test_pairs_with_failed_images_are_dropped_and_counted(shared):
    body = shared.body
    test = expected_split(shared.pair_file, "test", {FAILING})
    assert body["test_sample"]["dropped"] == test.dropped > 0
    assert body["val_sample"]["dropped"] == expected_split(shared.pair_file, "val", {FAILING}).dropped
    assert "could not be embedded" in body["notes"]["dropped"]


def test_subgroups_by_brute_force(shared):
    body = shared.body
    test = expected_split(shared.pair_file, "test", {FAILING})
    groups = np.array([GENDERS[a] if GENDERS[a] == GENDERS[b] else "mixed"
                       for a, b in zip(test.identity_a, test.identity_b)])
    rows = {row["group"]: row for row in body["subgroups"]}
    assert list(rows) == ["female", "male", "mixed"] and body["subgroups_from"].startswith("the pair manifest's csv")
    for name, row in rows.items():
        member = groups == name
        same = test.labels[member] == 1
        accepted = test.d[member] <= body["threshold"]
        assert (row["n_same"], row["n_diff"]) == (int(same.sum()), int((~same).sum()))
        assert row["accuracy"] == pytest.approx(np.mean(accepted == same))
        if same.any() and (~same).any():
            assert row["overlap"] == pytest.approx(metrics.overlap_area(test.d[member][same], test.d[member][~same]))
    assert rows["mixed"]["n_same"] == 0 and rows["mixed"]["overlap"] is None
    assert rows["mixed"]["false_reject_rate"] is None
    assert "| gender | male |" in (shared.folder / "report" / "report.md").read_text()


def test_save_threshold_of_the_shared_report_rewrites_the_checkpoint(shared, tmp_path):
    torch = pytest.importorskip("torch")
    from kface.training.checkpoints import FORMAT, FORMAT_VERSION, load_checkpoint

    model = tmp_path / "model.pt"
    # The smallest checkpoint that passes load_checkpoint's structural checks.
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "backbone": "dlib-resnet", "distance": "euclidean",
                "features": {"cut": "none", "tta": "none", "detector": "dlib", "upsample": 1, "fallback": "none",
                             "shape": [128]},
                "head": {"kind": "siamese", "cut": "none", "loss": "bce", "embedding_size": 128, "state": {}},
                "threshold": {"value": 0.5, "rule": "intersection", "split": "val", "note": None}}, model)
    saved = save_report_threshold(model, shared.body)
    assert load_checkpoint(model)["threshold"] == saved
    assert (saved["value"], saved["rule"], saved["split"]) == (shared.body["threshold"], "max-accuracy", "val")


def test_samples_per_class_are_seeded_and_recorded(tmp_path):
    pair_file = write_pair_file(tmp_path)
    body = overlap_report(pair_file, FakeVerifier(), samples=5, seed=3, out_dir=tmp_path / "a")
    val = expected_split(pair_file, "val")
    drawn = metrics.sample_per_class(val.labels, 5, 3).indices
    assert body["threshold"] == pytest.approx(metrics.choose_threshold(val.d[drawn], val.labels[drawn]).value)
    assert (body["n_same"], body["n_diff"], body["samples"], body["seed"]) == (5, 5, 5, 3)
    assert (body["val_sample"]["n_same"], body["val_sample"]["n_diff"]) == (5, 5)
    assert "up to 5 per class drawn from 48 / 48, seed 3" in (tmp_path / "a" / "report.md").read_text()
    assert "no manifest" in body["notes"]["subgroups"]


def test_without_a_val_split_the_threshold_is_labelled_as_not_chosen_here(tmp_path):
    pair_file = write_pair_file(tmp_path, splits=("test",))
    with pytest.raises(InputError, match="--threshold"):
        overlap_report(pair_file, FakeVerifier(), out_dir=tmp_path / "none")
    assert not (tmp_path / "none").exists()
    body = overlap_report(pair_file, FakeVerifier(threshold=1.25), out_dir=tmp_path / "own")
    assert (body["threshold"], body["rule"], body["threshold_chosen_on"]) == (1.25, "verifier default", None)
    assert "no val split" in body["notes"]["threshold"]
    assert "no val split" in (tmp_path / "own" / "report.md").read_text()
    with pytest.raises(InputError, match="saves a threshold chosen on a val split"):
        save_report_threshold(tmp_path / "model.pt", body)

    fixed = overlap_report(pair_file, FakeVerifier(), threshold=0.9, out_dir=tmp_path / "fixed")
    assert (fixed["threshold"], fixed["rule"], fixed["threshold_chosen_on"]) == (0.9, "fixed", None)


def test_pair_groups_mixed_and_unlabelled():
    attributes = {"/a.jpg": {"gender": "male", "lighting": "L1"}, "/b.jpg": {"gender": "male", "lighting": "L2"},
                  "/c.jpg": {"gender": "female"}}
    groups = pair_groups(["/a.jpg", "/a.jpg", "/a.jpg"], ["/b.jpg", "/c.jpg", "/missing.jpg"], attributes)
    assert list(groups["gender"]) == ["male", "mixed", None]
    assert list(groups["lighting"]) == ["mixed", None, None]
    rows = subgroup_table(np.array([0.1, 0.9, 0.5]), np.array([True, False, True]), 0.5, groups)
    assert [(r["attribute"], r["group"], r["n_same"], r["n_diff"]) for r in rows] == \
        [("gender", "male", 1, 0), ("gender", "mixed", 0, 1), ("lighting", "mixed", 1, 0)]


def test_save_threshold_rewrites_the_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    from kface.training.checkpoints import FORMAT, FORMAT_VERSION, load_checkpoint

    model = tmp_path / "model.pt"
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "backbone": "dlib-resnet", "distance": "euclidean",
                "features": {"cut": "none", "tta": "none", "detector": "dlib", "upsample": 1, "fallback": "none",
                             "shape": [128]},
                "head": {"kind": "siamese", "cut": "none", "loss": "bce", "embedding_size": 128, "state": {}},
                "threshold": {"value": 0.5, "rule": "intersection", "split": "val", "note": None}}, model)
    body = overlap_report(write_pair_file(tmp_path), FakeVerifier(), rule="eer", out_dir=tmp_path / "r")
    saved = save_report_threshold(model, body)
    assert load_checkpoint(model)["threshold"] == saved
    assert (saved["value"], saved["rule"], saved["split"]) == (body["threshold"], "eer", "val")


def test_cli_on_real_lfw_faces(tmp_path, lfw_dir):
    lfw = lfw_dir
    lines = (lfw / "pairs.txt").read_text().splitlines()[1:]
    matched, mismatched = [line.split() for line in lines[:10]], [line.split() for line in lines[300:310]]

    def image(name, number):
        return str(lfw / "images" / name / f"{name}_{int(number):04d}.jpg")

    pair_file = tmp_path / "lfw.csv"
    with open(pair_file, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for i, (name, a, b) in enumerate(matched):
            writer.writerow(["val" if i < 5 else "test", image(name, a), image(name, b), 1, name, name])
        for i, (name_a, a, name_b, b) in enumerate(mismatched):
            writer.writerow(["val" if i < 5 else "test", image(name_a, a), image(name_b, b), 0, name_a, name_b])
    out = tmp_path / "report"
    runner = CliRunner()
    result = runner.invoke(cli, ["overlap-report", "--pairs", str(pair_file), "--model", "dlib", "--rule",
                                 "max-accuracy",
                                 "--out", str(out), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert CONTRACT_KEYS <= body.keys() and (body["n_same"], body["n_diff"]) == (5, 5)
    assert body["accuracy"] >= 0.8 and body["auc"] >= 0.9  # dlib's ResNet on LFW is ~99% accurate
    assert body["backbone"] == "dlib-resnet" and body["threshold_chosen_on"] == "val"
    assert {path.name for path in out.iterdir()} == {"metrics.json", "distributions.png", "roc.png", "report.md"}
    assert "kface overlap-report --pairs" in (out / "report.md").read_text()

    refused = runner.invoke(cli, ["overlap-report", "--pairs", str(pair_file), "--save-threshold",
                                  "--out", str(tmp_path / "other")])
    assert refused.exit_code == 2 and refused.stderr.startswith("error: --save-threshold")
    assert not (tmp_path / "other").exists()
