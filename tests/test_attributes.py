"""Age-group and gender heads: the parts on hand-made numbers, then train-attributes and analyze end to end
on real LFW faces (a CSV manifest with made-up ages, the aging and aaf layouts, lfw-gender).

Gender labels come from ../shared/data/lfw/labels; ages are invented, so the age head is tested for its
mechanics (it trains, saves, loads and answers), the gender head also for what it learned.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import SHARED, require
from PIL import Image
from test_datasets import WOMEN, build_aaf_tree, build_aging_tree, place
from test_verify import _bad_inputs

from kface.attributes.heads import fit_heads, load_attribute_model
from kface.attributes.labels import AgeBins, AttributeConfig, class_weights, parse_age_bins, split_by_group
from kface.attributes.model import load_analyzer
from kface.attributes.train import age_metrics, gender_metrics
from kface.cli import cli
from kface.datasets import load_dataset
from kface.errors import InputError

LFW = SHARED / "data" / "lfw"
PEOPLE_PER_GENDER = 20
IMAGES_PER_PERSON = 3
ANSWER_KEYS = {"age_group", "age_probs", "expected_age", "gender", "gender_prob", "gender_probs", "box", "stage",
               "found"}


def require_lfw() -> Path:
    require(LFW / "labels")
    return LFW


def gender_lists() -> dict[str, str]:
    lists = {}
    for gender in ("male", "female"):
        for name in (require_lfw() / "labels" / f"{gender}_names.txt").read_text().split():
            lists[name] = gender if lists.get(name, gender) == gender else "both"
    return lists


def chosen_people() -> list[tuple[str, str, list[Path]]]:
    """The first PEOPLE_PER_GENDER men and women (by name) with at least IMAGES_PER_PERSON images."""
    genders = gender_lists()
    chosen = {"male": [], "female": []}
    for folder in sorted((LFW / "images").iterdir()):
        files = sorted(folder.glob("*.jpg"))[:IMAGES_PER_PERSON]
        gender = genders.get(files[0].name) if len(files) == IMAGES_PER_PERSON else None
        if gender in chosen and len(chosen[gender]) < PEOPLE_PER_GENDER:
            chosen[gender].append((folder.name, gender, files))
    return chosen["male"] + chosen["female"]


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """Both heads trained once on a CSV manifest of real faces with invented ages; every other person's last
    photo is filed as an edit of their first (``edited_from``: it may train, never choose an epoch or score)."""
    require_lfw()
    folder = tmp_path_factory.mktemp("attributes-csv")
    manifest = folder / "faces.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "identity", "age", "gender", "edited_from"])
        for number, (person, gender, files) in enumerate(chosen_people()):
            for index, file in enumerate(files):
                edited = f"images/{person}/{files[0].name}" if number % 2 and index == len(files) - 1 else ""
                writer.writerow([f"images/{person}/{file.name}", person, (17 * number + 5 * index) % 75, gender,
                                 edited])
    out = folder / "run"
    result = invoke("train-attributes", "--dataset", "csv", "--root", LFW, "--manifest", manifest, "--task", "both",
                    "--epochs", 15, "--lr", 1e-3, "--seed", 3, "--out", out, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


# -- the parts ----------------------------------------------------------------------------------------
def test_age_bins_labels_groups_and_errors():
    bins = parse_age_bins("0,10,20,30,40,50,60")
    assert bins.labels == ["0-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60+"]
    assert bins.groups([0, 9, 10, 59, 60, 95, None]).tolist() == [0, 0, 1, 5, 6, 6, -1]
    assert AgeBins((18, 30)).groups([10, 18, 40]).tolist() == [-1, 0, 1]
    ages = np.array([61.0, 75.0, 30.0])
    assert bins.representative_ages(ages, bins.groups(ages)) == [5, 15, 25, 35, 45, 55, 68.0]
    assert bins.representative_ages(ages[2:], bins.groups(ages[2:]))[-1] == 65.0
    for bad in ("10,5", "a,b", "5", "-5,10"):
        with pytest.raises(InputError, match="--age-bins"):
            parse_age_bins(bad)


def test_split_keeps_groups_whole_follows_shares_and_seed():
    sizes = np.random.default_rng(0).integers(1, 30, size=200)
    groups = np.repeat(np.arange(200), sizes)
    split = split_by_group(groups, (0.7, 0.1, 0.2), seed=5)
    for group in range(200):
        assert len(set(split[groups == group])) == 1
    shares = np.bincount(split, minlength=3) / len(split)
    assert np.allclose(shares, (0.7, 0.1, 0.2), atol=0.02)
    assert np.array_equal(split, split_by_group(groups, (0.7, 0.1, 0.2), seed=5))
    assert not np.array_equal(split, split_by_group(groups, (0.7, 0.1, 0.2), seed=6))


def test_class_weights_are_inverse_frequency():
    assert np.allclose(class_weights(np.array([0, 0, 0, 1, -1]), 2), [4 / 6, 4 / 2])
    assert np.allclose(class_weights(np.array([0, 2, 2, 2]), 3), [4 / 2, 0, 4 / 6])


def test_age_and_gender_metrics_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    truth = np.array([0, 1, 1, 2])
    ages = np.array([3.0, 12.0, np.nan, 27.0])
    metrics = age_metrics(probs, truth, ages, [5, 15, 25], ["0-9", "10-19", "20+"])
    assert metrics["accuracy"] == 0.5 and metrics["adjacent_accuracy"] == 0.75
    assert metrics["mae_years_group"] == pytest.approx((2 + 13 + 22) / 3)
    expected = probs @ np.array([5, 15, 25])
    assert metrics["mae_years_expected"] == pytest.approx((abs(expected[0] - 3) + abs(expected[1] - 12)
                                                           + abs(expected[3] - 27)) / 3)
    assert metrics["per_group"]["10-19"] == {"n": 2, "accuracy": 0.5}
    assert metrics["confusion"] == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]
    assert metrics["balanced_accuracy"] == pytest.approx(0.5)
    gender = gender_metrics(np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]]), np.array([0, 0, 1]))
    assert gender["accuracy"] == pytest.approx(1 / 3) and gender["confusion"] == [[1, 1], [1, 0]]
    assert gender["per_class"]["female"]["accuracy"] == 0.5


def test_fit_is_seeded_picks_best_val_epoch_and_leaves_global_rng_alone(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(120, 16)).astype(np.float32)
    targets = {"gender": (features[:, 0] > 0).astype(np.int64)}
    split = np.repeat([0, 1, 2], [80, 20, 20])
    config = AttributeConfig(dataset="csv", root=".", out=str(tmp_path), epochs=6, lr=1e-3, hidden=8, device="cpu")
    state = torch.get_rng_state()
    first, history, best = fit_heads(features, targets, split, {"gender": 2}, config)
    assert torch.equal(state, torch.get_rng_state())
    again, _, _ = fit_heads(features, targets, split, {"gender": 2}, config)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    config.seed = 1
    other, _, _ = fit_heads(features, targets, split, {"gender": 2}, config)
    assert not torch.equal(first.state_dict()["heads.gender.0.weight"], other.state_dict()["heads.gender.0.weight"])
    keys = [(h["val_accuracy"], -h["val_loss"]) for h in history]
    assert best == 1 + keys.index(max(keys))


# -- lfw-gender ----------------------------------------------------------------------------------------
def test_lfw_gender_indexes_real_lfw_with_its_label_problems():
    index = load_dataset("lfw-gender", require_lfw())
    assert len(index) == 13233 and index.identity_count == 5749
    genders = index.attributes["gender"]
    assert genders.count("female") + genders.count("male") + genders.count(None) == 13233
    assert index.problems.counts["image in both gender lists (left unlabelled)"] == 5
    record = next(r for r in index if r.identity == "Serena_Williams")
    assert record.gender == "female" and record.path.startswith("images/Serena_Williams/")


def build_lfw_gender_tree(root: Path, people) -> Path:
    """``root/images/<person>/...`` plus ``root/labels/{male,female}_names.txt``; one name in both lists."""
    lists = {"male": [], "female": []}
    for person, gender, files in people:
        for file in files:
            place(file, root / "images" / person / file.name)
            lists[gender].append(file.name)
    lists["male"].append(lists["female"][0])
    (root / "labels").mkdir()
    for gender, names in lists.items():
        (root / "labels" / f"{gender}_names.txt").write_text("\n".join(names) + "\n")
    return root


def test_lfw_gender_tree_trains_gender_and_refuses_age(tmp_path):
    people = chosen_people()
    root = build_lfw_gender_tree(tmp_path / "lfw", people)
    index = load_dataset("lfw-gender", root / "images")  # the labels beside the images are found too
    assert len(index) == len(people) * IMAGES_PER_PERSON
    assert index.attributes["gender"].count(None) == 1
    result = invoke("train-attributes", "--dataset", "lfw-gender", "--root", root, "--task", "age", "--out",
                    tmp_path / "run")
    assert result.exit_code == 2 and "has no age labels" in result.stderr
    result = invoke("train-attributes", "--dataset", "lfw-gender", "--root", root, "--epochs", 3, "--out",
                    tmp_path / "run", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["tasks"] == ["gender"] and summary["images"]["labels_left_out"] == {"no gender label": 1}


# -- CSV: the age head's mechanics, gender learned, the checkpoint, the report ---------------------------
def test_csv_run_writes_a_self_describing_checkpoint(csv_run):
    out, summary = csv_run
    payload = torch.load(out / "model.pt", weights_only=True)
    assert payload["format"] == "kface-attributes" and payload["tasks"] == ["age", "gender"]
    assert payload["backbone"] == "dlib-resnet" and payload["seed"] == 3 and payload["config"]["seed"] == 3
    assert payload["classes"]["age"] == AgeBins().labels and payload["classes"]["gender"] == ["female", "male"]
    assert payload["config"]["weight_decay"] == 1e-4 and payload["config"]["lr"] == 1e-3
    assert set(payload["versions"]) >= {"kface", "torch", "numpy", "python"}
    history = json.loads((out / "history.json").read_text())
    keys = [(h["val_accuracy"], -h["val_loss"]) for h in history["epochs"]]
    assert len(keys) == 15 and payload["best_epoch"] == history["best_epoch"] == 1 + keys.index(max(keys))
    assert load_attribute_model(out / "model.pt").tasks == ["age", "gender"]


def test_csv_run_splits_by_identity_and_reports(csv_run):
    out, summary = csv_run
    with open(out / "split.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * PEOPLE_PER_GENDER * IMAGES_PER_PERSON
    edited = [row for number, person in enumerate(chosen_people()) if number % 2
              for row in rows if row["path"] == f"images/{person[0]}/{person[2][-1].name}"]
    assert len(edited) == PEOPLE_PER_GENDER and {row["split"] for row in edited} == {"train", "edited, val/test side"}
    sides: dict[str, set] = {}
    for row in rows:
        if row not in edited:
            sides.setdefault(row["path"].split("/")[1], set()).add(row["split"])
    assert all(len(found) == 1 for found in sides.values())
    # An edit sits with its person's side when that is train, and out of every split otherwise.
    for row in edited:
        assert (row["split"] == "train") == (sides[row["path"].split("/")[1]] == {"train"})
    assert {split for found in sides.values() for split in found} == {"train", "val", "test"}
    report = out / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    test = metrics["test"]
    test_images = metrics["split"]["counts"]["test"]["images"]
    assert test["age"]["n"] == test_images == summary["split"]["counts"]["test"]["images"]
    assert test_images == sum(row["split"] == "test" for row in rows)
    assert np.array(test["age"]["confusion"]).shape == (7, 7) and np.sum(test["age"]["confusion"]) == test["age"]["n"]
    assert 0 <= test["age"]["accuracy"] <= test["age"]["adjacent_accuracy"] <= 1
    assert test["age"]["mae_years_expected"] > 0 and set(test["age"]["per_group"]) == set(AgeBins().labels)
    # Gender is learnable from the embedding: unseen people are mostly right (chance is about 50%).
    assert metrics["gender_accuracy"] >= 0.75
    with Image.open(report / "confusion.png") as image:
        assert image.size[0] > image.size[1] > 100
    text = (report / "report.md").read_text()
    assert "| test | gender |" in text and "confusion.png" in text


def test_analyze_json_has_the_documented_keys_and_probabilities(csv_run):
    out, _ = csv_run
    image = LFW / "images" / "Serena_Williams" / "Serena_Williams_0004.jpg"
    result = invoke("analyze", image, "--model", out / "model.pt", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert ANSWER_KEYS <= set(answer) and answer["n_faces"] == 1 and answer["stage"] == "hog"
    assert list(answer["age_probs"]) == AgeBins().labels and answer["age_group"] in answer["age_probs"]
    assert sum(answer["age_probs"].values()) == pytest.approx(1, abs=1e-9)
    assert answer["age_probs"][answer["age_group"]] == max(answer["age_probs"].values())
    assert sum(answer["gender_probs"].values()) == pytest.approx(1, abs=1e-9)
    assert answer["gender_prob"] == answer["gender_probs"][answer["gender"]] >= 0.5
    left, top, right, bottom = answer["box"]
    assert 0 <= left < right <= 250 and 0 <= top < bottom <= 250
    text = invoke("analyze", image, "--model", out / "model.pt")
    assert text.exit_code == 0 and text.stdout.startswith(f"age {answer['age_group']} ")


def test_analyze_all_faces_lists_each_face_largest_first(csv_run, tmp_path):
    out, _ = csv_run
    two = Image.new("RGB", (560, 300), (128, 128, 128))
    two.paste(Image.open(LFW / "images" / "Serena_Williams" / "Serena_Williams_0001.jpg"), (0, 25))
    two.paste(Image.open(LFW / "images" / "Colin_Powell" / "Colin_Powell_0001.jpg").resize((180, 180)), (360, 60))
    path = tmp_path / "two.jpg"
    two.save(path)
    analyzer = load_analyzer(str(out / "model.pt"))
    answer = analyzer.analyze(path.read_bytes(), all_faces=True)
    assert answer["n_faces"] == 2 and len(answer["faces"]) == 2
    first, second = answer["faces"]
    assert ANSWER_KEYS <= set(first) and first["box"][2] < 280 < second["box"][0]
    assert all(sum(face["age_probs"].values()) == pytest.approx(1) for face in answer["faces"])
    largest = analyzer.analyze(path, all_faces=False)
    assert largest["box"] == first["box"] and largest["n_faces"] == 2
    assert largest["gender_probs"] == pytest.approx(first["gender_probs"], abs=1e-5)


@pytest.mark.parametrize("case", ["missing", "text", "truncated", "empty", "directory", "noface", "huge"])
def test_analyze_bad_input_is_one_error_line_exit_2(csv_run, samples_dir, tmp_path, case):
    out, _ = csv_run
    path, message = _bad_inputs(tmp_path, samples_dir)[case]
    result = invoke("analyze", path, "--model", out / "model.pt", "--json")
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0] and path.name in lines[0]


def test_analyze_refuses_a_model_file_that_is_not_an_attribute_model(samples_dir, tmp_path):
    image = samples_dir / "obama.jpg"
    other = tmp_path / "other.pt"
    torch.save({"format": "kface-verification"}, other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a model")
    for model, message in ((other, "not an attribute model"), (garbage, "not a kface model file"),
                           (tmp_path / "none.pt", "no such model file")):
        result = invoke("analyze", image, "--model", model)
        assert result.exit_code == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_train_attributes_refuses_bad_options(tmp_path):
    root = require_lfw()
    for args, message in ((["--age-bins", "10,5"], "--age-bins"), (["--split", "1:0:1"], "--split"),
                          (["--dropout", "1.5"], "--dropout")):
        result = invoke("train-attributes", "--dataset", "lfw-gender", "--root", root, "--out", tmp_path / "r", *args)
        assert result.exit_code == 2 and message in result.stderr, result.output
    assert not (tmp_path / "r").exists()


# -- the aging and aaf layouts feed train-attributes -----------------------------------------------------
def test_aging_layout_trains_both_heads_from_label_boxes(tmp_path):
    people = ["George_W_Bush", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder"] + WOMEN
    root = build_aging_tree(tmp_path / "aging", people, per_person=4)
    result = invoke("train-attributes", "--dataset", "aging", "--root", root, "--epochs", 3, "--age-bins",
                    "0,20,40,60", "--out", tmp_path / "run", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["tasks"] == ["age", "gender"] and summary["split"]["by"] == "identity"
    assert summary["images"]["stages"] == {"label": 40}  # the JSON boxes replaced detection
    assert summary["split"]["counts"]["train"]["age_groups"] and len(summary["test"]["age"]["labels"]) == 4
    model = load_attribute_model(tmp_path / "run" / "model.pt")
    assert model.age_labels == ["0-19", "20-39", "40-59", "60+"]


def test_aaf_layout_splits_image_by_image(tmp_path):
    root = build_aaf_tree(tmp_path / "aaf", count=16)
    result = invoke("train-attributes", "--dataset", "aaf", "--root", root, "--epochs", 3, "--out",
                    tmp_path / "run", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["tasks"] == ["age", "gender"] and summary["split"]["by"] == "image"
    counts = summary["split"]["counts"]
    assert sum(part["images"] for part in counts.values()) == 16
    assert all(part["identities"] == part["images"] for part in counts.values())
