"""Siamese training end to end on real LFW faces: features, the loop, resume, torchrun, checkpoints, verify.

The pair file is sampled from 48 LFW people (4 images each) with identity-disjoint train/val/test
splits. HOG runs without upsampling (LFW faces are ~100 px) to keep the one-time embedding short.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import lfw_people, link_tree, write_folder_pairs

from kface.cli import cli
from kface.errors import InputError
from kface.training.checkpoints import load_checkpoint, pair_model_from_checkpoint, save_threshold
from kface.training.config import TrainConfig
from kface.training.data import SplitPairs
from kface.training.heads import DistanceToProbability, SiameseHead
from kface.training.loop import PairTensors, batches, epoch_order, run_epoch
from kface.training.losses import ContrastiveLoss, get_loss
from kface.training.model import build_pair_model
from kface.training.run import train
from kface.training.store import FeatureSpec, FeatureStore

PEOPLE, IMAGES_EACH = 48, 4
FAST = {"upsample": 0, "device": "cpu", "workers": 2}
# Two processes sum each gradient in another order than one, and Adam's normalised steps carry that
# rounding on: after 4 epochs here the weights differ by at most 2.3e-6 (measured); 2e-5 leaves room.
TORCHRUN_TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def lfw_pairs(tmp_path_factory) -> Path:
    """A pair file over a tree of 48 LFW people (hard links), with its features computed once."""
    from kface.training.data import load_training_data

    folder = tmp_path_factory.mktemp("lfw-subset")
    write_folder_pairs(link_tree(lfw_people(PEOPLE, IMAGES_EACH), folder / "tree"), folder / "pairs.csv", 500,
                       (0.6, 0.2, 0.2))
    load_training_data(TrainConfig(pairs=str(folder / "pairs.csv"), out=str(folder / "unused"), **FAST))
    return folder / "pairs.csv"


def config_for(pairs: Path, out: Path, **settings) -> TrainConfig:
    return TrainConfig(pairs=str(pairs), out=str(out), **{**FAST, "epochs": 4, **settings})


def state_of(run: Path, name: str = "last.pt") -> dict:
    return torch.load(run / name, weights_only=True)


@pytest.fixture(scope="module")
def reference_run(lfw_pairs, tmp_path_factory) -> Path:
    """4 epochs in one process, uninterrupted: the run others are compared with."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(config_for(lfw_pairs, out))
    return out


# -- the loop, end to end ----------------------------------------------------------------------------
def test_cli_training_lowers_val_loss_and_verify_uses_the_checkpoint(lfw_pairs, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--pairs", str(lfw_pairs), "--out", str(out), "--upsample", "0",
                                      "--epochs", "3", "--device", "cpu", "--workers", "0", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    history = json.loads((out / "history.json").read_text())
    losses = [row["val_loss"] for row in history["epochs"]]
    assert [row["epoch"] for row in history["epochs"]] == [0, 1, 2, 3]
    assert min(losses[1:]) < losses[0], losses
    assert history["seed"] == 0 and history["timing"]["features_s"] >= 0
    data = summary["data"]
    kept = sum(data["pairs"].values()) + sum(data["pairs_dropped"].values())
    assert kept == 400  # every train and val pair is either used or counted as dropped

    checkpoint = torch.load(out / "model.pt", weights_only=True)
    assert checkpoint["threshold"]["split"] == "val" and checkpoint["threshold"]["rule"] == "intersection"
    assert checkpoint["backbone"] == "dlib-resnet" and checkpoint["features"]["upsample"] == 0
    assert checkpoint["epoch"] == summary["best_epoch"] and checkpoint["seed"] == 0
    assert set(checkpoint["versions"]) >= {"kface", "torch", "numpy"}

    tree = lfw_pairs.parent / "tree"
    person = sorted(p for p in tree.iterdir())[-1]
    a, b = sorted(person.iterdir())[:2]
    verified = CliRunner().invoke(cli, ["verify", "--model", str(out / "model.pt"), str(a), str(b), "--json",
                                        "--quiet"])
    assert verified.exit_code == 0, verified.output
    answer = json.loads(verified.stdout)
    assert answer["threshold"] == pytest.approx(checkpoint["threshold"]["value"])
    assert "val split" in answer["threshold_source"]
    # verify measures the distance between the head's outputs, as training did.
    model = pair_model_from_checkpoint(checkpoint)
    features = FeatureStore(FeatureSpec(upsample=0)).features([str(a), str(b)]).features
    with torch.no_grad():
        distance, _ = model(torch.from_numpy(features[:1]), torch.from_numpy(features[1:]))
    assert answer["distance"] == pytest.approx(float(distance), abs=1e-5)
    assert answer["same"] == (answer["distance"] <= answer["threshold"])


def test_resume_after_interruption_ends_with_the_same_weights(lfw_pairs, reference_run, tmp_path):
    class Interrupted(Exception):
        pass

    def stop_after_second(record):
        if record["epoch"] == 2:
            raise Interrupted

    config = config_for(lfw_pairs, tmp_path / "run")
    with pytest.raises(Interrupted):
        train(config, on_epoch_end=stop_after_second)
    assert state_of(tmp_path / "run")["epoch"] == 2
    train(config, resume=True)
    resumed, uninterrupted = state_of(tmp_path / "run"), state_of(reference_run)
    assert resumed["epoch"] == uninterrupted["epoch"] == 4
    for name, weight in uninterrupted["model"].items():
        assert torch.allclose(resumed["model"][name], weight, rtol=0, atol=1e-6), name
    expected = [r["val_loss"] for r in uninterrupted["history"]]
    assert [r["val_loss"] for r in resumed["history"]] == pytest.approx(expected)

    with pytest.raises(InputError, match="lr"):
        train(replace(config, lr=0.02), resume=True)
    with pytest.raises(InputError, match="already holds a training run"):
        train(config)


def test_two_torchrun_processes_train_the_model_of_one(lfw_pairs, reference_run, tmp_path):
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    command = [*launcher, "--standalone", "--nproc_per_node", "2", "-m", "kface", "train", "--pairs", str(lfw_pairs),
               "--out", str(out), "--upsample", "0", "--epochs", "4", "--device", "cpu", "--workers", "2", "--quiet"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr[-3000:]
    two, one = state_of(out), state_of(reference_run)
    assert two["epoch"] == one["epoch"] == 4
    for name, weight in one["model"].items():
        assert torch.allclose(two["model"][name], weight, rtol=0, atol=TORCHRUN_TOLERANCE), name
    assert [r["train_loss"] for r in two["history"][1:]] == pytest.approx(
        [r["train_loss"] for r in one["history"][1:]], rel=1e-5)


def first_pairs(pairs: Path, out: Path, train: int, val: int) -> Path:
    """The first ``train`` train and ``val`` val rows of a pair file, with its manifest (for its root)."""
    header, *rows = pairs.read_text().splitlines()
    kept = [r for r in rows if r.startswith("train,")][:train] + [r for r in rows if r.startswith("val,")][:val]
    out.write_text("\n".join([header, *kept]) + "\n")
    shutil.copy(pairs.with_suffix(".json"), out.with_suffix(".json"))
    return out


def test_unfrozen_final_layer_trains_and_verifies_like_training(lfw_pairs, tmp_path):
    out = tmp_path / "run"
    pairs = first_pairs(lfw_pairs, tmp_path / "few.csv", train=48, val=24)  # the prefix runs on fewer images
    train(config_for(pairs, out, backbone="dlib-torch", unfreeze="fc", epochs=2))
    checkpoint = load_checkpoint(out / "model.pt")
    assert checkpoint["features"]["cut"] == "fc" and checkpoint["features"]["shape"] == [2, 256]  # chip, mirror
    last = state_of(out)
    from kface.backbones.dlib_torch import load_dlib_resnet

    pretrained = load_dlib_resnet().fc.weight
    assert not torch.allclose(last["model"]["suffix.0.weight"], pretrained)  # the backbone's layer trained

    from kface.api import FaceOptions, load_verifier
    from kface.pairs import read_pairs

    first = read_pairs(pairs).select("train")
    a, b = first.abs_path_a[0], first.abs_path_b[0]
    answer = load_verifier(str(out / "model.pt"), options=FaceOptions(detector="dlib", device="cpu")).verify(a, b)
    model = pair_model_from_checkpoint(checkpoint)
    features = FeatureStore(FeatureSpec("dlib-torch", "fc", upsample=0)).features([a, b]).features
    with torch.no_grad():
        distance, _ = model(torch.from_numpy(features[:1, :1]), torch.from_numpy(features[1:, :1]))  # the chip's view
    assert answer.distance == pytest.approx(float(distance), abs=1e-5)


def synthetic_data(seed: int = 0):
    """Features of 60 made-up identities, 5 images each: 8 dimensions carry the identity, 8 only noise that
    hides it (like lighting), which a head can learn to ignore for new people too. Pairs of identities
    0-39 train, 40-59 val."""
    from kface.training.data import TrainingData

    rng = np.random.default_rng(seed)
    identity = np.repeat(rng.normal(0, 0.1, (60, 8)), 5, axis=0) + rng.normal(0, 0.02, (300, 8))
    features = np.hstack([identity, rng.normal(0, 0.15, (300, 8))]).astype(np.float32)

    def split(count: int, first: int, last: int) -> SplitPairs:
        who, other = rng.integers(first, last, count), rng.integers(first, last - 1, count)
        other = other + (other >= who)  # someone else
        same = rng.random(count) < 0.5
        a = who * 5 + rng.integers(0, 5, count)
        b = np.where(same, who * 5 + (a % 5 + rng.integers(1, 5, count)) % 5, other * 5 + rng.integers(0, 5, count))
        return SplitPairs(a, b, same.astype(np.int8))

    return TrainingData(features, split(400, 0, 40), split(200, 40, 60), 16, {"pairs_sha256": "synthetic"})


def test_contrastive_loss_with_cosine_distance_trains_on_synthetic_features(tmp_path):
    from kface.training.run import fit

    config = TrainConfig(pairs="synthetic.csv", out=str(tmp_path / "run"), loss="contrastive", distance="cosine",
                         margin=0.5, epochs=5, lr=0.003, min_lr=0.0003, device="cpu")
    result = fit(config, synthetic_data())
    losses = [row["val_loss"] for row in result.history]
    assert min(losses[1:]) < losses[0], losses
    checkpoint = load_checkpoint(tmp_path / "run" / "model.pt")
    assert checkpoint["distance"] == "cosine" and checkpoint["head"]["loss"] == "contrastive"
    model = pair_model_from_checkpoint(checkpoint)
    assert model.detach_probability  # contrastive trains the distance; P(same) only calibrates on it


# -- checkpoints ---------------------------------------------------------------------------------------
def test_model_checkpoint_holds_the_val_distances_of_its_epoch(tmp_path):
    from kface.metrics import overlap_area
    from kface.training.loop import VAL_GRID
    from kface.training.run import fit

    data = synthetic_data()
    # Val accuracy peaks at epoch 3 of 6 here (measured): the saved epoch is not the last one.
    config = TrainConfig(pairs="synthetic.csv", out=str(tmp_path / "run"), epochs=6, lr=0.003, min_lr=0.0003,
                         select="accuracy", device="cpu")
    result = fit(config, data)
    assert result.best["epoch"] < config.epochs
    checkpoint = torch.load(tmp_path / "run" / "model.pt", weights_only=True)  # plain lists: loads as is
    stored = checkpoint["val_distances"]
    assert stored["split"] == "val" and stored["epoch"] == checkpoint["epoch"] == result.best["epoch"]
    assert len(stored["distances"]) == len(data.val) == 200
    assert stored["labels"] == data.val.labels.tolist()
    # The saved model's own distances on the val pairs...
    model = pair_model_from_checkpoint(checkpoint)
    features = torch.from_numpy(data.features)
    with torch.no_grad():
        distances, _ = model(features[data.val.a], features[data.val.b])
    np.testing.assert_allclose(stored["distances"], distances.numpy(), rtol=1e-5, atol=1e-6)
    # ...the ones that measured the saved epoch, not the last (all 200 val pairs are the overlap's sample here).
    stored_distances, labels = np.array(stored["distances"]), np.array(stored["labels"])
    overlap = overlap_area(stored_distances[labels == 1], stored_distances[labels == 0], grid=VAL_GRID)
    assert overlap == pytest.approx(checkpoint["metrics"]["overlap"], rel=1e-4)
    assert overlap == pytest.approx(result.history[result.best["epoch"]]["val_overlap"], rel=1e-4)
    assert overlap != pytest.approx(result.history[-1]["val_overlap"], rel=1e-3)


def test_save_threshold_rewrites_only_the_threshold(reference_run, tmp_path):
    from kface.metrics import Threshold

    copy = tmp_path / "model.pt"
    shutil.copy(reference_run / "model.pt", copy)
    before = load_checkpoint(copy)
    stored = save_threshold(copy, Threshold(0.5, "eer", "test"))
    after = torch.load(copy, weights_only=True)
    assert stored == after["threshold"] == {"value": 0.5, "rule": "eer", "split": "test", "note": None}
    for name, weight in before["head"]["state"].items():
        assert torch.equal(after["head"]["state"][name], weight)
    assert after["config"] == before["config"]


def test_a_file_that_is_not_a_checkpoint_is_one_clear_error(tmp_path):
    bogus = tmp_path / "model.pt"
    torch.save({"format": "something-else"}, bogus)
    result = CliRunner().invoke(cli, ["verify", "--model", str(bogus), "a.jpg", "b.jpg"])
    assert result.exit_code == 2 and "expected a kface-model checkpoint" in result.output


# -- the feature store ----------------------------------------------------------------------------------
def test_feature_store_reuses_rows_and_reports_failures(lfw_pairs, tmp_path):
    from kface.pairs import read_pairs

    good = read_pairs(lfw_pairs).select("train").abs_path_a[:3]
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    store = FeatureStore(config_for(lfw_pairs, tmp_path / "unused").feature_spec())
    found = store.features([*good, str(bad)])
    assert found.computed == 0  # the fixture stored these images already, with the same settings
    assert found.ok.tolist() == [True, True, True, False] and str(bad) in found.errors
    assert found.stages[-1] == "error" and found.features.dtype == np.float32
    assert not found.features[-1].any()


def test_feature_store_rows_follow_the_face_cache_key(tmp_path, monkeypatch):
    """A change of what cuts the chips (here auto's detector order) is a new store, never stale rows."""
    import kface.faces.detect

    spec = FeatureSpec("dlib-resnet", "none", "none", "auto", 1, "whole-image", None)
    before = FeatureStore(spec, folder=tmp_path).folder
    assert FeatureStore(spec, folder=tmp_path).folder == before
    monkeypatch.setattr(kface.faces.detect, "AUTO_ORDER_VERSION", kface.faces.detect.AUTO_ORDER_VERSION + 1)
    assert FeatureStore(spec, folder=tmp_path).folder != before


# -- configuration and command line ---------------------------------------------------------------------
@pytest.mark.parametrize("settings, message", [
    ({"epochs": 0}, "--epochs"),
    ({"min_lr": 0.1}, "--min-lr"),
    ({"select": "loss"}, "--select"),
    ({"head": "ldx"}, "unknown head"),
    ({"head": "lda", "backbone": "dlib-torch", "unfreeze": "fc"}, "fitted on frozen embeddings"),
    ({"loss": "triplet"}, "unknown loss"),
    ({"unfreeze": "fc"}, "--backbone dlib-torch"),
    ({"backbone": "dlib-torch", "unfreeze": "all", "device": "cpu"}, "needs a CUDA GPU"),
    ({"augment": "mirror"}, "--augment mirror trains on mirrored chips, which needs --unfreeze"),
    ({"loss": "metric", "margin": 0.7}, "--margin for --loss metric"),
    ({"threshold_rule": "far=2"}, "far"),
])
def test_bad_settings_are_refused_when_the_config_is_made(settings, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(pairs="p.csv", out="runs/x", **settings)


def test_unknown_config_keys_are_refused():
    with pytest.raises(InputError, match="unknown training setting"):
        TrainConfig.from_dict({"pairs": "p.csv", "out": "runs/x", "learning_rate": 0.1})


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(cli, ["train", "--pairs", str(tmp_path / "none.csv"), "--out", str(tmp_path / "r")])
    assert missing.exit_code == 2 and missing.output.startswith("error:") and "no such pair file" in missing.output
    resume = runner.invoke(cli, ["train", "--out", str(tmp_path / "r"), "--resume"])
    assert resume.exit_code == 2 and "nothing to resume" in resume.output


# -- the parts -------------------------------------------------------------------------------------------
def test_siamese_head_starts_as_tanh_of_the_embedding():
    x = torch.randn(5, 8) * 0.3
    assert torch.allclose(SiameseHead(8)(x), torch.tanh(x))


def test_probability_falls_with_distance_and_calibrates_between_the_classes():
    mapping = DistanceToProbability()
    distances = torch.tensor([0.3, 0.35, 0.4, 0.8, 0.9, 1.0])
    mapping.calibrate_(distances, torch.tensor([1, 1, 1, 0, 0, 0]))
    with torch.no_grad():
        assert float(mapping.offset) == pytest.approx((0.35 + 0.9) / 2)
        p = mapping(distances)
        assert torch.all(p[1:] <= p[:-1]) and float(mapping(mapping.offset)) == pytest.approx(0.5)


def test_the_numpy_probability_of_inference_is_the_trained_mapping():
    """Verifiers map distances to P(same) without torch (kface.distances.same_probability), from the trained
    module's two parameters: the same values as the module."""
    from kface.distances import same_probability

    mapping = DistanceToProbability(offset=0.55, sharpness=7.0)
    distances = np.array([0.0, 0.3, 0.55, 0.9, 1.4], dtype=np.float32)
    with torch.no_grad():
        expected = mapping(torch.from_numpy(distances)).numpy()
    found = same_probability(distances, offset=float(mapping.offset), log_sharpness=float(mapping.log_sharpness))
    assert found.dtype == np.float32
    np.testing.assert_allclose(found, expected, rtol=1e-6)


def test_losses_match_their_formulas():
    distances = torch.tensor([0.2, 1.5, 0.4, 0.7])
    logits = torch.tensor([2.0, -1.0, 0.5, -0.3])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    p = torch.sigmoid(logits)
    bce = -(labels * torch.log(p) + (1 - labels) * torch.log(1 - p))
    assert torch.allclose(get_loss("bce")(distances, logits, labels), bce)
    expected = [0.2 ** 2, 0.0, (1.0 - 0.4) ** 2, 0.7 ** 2]
    assert torch.allclose(ContrastiveLoss(1.0)(distances, logits, labels), torch.tensor(expected) + bce)


def test_process_shares_of_a_batch_give_the_one_process_gradient():
    """The DDP rule (each process: sum of its pairs' losses x world / global batch) averaged over 3
    processes equals the mean over the whole batch, including a last batch that does not divide."""
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.normal(0, 0.05, (20, 8)).astype(np.float32))
    split = SplitPairs(rng.integers(0, 20, 11), rng.integers(0, 20, 11), rng.integers(0, 2, 11).astype(np.int8))
    pairs = PairTensors.of(split, torch.device("cpu"))
    order = epoch_order(11, seed=0, epoch=1)

    def gradients(rank: int, world: int) -> list[torch.Tensor]:
        model = build_pair_model("siamese", 8)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        before = [p.detach().clone() for p in model.parameters()]
        run_epoch(model, batches(features, pairs, order, 11, rank, world), get_loss("bce"), optimizer=optimizer,
                  scaler=torch.amp.GradScaler("cpu", enabled=False), world_size=world)
        return [b - p.detach() for b, p in zip(before, model.parameters())]  # lr 1: the step is the gradient

    whole = gradients(0, 1)
    shares = [gradients(rank, 3) for rank in range(3)]
    for index, expected in enumerate(whole):
        assert torch.allclose(sum(share[index] for share in shares) / 3, expected, atol=1e-6)


def test_process_shares_partition_every_batch():
    pairs = PairTensors(torch.arange(11), torch.arange(11), torch.zeros(11))
    rows = torch.arange(11, dtype=torch.float32)[:, None]  # feature row i holds i: shows which pair came
    order = epoch_order(11, seed=3, epoch=2)
    shares = [list(batches(rows, pairs, order, 4, rank, 3)) for rank in range(3)]
    for number, start in enumerate(range(0, 11, 4)):
        taken = torch.cat([shares[rank][number][0] for rank in range(3)]).flatten().long()
        assert sorted(taken.tolist()) == sorted(order[start:start + 4].tolist())
        assert all(shares[rank][number][3] == len(order[start:start + 4]) for rank in range(3))


def test_training_measures_the_base_backbone_on_val_as_its_baseline(tmp_path, caplog):
    from kface.metrics import accuracy_at, choose_threshold, overlap_area
    from kface.training.loop import VAL_GRID
    from kface.training.run import fit

    data = synthetic_data()
    config = TrainConfig(pairs="synthetic.csv", out=str(tmp_path / "run"), epochs=6, lr=0.003, min_lr=0.0003,
                         device="cpu")
    result = fit(config, data)
    # The raw features' own distances on the val pairs (all 200 are the overlap's sample here).
    a, b = data.features[data.val.a], data.features[data.val.b]
    distances, labels = np.linalg.norm(a - b, axis=1), data.val.labels
    threshold = choose_threshold(distances, labels == 1, config.threshold_rule, split="val", grid=VAL_GRID)
    assert result.baseline["overlap"] == pytest.approx(
        overlap_area(distances[labels == 1], distances[labels == 0], grid=VAL_GRID), rel=1e-4)
    assert result.baseline["accuracy"] == pytest.approx(accuracy_at(distances, labels, threshold.value))
    assert result.beats_baseline == (result.best["value"] < result.baseline["overlap"])
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["baseline"] == pytest.approx(result.baseline)

    # A head that cannot move (lr 1e-12) matches the base backbone at best: the run says so.
    caplog.clear()
    still = TrainConfig(pairs="synthetic.csv", out=str(tmp_path / "still"), epochs=2, lr=1e-12, min_lr=1e-12,
                        select="accuracy", device="cpu")
    with caplog.at_level(logging.WARNING, logger="kface"):
        stuck = fit(still, data)
    assert stuck.beats_baseline is False and stuck.best["epoch"] == 0
    messages = [record.getMessage() for record in caplog.records]
    assert any("does not beat the base backbone on val" in message for message in messages)
    assert any("no epoch of training improved val accuracy" in message for message in messages)
