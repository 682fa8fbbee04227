"""Training the backbone's last layers (``kface train --unfreeze``) on real LFW faces.

The data: 40 LFW people with 5 or more images, 5 each, cropped to the face as pre-cropped datasets
are (kface.datasets.degradations.tight_crop), so no detector runs (``--detector none``) and the one-time
prefix pass is the only slow step. Identity-disjoint train/val/test pair splits.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import lfw_people, write_folder_pairs

from kface.cli import cli
from kface.metrics import accuracy_at, choose_threshold, sample_per_class
from kface.pairs import read_pairs
from kface.training.checkpoints import load_checkpoint, pair_model_from_checkpoint
from kface.training.store import FeatureSpec, FeatureStore

PEOPLE, IMAGES_EACH = 40, 5
FAST = ["--backbone", "dlib-torch", "--detector", "none", "--device", "cpu", "--workers", "0", "--quiet"]
METRIC = ["--loss", "metric", "--ids-per-batch", "8", "--images-per-id", "4"]


@pytest.fixture(scope="module")
def face_tree(tmp_path_factory) -> Path:
    """<tmp>/tree/<person>/<image>.png: tight face crops of LFW images."""
    from PIL import Image

    from kface.datasets.degradations import tight_crop
    from kface.faces.images import load_image

    tree = tmp_path_factory.mktemp("lfw-faces") / "tree"
    for name, images in lfw_people(PEOPLE, IMAGES_EACH):
        (tree / name).mkdir(parents=True)
        for image in images:
            Image.fromarray(tight_crop(load_image(image))).save(tree / name / f"{image.stem}.png")
    return tree


@pytest.fixture(scope="module")
def pair_file(face_tree) -> Path:
    return write_folder_pairs(face_tree, face_tree.parent / "pairs.csv", 400, (0.6, 0.2, 0.2))


def run(args: list[str]):
    result = CliRunner().invoke(cli, args)
    return result


@pytest.fixture(scope="module")
def metric_run(pair_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("metric") / "run"
    result = run(["train", "--pairs", str(pair_file), "--out", str(out), "--unfreeze", "last-block", *METRIC,
                  "--epochs", "4", "--select", "accuracy", *FAST])
    assert result.exit_code == 0, result.output
    return out


def frozen_val_accuracy(pair_file: Path, rule: str = "intersection") -> float:
    """The untouched backbone on the same val pairs, threshold chosen the same way (on the same sample)."""
    val = read_pairs(pair_file).select("val")
    paths = sorted(set(val.abs_path_a + val.abs_path_b))
    found = FeatureStore(FeatureSpec("dlib-torch", "none", detector="none")).features(paths)
    row = {path: i for i, path in enumerate(found.paths)}
    a = found.features[[row[p] for p in val.abs_path_a]]
    b = found.features[[row[p] for p in val.abs_path_b]]
    distances = np.linalg.norm(a - b, axis=1).astype(np.float64)
    sample = sample_per_class(val.label, seed=0).indices
    threshold = choose_threshold(distances[sample], val.label[sample], rule, split="val", grid=512)
    return accuracy_at(distances, val.label, threshold.value)


def test_last_block_with_metric_loss_trains_and_does_not_lose_to_the_frozen_backbone(metric_run, pair_file):
    history = json.loads((metric_run / "history.json").read_text())
    epochs = history["epochs"]
    frozen = frozen_val_accuracy(pair_file)
    # Epoch 0 is the pretrained network itself (the stored prefix is float16: equal to rounding).
    assert epochs[0]["val_accuracy"] == pytest.approx(frozen, abs=0.011)
    assert history["best"]["value"] >= frozen
    # With no head, epoch 0 is the base backbone: its val figures are the run's baseline.
    assert history["baseline"] == {**{name: epochs[0][f"val_{name}"] for name in ("loss", "bce", "accuracy",
                                                                                  "overlap")},
                                   "threshold": epochs[0]["threshold"]}
    assert epochs[-1]["train_loss"] < epochs[1]["train_loss"]  # the loss on identity batches falls
    assert history["data"]["identity_batches"]["identities"] == 24  # the train split's people
    checkpoint = load_checkpoint(metric_run / "model.pt")
    assert checkpoint["head"]["cut"] == "last-block" and checkpoint["head"]["kind"] == "none"
    assert checkpoint["epoch"] == history["best"]["epoch"]  # the chosen epoch is recorded
    assert checkpoint["config"]["lr"] == 1e-5 and checkpoint["config"]["augment"] == "mirror"  # unfrozen defaults
    last = torch.load(metric_run / "last.pt", weights_only=True)["model"]
    from kface.backbones.dlib_torch import load_dlib_resnet

    pretrained = load_dlib_resnet().stages[-1][-1].conv1.weight
    assert not torch.allclose(last["suffix.0.conv1.weight"], pretrained)  # the block itself trained


def rerun_interrupted(run_folder: Path, out: Path, epoch: int) -> dict:
    """The run in ``run_folder`` trained again into ``out``, stopped after ``epoch``, then resumed to
    its end: the resumed run's last.pt."""
    from kface.training.config import TrainConfig, saved_config
    from kface.training.run import train

    class Interrupted(Exception):
        pass

    def stop(record):
        if record["epoch"] == epoch:
            raise Interrupted

    config = TrainConfig.from_dict({**saved_config(run_folder), "out": str(out)})
    with pytest.raises(Interrupted):
        train(config, on_epoch_end=stop)
    train(config, resume=True)
    return torch.load(out / "last.pt", weights_only=True)


def test_resume_of_identity_batches_ends_with_the_same_weights(metric_run, pair_file, tmp_path):
    resumed = rerun_interrupted(metric_run, tmp_path / "run", epoch=2)
    uninterrupted = torch.load(metric_run / "last.pt", weights_only=True)
    assert resumed["epoch"] == uninterrupted["epoch"] == 4
    for name, weight in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], weight), name  # bitwise: nothing depends on thread timing


def test_the_checkpoint_round_trips_through_verify_with_and_without_flip(metric_run, pair_file, tmp_path):
    val = read_pairs(pair_file).select("val")
    a, b = val.abs_path_a[0], val.abs_path_b[0]
    result = run(["verify", a, b, "--model", str(metric_run / "model.pt"), "--detector", "none", "--device", "cpu",
                  "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    checkpoint = load_checkpoint(metric_run / "model.pt")
    assert answer["threshold"] == pytest.approx(checkpoint["threshold"]["value"])
    features = FeatureStore(FeatureSpec("dlib-torch", "last-block", detector="none")).features([a, b]).features
    model = pair_model_from_checkpoint(checkpoint)
    with torch.no_grad():
        chip_view, _ = model(torch.from_numpy(features[:1, :1]), torch.from_numpy(features[1:, :1]))
        both_views, _ = model(torch.from_numpy(features[:1]), torch.from_numpy(features[1:]))
    assert answer["distance"] == pytest.approx(float(chip_view), abs=1e-5)

    # The same model with flip averaging: the average of the two views' outputs, after the tuned layers.
    checkpoint["features"]["tta"] = "flip"
    torch.save(checkpoint, tmp_path / "flip.pt")
    flipped = run(["verify", a, b, "--model", str(tmp_path / "flip.pt"), "--detector", "none", "--device", "cpu",
                   "--json"])
    assert json.loads(flipped.stdout)["distance"] == pytest.approx(float(both_views), abs=1e-5)
    assert float(both_views) != pytest.approx(float(chip_view), abs=1e-4)


def test_a_second_run_reuses_the_prefix_cache(metric_run, pair_file, tmp_path, caplog):
    out = tmp_path / "bce"
    with caplog.at_level("INFO", logger="kface"):
        result = run(["train", "--pairs", str(pair_file), "--out", str(out), "--unfreeze", "last-block",
                      "--loss", "bce", "--epochs", "1", *[a for a in FAST if a != "--quiet"]])
    assert result.exit_code == 0, result.output
    counts = re.search(r"features: (\d+) images \((\d+) computed now", caplog.text)
    assert counts and int(counts.group(1)) > 0 and int(counts.group(2)) == 0
    assert json.loads((out / "history.json").read_text())["data"]["computed"] == 0


def test_the_same_run_again_writes_the_same_checkpoint(pair_file, tmp_path, monkeypatch):
    """Cold feature store or warm, the same training run writes the same model.pt, byte for byte (the shipped
    models are remade by their commands); how the features were got stays in history.json."""
    import shutil

    from kface.util.hashing import file_sha256

    monkeypatch.setenv("KFACE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    digests, computed = [], []
    for _ in range(2):
        result = run(["train", "--pairs", str(pair_file), "--out", str(out), "--unfreeze", "last-block", *METRIC,
                      "--epochs", "1", *FAST])
        assert result.exit_code == 0, result.output
        digests.append(file_sha256(out / "model.pt"))
        computed.append(json.loads((out / "history.json").read_text())["data"]["computed"])
        assert "computed" not in load_checkpoint(out / "model.pt")["data"]
        shutil.rmtree(out)
    assert computed[0] > 0 and computed[1] == 0
    assert digests[0] == digests[1]


def test_training_from_a_dataset_uses_every_image_of_the_train_identities(face_tree, tmp_path):
    out = tmp_path / "from-dataset"
    result = run(["train", "--dataset", "folder", "--root", str(face_tree), "--dataset-pairs", "300",
                  "--split", "0.6:0.2:0.2", "--out", str(out), "--unfreeze", "last-block", *METRIC,
                  "--epochs", "1", *FAST])
    assert result.exit_code == 0, result.output
    pairs = read_pairs(out / "pairs.csv")
    train = pairs.select("train")
    identities = set(train.identity_a) | set(train.identity_b)
    summary = json.loads((out / "history.json").read_text())["data"]["identity_batches"]
    assert summary == {"images": IMAGES_EACH * len(identities), "identities": len(identities)}
    assert summary["images"] > len(set(train.path_a) | set(train.path_b))  # more than the pairs use


def test_unfreezing_everything_without_a_gpu_is_one_clear_error(pair_file, tmp_path):
    result = run(["train", "--pairs", str(pair_file), "--out", str(tmp_path / "all"), "--unfreeze", "all",
                  "--backbone", "dlib-torch", "--device", "cpu"])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: --unfreeze all trains every layer") and "CUDA GPU" in result.stderr
    assert not (tmp_path / "all").exists()


def test_metric_loss_needs_identities(pair_file, tmp_path):
    rows = pair_file.read_text().splitlines()
    bare = tmp_path / "bare.csv"
    bare.write_text("\n".join([rows[0]] + [",".join(r.split(",")[:4] + ["", ""]) for r in rows[1:]]) + "\n")
    result = run(["train", "--pairs", str(bare), "--root", str(pair_file.parent / "tree"), "--out",
                  str(tmp_path / "run"), "--unfreeze", "last-block", *METRIC, *FAST])
    assert result.exit_code == 2 and "identity_a/identity_b" in result.stderr


def test_arcface_trains_the_block_keeps_its_centres_out_of_the_model_and_resumes_exactly(pair_file, tmp_path):
    out = tmp_path / "arcface"
    result = run(["train", "--pairs", str(pair_file), "--out", str(out), "--unfreeze", "last-block",
                  "--loss", "arcface", "--distance", "cosine", "--ids-per-batch", "8", "--images-per-id", "4",
                  "--epochs", "3", "--select", "accuracy", *FAST])
    assert result.exit_code == 0, result.output
    epochs = json.loads((out / "history.json").read_text())["epochs"]
    assert epochs[-1]["train_loss"] < epochs[1]["train_loss"]
    assert epochs[1]["train_accuracy"] > 0.5  # centres start at each identity's mean: most images are nearest theirs
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["criterion"]["centres"].shape == (24, 128)  # one per train identity, beside the model
    checkpoint = load_checkpoint(out / "model.pt")
    assert checkpoint["config"]["loss"] == "arcface" and checkpoint["distance"] == "cosine"
    assert not any("centres" in name for name in checkpoint["head"]["state"])  # only the embedding ships

    resumed = rerun_interrupted(out, tmp_path / "resumed", epoch=1)
    for part in ("model", "criterion"):
        for name, weight in last[part].items():
            assert torch.equal(resumed[part][name], weight), (part, name)


def test_identity_batches_train_a_head_on_frozen_vectors(pair_file, tmp_path):
    out = tmp_path / "frozen"
    result = run(["train", "--pairs", str(pair_file), "--out", str(out), "--head", "siamese", *METRIC,
                  "--epochs", "2", "--lr", "1e-3", *FAST])
    assert result.exit_code == 0, result.output
    # Before identity_inputs, a frozen (images, D) table was indexed as if it held views: a shape error.
    weight = torch.load(out / "last.pt", weights_only=True)["model"]["head.linear.weight"]
    assert weight.shape == (128, 128) and not torch.equal(weight, torch.eye(128))  # the head trained
    assert json.loads((out / "history.json").read_text())["data"]["identity_batches"]["identities"] == 24
