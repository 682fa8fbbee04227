"""kface enroll / search / gallery / cluster on real photos, and the gallery's faults with real processes:
kill -9 during a large enrolment, a deleted or corrupt index, searches while another process enrolls."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import EXAMPLES, lfw_people, link_tree, require

from kface.cli import cli

KFACE = [sys.executable, "-m", "kface"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def snapshot(path: Path) -> str:
    """A digest of a gallery's rows (what 'unchanged' means), independent of SQLite's page layout."""
    import sqlite3

    connection = sqlite3.connect(path)
    rows = connection.execute("SELECT identity_id, sha256, vector FROM images ORDER BY id").fetchall()
    people = connection.execute("SELECT name FROM identities ORDER BY id").fetchall()
    connection.close()
    return hashlib.sha256(repr((rows, people)).encode()).hexdigest()


@pytest.fixture(scope="module")
def small_gallery(tmp_path_factory):
    """obama (two photos) and biden enrolled through the command line."""
    require(EXAMPLES / "obama.jpg")
    path = tmp_path_factory.mktemp("gallery") / "people.kgallery"
    first = run("enroll", "--gallery", path, EXAMPLES / "obama.jpg", EXAMPLES / "obama3.jpg", "--identity", "obama",
                "--model", "dlib", "-q")
    assert first.exit_code == 0, first.output
    second = run("enroll", "--gallery", path, EXAMPLES / "biden.jpg", "--identity", "biden", "-q")
    assert second.exit_code == 0, second.output
    return path


def test_search_ranks_people_and_answers_the_open_set(small_gallery):
    result = run("search", EXAMPLES / "obama2.jpg", "--gallery", small_gallery, "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert [c["identity"] for c in answer["candidates"]] == ["obama", "biden"]
    assert [c["same_at_threshold"] for c in answer["candidates"]] == [True, False]
    assert "FPIR 1%" in answer["open_set_source"]  # dlib's measured open-set threshold
    assert answer["match"] == ("obama" if answer["candidates"][0]["distance"] <= answer["open_set_threshold"] else None)
    text = run("search", EXAMPLES / "obama2.jpg", "--gallery", small_gallery, "--top", "1", "--open-set-threshold",
               "0.5")
    assert text.output.splitlines()[0].startswith("1. obama") and "match: obama" in text.output
    strict = run("search", EXAMPLES / "obama2.jpg", "--gallery", small_gallery, "--open-set-threshold", "0.01")
    assert "no one in the gallery" in strict.output


def test_list_stats_and_skipping_known_images(small_gallery):
    listed = json.loads(run("gallery", "list", "--gallery", small_gallery, "--json").output)
    assert {p["identity"]: p["images"] for p in listed["identities"]} == {"biden": 1, "obama": 2}
    again = run("enroll", "--gallery", small_gallery, EXAMPLES / "obama.jpg", "--identity", "obama", "--json")
    assert json.loads(again.output)["already"] == 1 and json.loads(again.output)["enrolled"] == 0
    stats = json.loads(run("gallery", "stats", "--gallery", small_gallery, "--json").output)
    assert stats["images"] == 3 and stats["model"] == "dlib" and stats["index"]["current"]


@pytest.mark.parametrize("case", ["no-face", "not-a-gallery", "empty", "missing-file"])
def test_bad_input_is_one_error_line_exit_2_and_leaves_the_gallery_unchanged(case, small_gallery, tmp_path):
    from PIL import Image

    before = snapshot(small_gallery)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(blank)
    if case == "no-face":
        result = run("enroll", "--gallery", small_gallery, EXAMPLES / "biden.jpg", blank, "--identity", "x")
    elif case == "not-a-gallery":
        result = run("search", EXAMPLES / "obama.jpg", "--gallery", blank)
    elif case == "empty":
        from kface.galleries.store import GalleryStore, ModelIdentity

        GalleryStore.create(tmp_path / "empty.kgallery", ModelIdentity(
            "dlib@dlib-resnet-v1", "dlib", "dlib-resnet", "euclidean", 0.6144, 128), (0.5, "test")).close()
        result = run("search", EXAMPLES / "obama.jpg", "--gallery", tmp_path / "empty.kgallery")
    else:
        result = run("enroll", "--gallery", small_gallery, tmp_path / "nope.jpg", "--identity", "x")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert snapshot(small_gallery) == before
    if case == "no-face":  # a new gallery whose first enrolment fails is not left behind either
        fresh = tmp_path / "fresh.kgallery"
        assert run("enroll", "--gallery", fresh, blank, "--identity", "x").exit_code == 2
        assert not fresh.exists()


def test_a_new_gallery_records_the_default_model(tmp_path):
    from kface.models import default_model

    path = tmp_path / "new.kgallery"
    assert run("enroll", "--gallery", path, EXAMPLES / "biden.jpg", "--identity", "biden", "-q").exit_code == 0
    stats = json.loads(run("gallery", "stats", "--gallery", path, "--json").output)
    assert stats["model"] == default_model() and stats["images"] == 1
    assert stats["open_set_source"]


def test_model_mismatch_names_both_models(tmp_path):
    from kface.galleries.store import GalleryStore, ModelIdentity

    path = tmp_path / "other.kgallery"
    GalleryStore.create(path, ModelIdentity("korean@0123456789abcdef", "dlib", "dlib-resnet", "euclidean", 0.5, 128),
                        (0.4, "test")).close()
    before = snapshot(path)
    for explicit in ([], ["--model", "dlib"]):
        result = run("enroll", "--gallery", path, EXAMPLES / "obama.jpg", "--identity", "obama", *explicit)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
        assert "korean@0123456789abcdef" in result.output and "dlib@dlib-resnet-v1" in result.output
    assert snapshot(path) == before


def test_remove_forgets_a_person(small_gallery, tmp_path):
    import shutil

    copy = tmp_path / "copy.kgallery"
    shutil.copy(small_gallery, copy)
    assert run("gallery", "remove", "--gallery", copy, "--identity", "biden").exit_code == 0
    listed = json.loads(run("gallery", "list", "--gallery", copy, "--json").output)
    assert [p["identity"] for p in listed["identities"]] == ["obama"]
    assert run("gallery", "remove", "--gallery", copy, "--identity", "biden").exit_code == 2


def test_deleted_and_corrupt_index_files_are_rebuilt(small_gallery):
    from kface.galleries.index import VectorIndex, index_path

    expected = json.loads(run("search", EXAMPLES / "obama2.jpg", "--gallery", small_gallery, "--json").output)
    index_file = index_path(small_gallery)
    for damage in ("delete", "corrupt"):
        if damage == "delete":
            index_file.unlink()
        else:
            index_file.write_bytes(b'{"magic": "kface-gallery-index"}\n' + os.urandom(300))
        result = subprocess.run(KFACE + ["search", str(EXAMPLES / "obama2.jpg"), "--gallery", str(small_gallery),
                                         "--json"], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["candidates"] == expected["candidates"]
        assert VectorIndex.load(index_file).count == 3


def test_cluster_groups_a_folder_by_person(tmp_path):
    tree = link_tree(lfw_people(4, 3), tmp_path / "faces")
    out = tmp_path / "clusters.csv"
    result = run("cluster", "--dataset", "folder", "--root", tree, "--out", out, "--json", "--fallback", "whole-image",
                 "--model", "dlib")  # dlib's measured link distance
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["faces"] == 12 and summary["bcubed"]["f1"] >= 0.8  # 4 people; one big cluster scores 0.4
    header = out.read_text().splitlines()[0]
    assert header == "path,cluster,identity"


def _enrolled_count(path: Path) -> int:
    import sqlite3

    connection = sqlite3.connect(path)
    try:
        return connection.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    finally:
        connection.close()


@pytest.mark.slow
def test_kill_9_during_enrolment_loses_nothing_reported_and_a_rerun_finishes(tmp_path):
    tree = link_tree(lfw_people(24, 2), tmp_path / "faces")
    gallery = tmp_path / "big.kgallery"
    command = KFACE + ["enroll", "--gallery", str(gallery), "--dataset", "folder", "--root", str(tree), "--batch", "4",
                       "--fallback", "whole-image"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    reported = 0
    deadline = time.monotonic() + 600
    for line in process.stderr:
        if line.startswith("note: enrolled "):
            reported = int(line.split()[2])
            if reported >= 12:
                os.killpg(process.pid, signal.SIGKILL)
                break
        assert time.monotonic() < deadline
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the enrolment ended before it could be killed"
    assert _enrolled_count(gallery) >= reported
    rerun = subprocess.run(command + ["--json"], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["images"] == 48 and summary["already"] >= reported
    assert summary["enrolled"] + summary["already"] == 48


SEARCHER = """
import json, sys, time
import numpy as np
from kface.galleries import Gallery
probe = np.load(sys.argv[2])
answers, seen, deadline = {}, 0, time.monotonic() + 300
with Gallery.open(sys.argv[1]) as gallery:
    gallery.search_vectors(probe)
    print("ready", file=sys.stderr, flush=True)
    while seen < int(sys.argv[3]) and time.monotonic() < deadline:  # until the enrolment is done
        answer = gallery.search_vectors(probe, top=3)[0]
        seen = answer.gallery_images
        top = [(c.identity, c.distance) for c in answer.candidates]
        answers[json.dumps([seen, top])] = {"seen": seen, "top": top}
print(json.dumps(list(answers.values())))
"""


@pytest.mark.slow
def test_two_searchers_during_an_enrolment_see_whole_committed_states(tmp_path):
    from kface.api import FaceOptions, load_verifier
    from kface.galleries import Gallery

    people = lfw_people(20, 2)
    tree = link_tree(people, tmp_path / "faces")
    verifier = load_verifier("dlib", options=FaceOptions(fallback="whole-image"))
    vectors, _ = verifier.embed([str(image) for _, images in people for image in images])  # warms the cache
    probe = tmp_path / "probe.npy"
    np.save(probe, vectors[-1:] + 0.01)  # someone enrolled last
    gallery = tmp_path / "busy.kgallery"
    with Gallery.open(gallery, "dlib", create=True, fallback="whole-image") as empty:
        empty.enroll([str(people[0][1][0])], people[0][0])  # the searchers need someone to find
    searchers = [subprocess.Popen([sys.executable, "-c", SEARCHER, str(gallery), str(probe), "40"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for searcher in searchers:  # both searching before the enrolment starts
        assert any(line.strip() == "ready" for line in searcher.stderr), "a searcher ended before it was ready"
    enroller = subprocess.Popen(KFACE + ["enroll", "--gallery", str(gallery), "--dataset", "folder", "--root",
                                         str(tree), "--batch", "1", "-q"], stderr=subprocess.PIPE, text=True)
    outputs = [s.communicate(timeout=600) for s in searchers]
    assert enroller.wait(timeout=600) == 0, enroller.stderr.read()
    assert all(s.returncode == 0 for s in searchers), [err for _, err in outputs]
    # Every answer must be exact search over the first `seen` images (enrolment only appends).
    with Gallery.open(gallery) as final:
        ids, stored = final.store.vectors()
        owners = final.store.identities_of(ids)
    distances = np.linalg.norm(stored - np.load(probe)[0], axis=1)
    seen_counts = set()
    for out, _ in outputs:
        for answer in json.loads(out):
            seen = answer["seen"]
            seen_counts.add(seen)
            best: dict[str, float] = {}
            for row in np.argsort(distances[:seen], kind="stable"):
                best.setdefault(owners[int(ids[row])][0], float(distances[row]))
            expected = sorted(best.items(), key=lambda item: item[1])[:3]
            assert [name for name, _ in answer["top"]] == [name for name, _ in expected]
            assert np.allclose([d for _, d in answer["top"]], [d for _, d in expected], atol=1e-4)
    assert len(seen_counts) >= 2, "the searches did not overlap the enrolment"
