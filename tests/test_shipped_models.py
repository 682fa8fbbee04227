"""The shipped Korean face model: checksummed card, the default everywhere, better than stock dlib on
Korean families it never saw; stock dlib stays one option away (--model dlib)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHARED, require

from kface.api import BASE_THRESHOLDS, FaceOptions, load_verifier
from kface.cli import cli
from kface.evaluation.groups import read_group_list

# Imported before any test patches MODELS_DIR: its file paths are bound at import (the damaged-file test's
# verify would otherwise import it first, bound to the test's copy).
from kface.models import (
    MODEL_FAMILIES,
    MODELS_DIR,
    attributes,  # noqa: F401
    card,
    default_model,
    network_path,
    shipped_names,
)
from kface.util.hashing import file_sha256

KOREAN = SHARED / "data" / "korean_family"
HELDOUT = MODELS_DIR / "korean-heldout-families.txt"


def test_the_korean_card_and_its_file_agree():
    body = card("korean")
    network = network_path(MODEL_FAMILIES["korean"])
    assert file_sha256(network) == body["sha256"]
    # float16: the shared layers and two last stages (tuned, and stock for the base ensemble) stay under 24 MiB
    assert network.stat().st_size == body["size_bytes"] < 24 * 2**20
    assert body["training"]["held_out_families_sha256"] == file_sha256(HELDOUT)
    assert "held-out" in " ".join(body["figures_text"]) and body["made_by"].startswith("python -m kface.build")
    assert default_model() == "korean" and shipped_names() == ["dlib", "korean"]


@pytest.mark.parametrize("precision", ["float", "int8"])
def test_a_damaged_network_file_is_refused(tmp_path, monkeypatch, precision):
    import kface.models as models

    damaged = tmp_path / "models"
    damaged.mkdir()
    family = MODEL_FAMILIES["korean"]
    body = card("korean")
    for name in (models.NETWORK_CARDS[family], body["file"], body["int8"]["file"]):
        (damaged / name).write_bytes((MODELS_DIR / name).read_bytes())
    variant = body["int8"] if precision == "int8" else body
    with open(damaged / variant["file"], "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00" * 16)
    monkeypatch.setattr(models, "MODELS_DIR", damaged)
    monkeypatch.setenv(models.PRECISION_VARIABLE, precision)
    # A cache of its own: vectors cached by another test (keyed by the card's sha256) would spare the file.
    monkeypatch.setenv("KFACE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(models.KfaceError, match="sha256 differs"):
        models.network_path(family, check=True, variant=models.network_variant(family, "cpu"))
    result = CliRunner().invoke(cli, ["verify", *[path for path, _, _ in heldout_images(2)]])
    assert result.exit_code != 0 and result.output.startswith("error:") and "sha256" in result.output


def test_kface_models_lists_both_with_thresholds():
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["default"] == "korean"
    by_name = {model["name"]: model for model in body["models"]}
    assert by_name["dlib"]["threshold"]["value"] == BASE_THRESHOLDS["dlib-resnet-v1"][0]
    assert by_name["korean"]["threshold"]["value"] == card("korean")["threshold"]["value"]
    assert body["attributes"]["name"] == "attributes-korean-v4" and body["attributes"]["meta"]["input"] == "chips"
    text = CliRunner().invoke(cli, ["models"])
    assert text.exit_code == 0 and "attributes-korean-v4 (analyze" in text.stdout and "gender" in text.stdout


def heldout_images(count: int) -> list[tuple[str, str, str]]:
    """(path, identity, age class) of the first ``count`` images of held-out families, by file name."""
    import csv

    root = require(KOREAN)
    families = read_group_list(HELDOUT)  # groups of related families: "F1+F2" stands for both
    with open(root / "identities.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["family"] in families]
    return [(str(root / row["path"]), row["identity"], row["age_class"]) for row in rows[:count]]


def test_verify_defaults_to_the_korean_model_and_says_so():
    images = heldout_images(2)
    result = CliRunner().invoke(cli, ["verify", "--json", images[0][0], images[1][0]])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["model"] == "korean" and payload["backbone"] == MODEL_FAMILIES["korean"]
    # the threshold of the copy that ran (on this CPU, the int8 copy's own)
    copy = card("korean")["int8"] if payload["precision"] == "int8" else card("korean")
    assert payload["threshold"] == copy["threshold"]["value"]
    assert "korean model card" in payload["threshold_source"]
    text = CliRunner().invoke(cli, ["verify", images[0][0], images[1][0]])
    assert "korean" in text.output


def test_model_dlib_gives_stock_results(samples_dir):
    import dlib

    from kface.models.dlib_files import DLIB_LANDMARKS_5, DLIB_RESNET, model_file

    stock = load_verifier("dlib", options=FaceOptions(detector="dlib"))
    answer = stock.verify(samples_dir / "obama.jpg", samples_dir / "biden.jpg")
    assert answer.model == "dlib" and answer.threshold == 0.6144 and not answer.same
    # dlib's own descriptor on kface's chips gives the same distance ...
    native = load_verifier("dlib", backbone="dlib-native", options=FaceOptions(detector="dlib", cache=False))
    assert answer.distance == pytest.approx(native.verify(samples_dir / "obama.jpg",
                                                          samples_dir / "biden.jpg").distance,
                                            abs=1e-4)
    # ... and a plain dlib script nearly so (its HOG pass runs at full size, kface's at a size-chosen scale).
    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(str(model_file(DLIB_LANDMARKS_5)))
    network = dlib.face_recognition_model_v1(str(model_file(DLIB_RESNET)))
    vectors = []
    for name in ("obama.jpg", "biden.jpg"):
        image = dlib.load_rgb_image(str(samples_dir / name))
        box = max(detector(image, 1), key=lambda rect: rect.area())
        vectors.append(np.array(network.compute_face_descriptor(image, landmarks(image, box))))
    assert answer.distance == pytest.approx(float(np.linalg.norm(vectors[0] - vectors[1])), abs=0.02)


@pytest.mark.slow
def test_on_held_out_families_korean_beats_stock_dlib():
    """Pairs of held-out families only: the Korean model at its own threshold beats stock dlib at its LFW
    threshold by a wide margin, and stock dlib even at the threshold best for these very pairs."""
    from kface.metrics import accuracy_at, choose_threshold

    images = heldout_images(10_000)
    paths = [path for path, _, _ in images]
    identity = np.array([who for _, who, _ in images])
    rng = np.random.default_rng(0)
    same_rows = [(i, j) for i in range(len(paths)) for j in range(i + 1, len(paths)) if identity[i] == identity[j]]
    same = [same_rows[k] for k in rng.choice(len(same_rows), 300, replace=False)]
    different = []
    while len(different) < 300:
        i, j = rng.integers(0, len(paths), 2)
        if identity[i] != identity[j]:
            different.append((int(i), int(j)))
    pairs = np.array(same + different)
    labels = np.r_[np.ones(300), np.zeros(300)]
    used = np.unique(pairs)
    accuracy = {}
    for name in ("korean", "dlib"):
        verifier = load_verifier(name, options=FaceOptions(fallback="whole-image"))
        vectors, _ = verifier.embed([paths[i] for i in used])
        row = {int(image): position for position, image in enumerate(used)}
        d = verifier.distances(vectors[[row[i] for i in pairs[:, 0]]], vectors[[row[j] for j in pairs[:, 1]]])
        accuracy[name] = accuracy_at(d, labels, verifier.threshold)
        if name == "dlib":
            accuracy["dlib-best"] = accuracy_at(d, labels, choose_threshold(d, labels, "max-accuracy").value)
    assert accuracy["korean"] >= accuracy["dlib"] + 0.2, accuracy
    assert accuracy["korean"] > accuracy["dlib-best"] + 0.05, accuracy


def test_held_out_groups_share_no_image_and_no_person_with_training():
    """The set files one scan under several identities; the split merges them first, so the held-out
    groups hold none of training's image bytes and none of its people."""
    from kface.evaluation.heldout import korean_split

    training, heldout = korean_split(require(KOREAN))
    digests = [{file_sha256(index.absolute_path(row)) for row in range(len(index))} for index in (training, heldout)]
    people = [set(index.identity_names) for index in (training, heldout)]
    assert len(heldout) > 500 and len(training) > 5 * len(heldout)  # about a tenth of the groups held out
    assert not digests[0] & digests[1]
    assert not people[0] & people[1]
    assert not set(training.attributes["family"]) & set(heldout.attributes["family"])
    # The groups are the listed ones exactly, as every shipped model was scored on them: no family added to
    # the set since (F0801 and on) joins one through a person filed under both.
    listed = {line.split("#", 1)[0].strip() for line in HELDOUT.read_text(encoding="utf-8").splitlines()} - {""}
    assert set(heldout.attributes["family"]) == listed


def test_the_held_out_list_is_never_redrawn(tmp_path, capsys):
    """Families added to the set later only train: the list stays, so old and new models meet the same faces."""
    from kface.build.__main__ import main

    before = HELDOUT.read_bytes()
    with pytest.raises(SystemExit) as stopped:
        main(["heldout", "--root", str(tmp_path)])
    assert stopped.value.code == 2 and capsys.readouterr().err.startswith("error:")
    assert HELDOUT.read_bytes() == before


@pytest.mark.parametrize("name", ["korean", "dlib"])
def test_every_shipped_model_has_measured_open_set_and_cluster_thresholds(name):
    """The thresholds galleries record are keyed by the model file's sha256: a rebuilt file must be
    measured again (kface benchmark identification, bench/gallery_cluster.py) before it ships."""
    from kface.galleries.clustering import CLUSTER_THRESHOLDS
    from kface.galleries.gallery import model_identity
    from kface.galleries.openset import OPEN_SET_THRESHOLDS

    key = model_identity(load_verifier(name, options=FaceOptions(cache=False))).key
    assert key in OPEN_SET_THRESHOLDS and key in CLUSTER_THRESHOLDS, key
