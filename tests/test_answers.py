"""Answers a person can act on: operating points, the calibrated probability, caution, abstention, the card's
distributions, and the toolkit's public names (each through ``from kface import ...``)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import EXAMPLES, LFW, SHARED, require

KOREAN = SHARED / "data" / "korean_family"
PAIR_KINDS = ("cross-age", "same-age-hard")


def korean_answers(copy: str = "float") -> dict:
    from kface.models import card

    body = card("korean")
    return body["int8"]["answers"] if copy == "int8" else body["answers"]


# -- the mechanisms ---------------------------------------------------------------------------------
def test_far_points_keep_the_false_accept_rate_on_the_pairs_they_are_chosen_on():
    from kface.metrics.operating_points import far_of, far_threshold, point_name, rates_at

    rng = np.random.default_rng(0)
    distances = np.r_[rng.normal(0.5, 0.1, 2000), rng.normal(0.9, 0.1, 5000)]
    labels = np.r_[np.ones(2000, int), np.zeros(5000, int)]
    for far in (1e-2, 1e-3):
        assert point_name(far) == f"far=1e{int(np.log10(far))}" and far_of(point_name(far)) == far
        measured = rates_at(distances, labels, far_threshold(distances, labels, far))
        assert measured["far"] <= far and measured["strangers"] == 5000
        assert measured["false_accepts"] == int(far * 5000)  # the largest threshold keeping the rate


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_calibration_fits_falling_probabilities_with_a_small_error(method):
    from kface.metrics.calibration import Calibration, expected_calibration_error, fit_calibration, reliability

    rng = np.random.default_rng(1)
    distances = np.r_[rng.normal(0.5, 0.1, 3000), rng.normal(0.8, 0.1, 3000)]
    labels = np.r_[np.ones(3000, int), np.zeros(3000, int)]
    fitted = fit_calibration(distances, labels, method)
    again = Calibration.from_dict(json.loads(json.dumps(fitted.to_dict())))
    grid = np.linspace(0.2, 1.1, 50)
    assert np.all(np.diff(again(grid)) <= 1e-9) and np.allclose(again(grid), fitted(grid), atol=1e-3)
    assert expected_calibration_error(fitted(distances), labels) < 0.03
    # A probability that ignores the distance is off by the whole gap in every bin.
    assert expected_calibration_error(np.full(6000, 0.9), labels) == pytest.approx(0.4)
    assert sum(row["pairs"] for row in reliability(fitted(distances), labels)) == 6000


def test_a_trained_model_gets_its_points_from_its_own_val_pairs():
    from kface.metrics.answers import answers_from_val

    rng = np.random.default_rng(2)
    distances = np.r_[rng.normal(0.4, 0.1, 400), rng.normal(0.9, 0.1, 600)]
    labels = np.r_[np.ones(400, int), np.zeros(600, int)]
    answers = answers_from_val(distances, labels, 0.75, "runs/x/model.pt: intersection rule on its val split")
    assert set(answers.points) == {"balanced", "far=1e-2"}  # 600 strangers cannot choose far=1e-3
    assert answers.threshold(answers.point(far=0.01)) < 0.75
    assert answers.expected("far=1e-2")["expected_far"] <= 0.01
    assert answers.probability(0.5) is None and answers.caution([None, None]) is None


# -- the shipped cards ------------------------------------------------------------------------------
@pytest.mark.parametrize("copy", ["float", "int8"])
def test_korean_card_far_1e2_holds_on_held_out_groups_and_its_probability_is_calibrated(copy):
    block = korean_answers(copy)
    assert set(block["points"]) == {"balanced", "far=1e-2", "far=1e-3"}
    point = block["points"]["far=1e-2"]
    for kind in PAIR_KINDS:
        measured = point["heldout"][kind]
        assert measured["strangers"] >= 1000, kind
        assert 0.005 <= measured["far"] <= 0.02, (kind, measured)
    assert block["probability"]["heldout"]["ece"] <= 0.05
    assert block["caution"]["child_classes"] and block["abstain"]["level"] > 0.5
    for kind in PAIR_KINDS:  # the val distributions the page draws, both classes of both kinds
        counts = block["distributions"][kind]
        assert len(counts["same"]) == len(block["distributions"]["edges"]) - 1
        assert sum(counts["same"]) == block["val"]["pairs"][kind]["same"]
        assert sum(counts["different"]) == block["val"]["pairs"][kind]["different"]


def test_stock_dlib_card_has_operating_points_on_the_same_groups():
    from kface.models import network_card

    dlib, korean = network_card("dlib-resnet-v1")["answers"], korean_answers()
    assert dlib["val"]["groups"] == korean["val"]["groups"]
    assert dlib["points"]["balanced"]["threshold"] == pytest.approx(0.6144)
    assert dlib["points"]["far=1e-2"]["threshold"] < dlib["points"]["balanced"]["threshold"]


# -- verify, --pairs, the server --------------------------------------------------------------------
def test_verify_far_json_names_the_point_its_rates_and_the_probability():
    from kface.cli import cli
    from kface.models import network_variant

    result = CliRunner().invoke(cli, ["verify", "--far", "0.001", "--json", str(EXAMPLES / "obama.jpg"),
                                      str(EXAMPLES / "obama2.jpg")])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    block = korean_answers(network_variant("kface-korean-v4")["precision"])
    point = block["points"]["far=1e-3"]
    assert answer["operating_point"] == "far=1e-3"
    assert answer["threshold"] == pytest.approx(point["threshold"])
    assert answer["expected_far"] == pytest.approx(point["heldout"]["both"]["far"])
    assert answer["expected_tar"] == pytest.approx(point["heldout"]["both"]["tar"])
    assert 0.0 <= answer["probability"] <= 1.0 and answer["answer"] in ("same", "different")


def test_verify_refuses_an_unknown_point_and_a_threshold_with_a_point():
    from kface.cli import cli

    pair = [str(EXAMPLES / "obama.jpg"), str(EXAMPLES / "obama2.jpg")]
    for extra, message in ((["--far", "0.05"], "--far 0.05"), (["--threshold", "0.5", "--far", "0.01"], "not both")):
        result = CliRunner().invoke(cli, ["verify", *extra, *pair])
        assert result.exit_code == 2 and message in result.output, result.output


def test_pairs_results_have_a_probability_column(tmp_path):
    from kface.cli import cli

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("split,path_a,path_b,label,identity_a,identity_b\n"
                     f"test,{EXAMPLES / 'obama.jpg'},{EXAMPLES / 'obama2.jpg'},1,obama,obama\n"
                     f"test,{EXAMPLES / 'obama.jpg'},{EXAMPLES / 'biden.jpg'},0,obama,biden\n")
    out = tmp_path / "results.csv"
    result = CliRunner().invoke(cli, ["verify", "--pairs", str(pairs), "--out", str(out), "--operating-point",
                                      "far=1e-2", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["operating_point"] == "far=1e-2" and summary["expected_far"] is not None
    rows = list(csv.DictReader(out.open()))
    probabilities = [float(row["probability"]) for row in rows]
    assert probabilities[0] > 0.5 > probabilities[1]


def test_server_answer_carries_the_point_probability_and_caution_field():
    from fastapi.testclient import TestClient

    from kface.api import FaceOptions, load_verifier
    from kface.serve.app import Pipeline, create_app

    verifier = load_verifier(far=0.01, options=FaceOptions(cache=False))
    with TestClient(create_app([Pipeline(verifier)])) as client:
        files = {name: (path.name, path.read_bytes(), "image/jpeg")
                 for name, path in (("image_a", EXAMPLES / "obama.jpg"), ("image_b", EXAMPLES / "obama2.jpg"))}
        answer = client.post("/verify", files=files).json()
        drawn = client.get("/distribution").json()
    assert answer["operating_point"] == "far=1e-2" and answer["probability"] > 0.5
    assert "caution" in answer and answer["expected_far"] is not None
    assert drawn["available"] and set(drawn["points"]) == {"balanced", "far=1e-2", "far=1e-3"}
    assert drawn["n_diff"] == sum(verifier.answers.block["val"]["pairs"][kind]["different"] for kind in PAIR_KINDS)


def held_out_child_photos() -> list[Path]:
    """Two photos of one child under 7 from the held-out groups (identities.csv, age class a: 0-6)."""
    from kface.evaluation.groups import read_group_list
    from kface.evaluation.heldout import HELDOUT_FILE

    groups = read_group_list(HELDOUT_FILE)
    photos: dict[str, list[Path]] = {}
    with (require(KOREAN) / "identities.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["family"] in groups and row["age_class"] == "a":
                photos.setdefault(row["identity"], []).append(KOREAN / row["path"])
    person = next(name for name in sorted(photos) if len(photos[name]) >= 2)
    return photos[person][:2]


def test_verify_on_a_held_out_child_says_caution():
    from kface.cli import cli

    first, second = held_out_child_photos()
    result = CliRunner().invoke(cli, ["verify", "--json", str(first), str(second)])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["caution"] is not None, answer["faces"]
    assert "under 13" in answer["caution"]["reason"]
    assert 0 < answer["caution"]["heldout_accuracy"] < 1
    text = CliRunner().invoke(cli, ["verify", str(first), str(second)])
    assert text.output.splitlines()[-1].startswith("caution: a face looks under 13")


def test_abstain_answers_cannot_tell_inside_the_unsure_band():
    from kface.metrics.answers import CANNOT_TELL, OTHER, ModelAnswers

    answers = ModelAnswers(korean_answers())
    low, high = answers.block["abstain"]["bands"][OTHER]
    middle = (low + high) / 2
    assert answers.annotate("balanced", middle, True, [None, None], abstain=True)["answer"] == CANNOT_TELL
    assert answers.annotate("balanced", middle, True, [None, None], abstain=False)["answer"] == "same"
    assert answers.annotate("balanced", low - 0.1, True, [None, None], abstain=True)["answer"] == "same"


def test_search_far_matches_only_within_the_points_threshold(tmp_path):
    from kface import Gallery
    from kface.cli import cli
    from kface.models import network_variant

    with Gallery.open(tmp_path / "people.kgallery", create=True) as gallery:
        gallery.enroll([str(EXAMPLES / "obama.jpg")], identity="obama")
    result = CliRunner().invoke(cli, ["search", "--gallery", str(tmp_path / "people.kgallery"), "--far", "0.001",
                                      "--json", str(EXAMPLES / "obama2.jpg")])
    assert result.exit_code == 0, result.output
    point = korean_answers(network_variant("kface-korean-v4")["precision"])["points"]["far=1e-3"]
    assert json.loads(result.output)["open_set_threshold"] == pytest.approx(point["threshold"])


def test_models_plot_writes_the_distributions_and_reliability(tmp_path):
    from kface.cli import cli

    result = CliRunner().invoke(cli, ["models", "--plot", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("korean-distances.png", "korean-reliability.png", "dlib-distances.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the toolkit in Python ----------------------------------------------------------------------------
def test_public_names_import_without_torch():
    code = ("import sys\nfrom kface import analyze, Gallery, cluster, make_pairs, benchmark_lfw, benchmark_families\n"
            "print(*sorted(m for m in ('torch', 'sklearn', 'scipy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_analyze_through_the_public_name_widens_an_adults_interval_by_the_portrait_drift():
    from kface import analyze
    from kface.models.attributes import attributes_card

    domain = attributes_card()["domain"]
    answer = analyze(str(EXAMPLES / "obama.jpg"))
    assert answer["gender"] == "male" and answer["found"]
    wider, interval = answer["age_interval_outside_albums"], answer["age_interval"]
    assert wider["low"] == pytest.approx(max(0.0, interval["low"] - domain["outside_albums_extra_years"]), abs=0.11)
    assert wider["high"] == interval["high"]
    low, high = domain["portraits"]["photos"][0]["age"]  # the photo's known age is inside the wider interval
    assert wider["low"] <= high and low <= wider["high"]
    assert 0.5 < domain["later_families"]["all"]["interval_holds_age"] <= 1.0


def test_gallery_through_the_public_name(tmp_path):
    from kface import Gallery

    with Gallery.open(tmp_path / "people.kgallery", create=True) as gallery:
        assert gallery.enroll([str(EXAMPLES / "obama.jpg")], identity="obama").enrolled == 1
        assert gallery.enroll([str(EXAMPLES / "biden.jpg")], identity="biden").enrolled == 1
        assert gallery.search(str(EXAMPLES / "obama2.jpg")).candidates[0].identity == "obama"


def test_cluster_through_the_public_name():
    from kface import cluster

    images = [str(EXAMPLES / name) for name in ("obama.jpg", "obama2.jpg", "biden.jpg")]
    found = cluster(images)
    assert found.labels[0] == found.labels[1] != found.labels[2]


def test_make_pairs_through_the_public_name(tmp_path):
    from kface import make_pairs

    manifest = tmp_path / "people.csv"
    rows = [f"{name},{person}" for person, names in (("obama", ("obama.jpg", "obama2.jpg", "obama3.jpg")),
                                                                ("biden", ("biden.jpg",))) for name in names]
    manifest.write_text("path,identity\n" + "\n".join(rows) + "\n")
    made = make_pairs("csv", EXAMPLES, manifest=str(manifest), ratio="1:1", pairs=4, split="1:0:0", seed=3,
                      out=tmp_path / "pairs.csv")
    assert made.path.is_file() and made.manifest.is_file() and len(made.pairs) > 0
    assert json.loads(made.manifest.read_text())["seed"] == 3


def test_benchmark_lfw_through_the_public_name(tmp_path):
    from kface import benchmark_lfw

    lines = (require(LFW) / "pairs.txt").read_text().splitlines()[1:]
    small = [line for fold in range(10) for start in (600 * fold, 600 * fold + 300) for line in lines[start:start + 2]]
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("10\t2\n" + "\n".join(small) + "\n")
    result = benchmark_lfw(LFW, model="dlib", pairs_file=pairs_file)
    assert result["pairs"] == 40 and 0.5 <= result["accuracy"] <= 1.0


def test_benchmark_families_through_the_public_name(tmp_path):
    from kface import benchmark_families

    families = sorted({row["family"] for row in csv.DictReader((require(KOREAN) / "identities.csv").open())})[:2]
    groups = tmp_path / "groups.txt"
    groups.write_text("\n".join(families) + "\n")
    rows = benchmark_families("csv", KOREAN, layout_options={"manifest": str(KOREAN / "identities.csv")},
                              out=tmp_path / "report", models=["dlib"], groups_file=str(groups), folds=2,
                              pairs_per_class=5)
    assert rows[0]["name"] == "dlib" and set(rows[0]["pair_kinds"]) == set(PAIR_KINDS)
    assert (tmp_path / "report" / "benchmark.json").is_file()
