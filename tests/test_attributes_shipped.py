"""The shipped Korean age-group and gender model: checked files, the default of analyze and serve, figures
on held-out Korean families, a user's --model winning; plus the new training levers on hand-made numbers.

The held-out faces come from ../shared/data/korean_family (families listed in
kface/models/korean-heldout-families.txt, never trained on); those tests skip where it is absent.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHARED, require

from kface.attributes.labels import AgeBins, AttributeConfig, age_interval, split_by_group
from kface.attributes.model import load_analyzer
from kface.build.attributes import KOREAN_AGE_BINS
from kface.cli import cli
from kface.evaluation.groups import read_group_list
from kface.models import attributes as shipped
from kface.util.hashing import file_sha256

KOREAN = SHARED / "data" / "korean_family"
HELDOUT = Path(shipped.__file__).with_name("korean-heldout-families.txt")
#: Faces per age class drawn from the held-out families (seeded), for the analyze check.
FACES_PER_CLASS = 3


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def heldout_faces() -> list[dict]:
    """FACES_PER_CLASS seeded held-out faces of each age class a..h (rows of identities.csv)."""
    require(KOREAN / "identities.csv")
    families = read_group_list(HELDOUT)  # groups of related families: "F1+F2" stands for both
    with open(KOREAN / "identities.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["family"] in families]
    rng = np.random.default_rng(0)
    chosen = []
    for age_class in "abcdefgh":
        pool = [row for row in rows if row["age_class"] == age_class]
        chosen += [pool[i] for i in rng.choice(len(pool), size=min(FACES_PER_CLASS, len(pool)), replace=False)]
    return chosen


# -- the shipped files ---------------------------------------------------------------------------------


def test_shipped_card_matches_its_file_and_names_its_provenance():
    card = shipped.attributes_card()
    assert card["name"] == shipped.SHIPPED_NAME and card["file"] == shipped.NETWORK_FILE.name
    assert file_sha256(shipped.NETWORK_FILE) == card["sha256"]
    assert card["size_bytes"] == shipped.NETWORK_FILE.stat().st_size
    assert card["training"]["held_out_families_sha256"] == file_sha256(HELDOUT)
    # The network reads the aligned chips every kface model reads (dlib's alignment), trained from dlib's last
    # stage; flip averaging is inside the graph, which matches its PyTorch checkpoint.
    assert card["meta"]["age_bins"] == list(KOREAN_AGE_BINS) and card["meta"]["input"] == "chips"
    assert card["meta"]["backbone"] == "dlib-torch" and card["recipe"]["unfreeze"] == "last-stage"
    assert card["meta"]["config"]["tta"] == "none" and card["recipe"]["flip_in_graph"]
    assert card["format"]["parity"]["max_abs_diff"] < 1e-3
    figures = card["figures"]["rows"]
    shipped_row = next(row for name, row in figures.items() if name.endswith("(shipped file)"))
    frozen_row = next(row for name, row in figures.items() if "frozen MLP" in name)
    # On the held-out groups the trained stage beats the frozen-embedding MLP on every figure.
    assert shipped_row["n"] == frozen_row["n"] > 600
    assert shipped_row["within_one"] > frozen_row["within_one"] and shipped_row["gender"] > frozen_row["gender"]
    assert shipped_row["mae_years"] < frozen_row["mae_years"]
    assert "python -m kface.build.attributes" in card["made_by"]


def test_a_damaged_shipped_file_is_refused(tmp_path, monkeypatch):
    from kface.errors import KfaceError

    damaged = tmp_path / shipped.NETWORK_FILE.name
    damaged.write_bytes(shipped.NETWORK_FILE.read_bytes()[:-1] + b"\0")
    (tmp_path / shipped.CARD_FILE.name).write_text(shipped.CARD_FILE.read_text())
    monkeypatch.setattr(shipped, "MODELS_DIR", tmp_path)
    monkeypatch.setattr(shipped, "CARD_FILE", tmp_path / shipped.CARD_FILE.name)
    shipped.attributes_card.cache_clear()
    try:
        with pytest.raises(KfaceError, match="sha256 differs"):
            shipped.attributes_card()
    finally:
        shipped.attributes_card.cache_clear()


def test_analyze_uses_the_shipped_heads_by_default_without_torch(samples_dir):
    code = ("from kface.attributes.model import load_analyzer\n"
            f"answer = load_analyzer(cache=False).analyze({str(samples_dir / 'obama.jpg')!r})\n"
            f"assert answer['model'] == {shipped.SHIPPED_NAME!r} and answer['gender'] == 'male', answer\n"
            "import sys\nprint('heavy:', *sorted(m for m in ('torch', 'sklearn', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "heavy:"


def test_analyze_json_reports_group_probabilities_expected_age_interval_and_gender(samples_dir):
    result = invoke("analyze", samples_dir / "obama.jpg", "--json", "--no-cache")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["model"] == shipped.SHIPPED_NAME
    assert list(answer["age_probs"]) == AgeBins(KOREAN_AGE_BINS).labels
    assert sum(answer["age_probs"].values()) == pytest.approx(1, abs=1e-6)
    interval = answer["age_interval"]
    assert interval["low"] <= answer["expected_age"] <= interval["high"] and interval["coverage"] == 0.8
    assert answer["gender"] == "male" and answer["gender_prob"] == answer["gender_probs"]["male"] > 0.5
    text = invoke("analyze", samples_dir / "obama.jpg", "--no-cache")
    assert text.exit_code == 0 and text.stdout.startswith(f"age {answer['age_group']} ") and "male" in text.stdout


def test_analyze_on_heldout_korean_faces_gets_gender_and_age_class_within_one_for_most():
    faces = heldout_faces()
    analyzer = load_analyzer(cache=False)
    labels = AgeBins(KOREAN_AGE_BINS).labels
    gender_right = within_one = 0
    try:
        for row in faces:
            answer = analyzer.analyze(str(KOREAN / row["path"]))
            gender_right += answer["gender"] == row["gender"]
            within_one += abs(labels.index(answer["age_group"]) - "abcdefgh".index(row["age_class"])) <= 1
    finally:
        analyzer.close()
    assert gender_right >= 0.8 * len(faces), f"{gender_right} of {len(faces)} genders right"
    # Class-balanced, the card's per-class rates (99% at 0-6 down to 69% at 67+) average 87% within one;
    # with 24 faces one standard deviation is about 1.7 faces, so the bar sits three below the mean.
    assert within_one >= 0.7 * len(faces), f"{within_one} of {len(faces)} age classes within one"


def test_verify_json_with_no_cache_finds_each_face_once(samples_dir, monkeypatch):
    """Without the disk cache, the ages of verify --json still read the chips the verdict was made from:
    each face is found once, not again for the attribute model."""
    from kface.faces.detect import FaceFinder

    calls = []
    real = FaceFinder.find
    monkeypatch.setattr(FaceFinder, "find", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    result = invoke("verify", "--json", "--no-cache", samples_dir / "obama.jpg", samples_dir / "obama2.jpg")
    assert result.exit_code == 0, result.output
    assert all(face["age"] is not None for face in json.loads(result.stdout)["faces"])
    assert len(calls) == 2


def test_verify_json_gives_each_faces_estimated_age_as_analyze_does():
    """Age-aware verification: the Korean model's verify --json carries each face's age from the same
    chip analyze reads (so the same answer), mostly within one class of the truth; stock dlib's has none;
    the text answer is unchanged."""
    faces = heldout_faces()
    labels = AgeBins(KOREAN_AGE_BINS).labels
    analyzer = load_analyzer(fallback="whole-image", cache=False)
    within_one = 0
    try:
        for first, second in zip(faces[0::2], faces[1::2]):
            paths = [str(KOREAN / first["path"]), str(KOREAN / second["path"])]
            result = invoke("verify", "--json", "--fallback", "whole-image", *paths)
            assert result.exit_code == 0, result.output
            for face, row, path in zip(json.loads(result.stdout)["faces"], (first, second), paths):
                expected = analyzer.analyze(path)
                assert face["age"]["age_group"] == expected["age_group"]
                assert face["age"]["expected_age"] == pytest.approx(expected["expected_age"], abs=1e-4)
                interval = face["age"]["age_interval"]
                assert interval["low"] <= face["age"]["expected_age"] <= interval["high"]
                within_one += abs(labels.index(face["age"]["age_group"]) - "abcdefgh".index(row["age_class"])) <= 1
    finally:
        analyzer.close()
    assert within_one >= 0.7 * len(faces), f"{within_one} of {len(faces)} age classes within one"
    stock = invoke("verify", "--json", "--model", "dlib", "--fallback", "whole-image", *paths)
    assert [face["age"] for face in json.loads(stock.stdout)["faces"]] == [None, None]
    text = invoke("verify", "--fallback", "whole-image", *paths)
    assert text.exit_code == 0 and "age" not in text.stdout


def test_train_attributes_unfreeze_trains_the_backbones_last_layers_and_analyze_reads_chips(tmp_path, samples_dir):
    """--unfreeze: the heads train with dlib's last block from its prefix features; the checkpoint keeps those
    layers, reads aligned chips, and analyze --model runs the whole network on the face it finds."""
    from test_attributes import LFW, chosen_people

    from kface.attributes.heads import load_attribute_model
    from kface.backbones.trainable import build_suffix, load_network

    people = chosen_people()  # skips where ../shared is missing
    manifest = tmp_path / "faces.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "identity", "age", "gender"])
        for number, (person, gender, files) in enumerate(people):
            for file in files:
                writer.writerow([f"images/{person}/{file.name}", person, 20 + 3 * number, gender])
    out = tmp_path / "run"
    result = invoke("train-attributes", "--dataset", "csv", "--root", LFW, "--manifest", manifest, "--task", "gender",
                    "--backbone", "dlib-torch", "--unfreeze", "last-block", "--tta", "flip", "--epochs", 2,
                    "--split", "0.6:0.2:0.2", "--device", "cpu", "--out", out, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    model = load_attribute_model(out / "model.pt")
    assert model.input == "chips" and model.cut == "last-block"
    trained = model.network.suffix.state_dict()
    stock = build_suffix(load_network("dlib-torch"), "last-block").state_dict()
    assert any(not np.allclose(stock[name].numpy(), tensor.numpy()) for name, tensor in trained.items()
               if tensor.dtype.is_floating_point), "the unfrozen layers did not train"
    answer = invoke("analyze", samples_dir / "obama.jpg", "--model", out / "model.pt", "--json", "--no-cache")
    assert answer.exit_code == 0, answer.output
    analysed = json.loads(answer.stdout)
    assert analysed["gender"] in ("female", "male") and analysed["age_group"] is None and analysed["found"]
    refused = invoke("train-attributes", "--dataset", "csv", "--root", LFW, "--manifest", manifest,
                     "--unfreeze", "last-stage", "--backbone", "dlib", "--out", tmp_path / "bad")
    assert refused.exit_code == 2 and "dlib-torch" in refused.stderr


def test_a_users_model_overrides_the_shipped_one(samples_dir, tmp_path):
    from test_serve import write_attribute_model

    model = write_attribute_model(tmp_path / "mine.pt", seed=4)
    result = invoke("analyze", samples_dir / "obama.jpg", "--model", model, "--json", "--no-cache")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["model"] == str(model) and list(answer["age_probs"]) == AgeBins().labels


def test_serve_loads_the_shipped_heads_when_no_attribute_model_is_given():
    from kface.serve.app import load_pipelines

    pipeline = load_pipelines(1, "dlib")[0]
    assert pipeline.analyzer is not None and pipeline.analyzer.model_path == shipped.SHIPPED_NAME


# -- training levers on hand-made numbers ----------------------------------------------------------------


def test_ordinal_heads_give_probabilities_and_learn_an_ordered_target(tmp_path):
    import torch

    from kface.attributes.heads import AttributeHeads, fit_heads

    heads = AttributeHeads(4, {"age": 5, "gender": 2}, hidden=8, ordinal_age=True)
    probs = heads.probabilities(torch.randn(6, 4))
    assert probs["age"].shape == (6, 5) and torch.allclose(probs["age"].sum(dim=1), torch.ones(6, dtype=torch.float32))
    assert (probs["age"] >= 0).all()
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 4)).astype(np.float32)
    age = np.clip(np.round(features[:, 0] * 1.2 + 2), 0, 4).astype(np.int64)
    split = np.repeat([0, 1, 2], [200, 50, 50])
    config = AttributeConfig(dataset="csv", root=".", out=str(tmp_path), epochs=30, lr=1e-2, hidden=16,
                             device="cpu", age_loss="ordinal", sampling="balanced", tta="flip")
    model, _, _ = fit_heads(features, {"age": age}, split, {"age": 5}, config, mirrored=features * 0.9)
    predicted = model.probabilities(torch.from_numpy(features[250:]))["age"].argmax(dim=1).numpy()
    assert np.mean(np.abs(predicted - age[250:]) <= 1) > 0.9


def test_balanced_draws_weigh_every_label_cell_alike():
    from kface.attributes.heads import balanced_draw_weights

    targets = {"age": np.array([0, 0, 0, 1, 1, 2]), "gender": np.array([0, 0, 1, 1, 1, 0])}
    weights = balanced_draw_weights(targets, np.ones(6, dtype=bool))
    cells = {}
    for weight, cell in zip(weights, zip(targets["age"], targets["gender"])):
        cells[cell] = cells.get(cell, 0) + weight
    assert all(total == pytest.approx(1) for total in cells.values())


def test_group_split_keeps_each_family_on_one_side():
    families = np.repeat(np.arange(40), 7)
    split = split_by_group(families, (0.9, 0.1, 0.0), seed=0)
    assert all(len(set(split[families == family])) == 1 for family in range(40)) and not np.any(split == 2)


def test_age_interval_covers_the_middle_of_the_predicted_years():
    ages = AgeBins(KOREAN_AGE_BINS).representative_ages(np.array([73.5]), np.array([7]))
    certain = age_interval(np.eye(8)[3], KOREAN_AGE_BINS, ages)
    assert 20 <= certain["low"] < certain["high"] <= 31
    spread = age_interval(np.array([0, 0, 0, 0.5, 0.5, 0, 0, 0]), KOREAN_AGE_BINS, ages)
    assert spread["low"] < 25 and spread["high"] > 38
    oldest = age_interval(np.eye(8)[7], KOREAN_AGE_BINS, ages)
    assert 67 <= oldest["low"] < oldest["high"] <= 80


def test_train_attributes_group_by_keeps_each_family_on_one_side(tmp_path):
    from test_attributes import LFW, chosen_people

    people = chosen_people()  # skips where ../shared is missing
    manifest = tmp_path / "faces.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "identity", "age", "gender", "family"])
        for number, (person, gender, files) in enumerate(people):
            for index, file in enumerate(files):  # two people per made-up family
                writer.writerow([f"images/{person}/{file.name}", person, 20 + 3 * number + index, gender,
                                 f"F{number // 2}"])
    out = tmp_path / "run"
    result = invoke("train-attributes", "--dataset", "csv", "--root", LFW, "--manifest", manifest, "--task", "both",
                    "--group-by", "family", "--age-loss", "ordinal", "--epochs", 2, "--split", "0.6:0.2:0.2",
                    "--out", out, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["split"]["by"] == "family"
    family_of = {person: f"F{number // 2}" for number, (person, _, _) in enumerate(people)}
    with open(out / "split.csv", newline="") as handle:
        sides: dict[str, set] = {}
        for row in csv.DictReader(handle):
            sides.setdefault(family_of[row["path"].split("/")[1]], set()).add(row["split"])
    assert len(sides) == len(people) // 2 and all(len(split) == 1 for split in sides.values())
    refused = invoke("train-attributes", "--dataset", "csv", "--root", LFW, "--manifest", manifest,
                     "--group-by", "clan", "--out", tmp_path / "bad")
    assert refused.exit_code == 2 and "clan" in refused.stderr


# -- candidate builds (python -m kface.build.attributes build --candidate NAME) ----------------------------------


def test_a_candidate_build_writes_apart_from_the_shipped_files(tmp_path):
    from kface.build.attributes import RUN_DIR, build_target
    from kface.models import MODELS_DIR

    root = tmp_path / "augmented"  # any folder laid out like korean_family, not only the shared one
    target = build_target(root, "348-families")
    assert target.candidate and target.name == "attributes-348-families"
    assert target.run_dir == Path("runs/attributes-348-families")
    folder = Path("reports/attributes-candidate-348-families")
    assert {target.network_file, target.card_file, target.report_dir / "heldout.json"} == {
        folder / "attributes-348-families.onnx", folder / "attributes-348-families.json", folder / "heldout.json"}
    for path in (target.network_file, target.card_file, target.report_dir, target.run_dir):
        assert MODELS_DIR.resolve() not in path.resolve().parents and path.resolve() != RUN_DIR.resolve()
    assert target.made_by == f"python -m kface.build.attributes build --root {root} --candidate 348-families"
    today = build_target(root)
    assert not today.candidate and (today.network_file, today.card_file) == (shipped.NETWORK_FILE, shipped.CARD_FILE)


@pytest.mark.parametrize("problem, args", [("identities.csv", ["--candidate", "x"]),
                                           ("--candidate", ["--candidate", "../models"])])
def test_a_build_with_a_bad_root_or_name_stops_with_one_error_line_before_writing(problem, args, tmp_path,
                                                                                 monkeypatch, capsys):
    from kface.build.attributes import main

    root = tmp_path / "data"
    root.mkdir()
    if problem == "--candidate":
        (root / "identities.csv").write_text("path,identity,family,gender,age_class,age\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(SystemExit) as stopped:
        main(["build", "--root", str(root), *args])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and problem in err[0]
    assert list(work.iterdir()) == []  # nothing trained, nothing written


def test_a_candidate_replaces_the_shipped_file_only_when_higher_on_exact_within_one_and_gender():
    from kface.build.attributes import beats_shipped

    today = {"exact": 0.60, "within_one": 0.955, "mae_years": 4.7, "gender": 0.952}
    assert beats_shipped({**today, "exact": 0.62, "within_one": 0.96, "gender": 0.953}, today)["beats"]
    lower_gender = beats_shipped({**today, "exact": 0.62, "within_one": 0.96, "gender": 0.95}, today)
    assert not lower_gender["beats"] and not lower_gender["figures"]["gender"]["higher"]
    assert lower_gender["figures"]["exact"] == {"candidate": 0.62, "shipped": 0.60, "higher": True}
    assert not beats_shipped(today, today)["beats"]  # a tie keeps the shipped file


def test_each_candidate_report_scores_the_shipped_file_on_the_faces_of_its_card():
    """A candidate (reports/attributes-candidate-NAME) is compared with the shipped file on the same held-out faces:
    its report's row for the shipped file is the shipped card's own, and its verdict follows the ship rule."""
    from conftest import REPO

    from kface.build.attributes import SHIP_RULE, beats_shipped

    reports = sorted((REPO / "reports").glob("attributes-candidate-*/heldout.json"))
    if not reports:
        pytest.skip("no candidate report in reports/")
    card = shipped.attributes_card()["figures"]
    card_row = next(row for name, row in card["rows"].items() if name.endswith("(shipped file)"))
    for report in reports:
        figures = json.loads(report.read_text())
        assert figures["on"] == card["on"], report
        today = figures["rows"][f"{shipped.SHIPPED_NAME} (shipped file)"]
        assert today["n"] == card_row["n"] and today["per_class"].keys() == card_row["per_class"].keys()
        for key in (*SHIP_RULE, "mae_years"):
            assert today[key] == pytest.approx(card_row[key], abs=1e-9), (report, key)
        candidate = figures["rows"]["last-stage (candidate file)"]
        assert candidate["n"] == today["n"]
        assert figures["against_shipped"] == beats_shipped(candidate, today)
