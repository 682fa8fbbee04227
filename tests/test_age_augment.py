"""Edited children and elderly as training data: the plan of edits, the augmented dataset folder the make step
writes (real faces of two training families), and what training and scoring then read of it."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from conftest import SHARED, require

from kface.build.age_augment import MAX_MOVE, SOURCES, TARGETS, edit_plan, make
from kface.datasets import EDITED_COLUMN, load_dataset
from kface.errors import KfaceError
from kface.evaluation.heldout import korean_split

KOREAN = SHARED / "data" / "korean_family"


def test_the_plan_edits_each_middle_class_photo_once_to_a_near_child_or_elderly_class():
    classes = np.random.default_rng(3).integers(0, 8, size=400)
    plan = edit_plan(classes, seed=5)
    edited = plan >= 0
    assert np.array_equal(edited, np.isin(classes, SOURCES))
    assert np.isin(plan[edited], TARGETS).all() and (np.abs(plan[edited] - classes[edited]) <= MAX_MOVE).all()
    assert np.array_equal(plan, edit_plan(classes, seed=5)) and not np.array_equal(plan, edit_plan(classes, seed=6))
    for source in SOURCES:  # every allowed target is drawn
        allowed = {t for t in TARGETS if abs(t - source) <= MAX_MOVE}
        assert set(plan[classes == source]) == allowed


@pytest.fixture(scope="module")
def two_families(tmp_path_factory):
    """A korean_family-like root of two training families' rows (the images linked, not copied)."""
    korean = require(KOREAN)
    root = tmp_path_factory.mktemp("two-families")
    with open(korean / "identities.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = [row for row in reader if row["family"] in ("F0002", "F0003")]
        columns = reader.fieldnames
    with open(root / "identities.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.symlink(korean / "images", root / "images")
    return root, rows


def test_make_writes_edited_photos_as_rows_naming_their_source(two_families, tmp_path):
    root, rows = two_families
    out = tmp_path / "augment"
    summary = make(root, out, seed=0, device="cpu")
    data = out / "data"
    index = load_dataset("csv", data, manifest=data / "identities.csv")
    edited = index.edited_mask()
    training, _ = korean_split(root)  # each image once: copies filed under both families are edited once
    middle = sum(value in "cdef" for value in training.attributes["age_class"])
    assert 0 < summary["edits"] == edited.sum() and summary["edits"] + len(summary["failed"]) == middle
    assert len(index) == len(rows) + summary["edits"]
    sources = {row["path"]: row for row in rows}
    for row in np.flatnonzero(edited):
        source = sources[index.attributes[EDITED_COLUMN][row]]
        target = "abcdefgh".index(index.attributes["age_class"][row])
        assert index.identity_names[index.identity_codes[row]] == source["identity"]
        assert index.attributes["family"][row] == source["family"]
        assert target in TARGETS and abs(target - "abcdefgh".index(source["age_class"])) <= MAX_MOVE
        assert (data / index.paths[row]).stat().st_size > 0
    written = json.loads((data / "augment.json").read_text())
    assert written["seed"] == 0 and len(written["editor"]["sha256"]) == 64
    # A second run keeps the edits already written and writes the same rows.
    before = {path: path.stat().st_mtime_ns for path in (data / "edited").iterdir()}
    table = (data / "identities.csv").read_text()
    make(root, out, seed=0, device="cpu")
    assert {path: path.stat().st_mtime_ns for path in (data / "edited").iterdir()} == before
    assert (data / "identities.csv").read_text() == table
    with pytest.raises(KfaceError, match="already holds edited rows"):
        make(data, tmp_path / "again", device="cpu")
