"""Family-disjoint splits (--group-by) and the family k-fold protocol's folds and pairs."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, require

from kface.datasets import load_dataset
from kface.errors import InputError
from kface.evaluation.families import FamilyProtocol, family_folds, protocol_pairs
from kface.pairs import PairRequest, parse_ratio, sample_pairs

KOREAN = SHARED / "data" / "korean_family"


def write_family_manifest(root, families: int = 12, people: int = 3, images: int = 4):
    """A csv manifest of tiny images: ``families`` families of ``people`` people with ``images`` images,
    age classes a/b alternating, gender by role."""
    from PIL import Image

    (root / "images").mkdir()
    rows = []
    for family in range(families):
        for person in range(people):
            for image in range(images):
                path = f"images/F{family:03d}_{person}_{image}.png"
                Image.new("RGB", (8, 8), (family, person, image)).save(root / path)
                rows.append([path, f"F{family:03d}_{person}", f"F{family:03d}", "male" if person % 2 else "female",
                             "ab"[image % 2]])
    manifest = root / "identities.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "identity", "family", "gender", "age_class"])
        writer.writerows(rows)
    return manifest


def test_group_by_keeps_every_family_in_one_split(tmp_path):
    manifest = write_family_manifest(tmp_path)
    index = load_dataset("csv", tmp_path, manifest=manifest)
    assert index.attributes["family"][0] == "F000"  # extra manifest columns are kept as attributes
    pairs = sample_pairs(index, PairRequest(parse_ratio("1:1"), 40, (0.5, 0.25, 0.25), seed=3, group_by="family"))
    split_of_family: dict[str, set] = {}
    for split, a, b in zip(pairs.split, pairs.identity_a, pairs.identity_b):
        for identity in (a, b):
            split_of_family.setdefault(identity.split("_")[0], set()).add(split)
    assert all(len(splits) == 1 for splits in split_of_family.values())
    assert {s for splits in split_of_family.values() for s in splits} == {"train", "val", "test"}
    assert pairs.manifest["group_by"] == "family"


def test_without_group_by_relatives_straddle_splits(tmp_path):
    manifest = write_family_manifest(tmp_path)
    index = load_dataset("csv", tmp_path, manifest=manifest)
    pairs = sample_pairs(index, PairRequest(parse_ratio("1:1"), 40, (0.5, 0.25, 0.25), seed=3))
    families: dict[str, set] = {}
    for split, a in zip(pairs.split, pairs.identity_a):
        families.setdefault(a.split("_")[0], set()).add(split)
    assert any(len(splits) > 1 for splits in families.values())


def test_group_by_an_unknown_column_is_an_input_error(tmp_path):
    manifest = write_family_manifest(tmp_path)
    index = load_dataset("csv", tmp_path, manifest=manifest)
    with pytest.raises(InputError, match="no 'clan' column"):
        sample_pairs(index, PairRequest(parse_ratio("1:1"), 40, seed=0, group_by="clan"))


def test_protocol_folds_and_pairs_follow_the_rules(tmp_path):
    manifest = write_family_manifest(tmp_path, families=10)
    index = load_dataset("csv", tmp_path, manifest=manifest)
    protocol = FamilyProtocol(folds=5, pairs_per_class=10, seed=1)
    folds = family_folds(index, protocol)
    family = np.array(index.attributes["family"])
    for name in np.unique(family):
        assert len(set(folds[family == name])) == 1
    assert sorted(np.bincount(folds)) == [24] * 5  # two families of 12 images per fold
    pairs = protocol_pairs(index, folds, protocol)
    identity = index.identity_codes
    age = np.array(index.attributes["age_class"])
    gender = np.array(index.attributes["gender"])
    assert np.all(folds[pairs.first] == pairs.folds) and np.all(folds[pairs.second] == pairs.folds)
    same = identity[pairs.first] == identity[pairs.second]
    assert np.array_equal(same, pairs.labels == 1)
    cross = pairs.kinds == "cross-age"
    assert np.all(age[pairs.first][cross & same] != age[pairs.second][cross & same])
    hard = ~cross
    assert np.all(age[pairs.first][hard] == age[pairs.second][hard])
    assert np.all(gender[pairs.first][hard & ~same] == gender[pairs.second][hard & ~same])
    again = protocol_pairs(index, family_folds(index, protocol), protocol)
    assert np.array_equal(again.first, pairs.first) and np.array_equal(again.second, pairs.second)


def test_korean_family_folds_are_family_disjoint():
    root = require(KOREAN)
    index = load_dataset("csv", root, manifest=root / "identities.csv")
    folds = family_folds(index, FamilyProtocol())
    family = np.array(index.attributes["family"])
    assert all(len(set(folds[family == name])) == 1 for name in np.unique(family))
    assert len(np.unique(folds)) == 5


class ColourVerifier:
    """A stand-in verifier whose vector is an image's colour (family, person, image): same person = close."""

    threshold = 0.5
    threshold_source = "fixed for the test"

    def embed(self, paths, on_error="raise"):
        from PIL import Image

        class Result:
            errors: dict = {}

        vectors = np.array([np.asarray(Image.open(path).convert("RGB"))[0, 0, :2] * [10.0, 1.0] for path in paths],
                           dtype=np.float64)
        return vectors.astype(np.float32), Result()

    def distances(self, a, b):
        return np.linalg.norm(a - b, axis=1)


def test_a_fixed_model_is_scored_at_its_own_and_at_the_other_folds_threshold(tmp_path):
    from kface.evaluation.family_scoring import score_fixed_model
    from kface.evaluation.family_tables import markdown_table

    manifest = write_family_manifest(tmp_path, families=10)
    index = load_dataset("csv", tmp_path, manifest=manifest)
    protocol = FamilyProtocol(folds=5, pairs_per_class=10, seed=1)
    pairs = protocol_pairs(index, family_folds(index, protocol), protocol)
    row = score_fixed_model(ColourVerifier(), index, pairs, protocol, "colour")
    for kind in ("cross-age", "same-age-hard"):
        entry = row["pair_kinds"][kind]
        # Same person: distance 0; another person: at least 1 (person) or 10 (family) away.
        assert entry["accuracy"] == 1.0 and entry["accuracy_folds_threshold"] == 1.0 and entry["auc"] == 1.0
        assert entry["pairs"]["same"] > 0 and entry["pairs"]["different"] > 0
    table = markdown_table([row], protocol)
    assert "| colour | fixed for the test | 100.00% ± 0.00 |" in table and "chosen on the other folds" in table


def test_copies_filed_under_two_families_are_one_person_once(tmp_path):
    import shutil

    from kface.evaluation.groups import distinct_images

    manifest = write_family_manifest(tmp_path, families=4)
    rows = list(csv.reader(open(manifest)))
    # Family F001's person 0 is also filed (same photos) as F002's person 2; one photo of F003_1 twice.
    extra = []
    for row in rows[1:]:
        if row[1] == "F001_0":
            copy = row[0].replace("F001_0", "F002_copy")
            shutil.copy(tmp_path / row[0], tmp_path / copy)
            extra.append([copy, "F002_2x", "F002", row[3], row[4]])
    twin = rows[1 + 3 * 3 * 4 + 4]  # the first image of F003_1
    shutil.copy(tmp_path / twin[0], tmp_path / "images" / "twin.png")
    extra.append(["images/twin.png", twin[1], twin[2], twin[3], twin[4]])
    with open(manifest, "a", newline="") as handle:
        csv.writer(handle).writerows(extra)
    index = load_dataset("csv", tmp_path, manifest=manifest)
    merged, counts = distinct_images(index, np.arange(len(index)), "family")
    assert counts == {"also_outside": 0, "repeated": 5, "identities_merged": 1}
    assert len(merged) == 4 * 3 * 4
    families = set(merged.attributes["family"])
    assert "F001+F002" in families and "F001" not in families and len(families) == 3
    # Held out F000 alone: nothing of it is elsewhere, so everything stays.
    family = np.array(index.attributes["family"])
    held, counts = distinct_images(index, np.flatnonzero(family == "F001"), "family")
    assert counts["also_outside"] == 4 and len(held) == 8  # F001_0's four photos are also F002's


def test_a_group_list_line_of_joined_groups_stands_for_each_part(tmp_path):
    from kface.evaluation.groups import read_group_list, restrict_groups

    listed = tmp_path / "groups.txt"
    listed.write_text("# held out\nF001+F002  # joined by a shared person\nF003\n", encoding="utf-8")
    assert read_group_list(listed) == {"F001", "F002", "F003"}
    index = load_dataset("csv", tmp_path, manifest=write_family_manifest(tmp_path, families=5))
    assert set(restrict_groups(index, "family", read_group_list(listed)).attributes["family"]) == {"F001", "F002",
                                                                                                   "F003"}


def test_added_groups_train_every_fold_and_leave_the_others_folds_and_pairs_as_they_were(tmp_path):
    from kface.evaluation.groups import split_added, subset_index

    manifest = write_family_manifest(tmp_path, families=12)
    index = load_dataset("csv", tmp_path, manifest=manifest)
    protocol = FamilyProtocol(folds=5, pairs_per_class=10, seed=1)
    listed = {"F010", "F011"}
    scored_rows, added_rows = split_added(index, "family", listed)
    assert set(np.array(index.attributes["family"])[added_rows]) == listed
    without = subset_index(index, group_rows_outside(index, listed))
    folds, before = family_folds(without, protocol), protocol_pairs(without, family_folds(without, protocol), protocol)
    scored = subset_index(index, scored_rows)
    assert np.array_equal(family_folds(scored, protocol), folds)
    after = protocol_pairs(scored, family_folds(scored, protocol), protocol)
    assert np.array_equal(after.first, before.first) and np.array_equal(after.second, before.second)
    with pytest.raises(InputError, match="nothing is left"):
        split_added(index, "family", set(index.attributes["family"]))
    with pytest.raises(InputError, match="none of the listed"):
        split_added(index, "family", {"F999"})


def group_rows_outside(index, listed: set) -> np.ndarray:
    return np.array([row for row, name in enumerate(index.attributes["family"]) if name not in listed])


def test_a_merged_group_listed_in_part_is_an_input_error(tmp_path):
    from dataclasses import replace

    from kface.datasets import DatasetIndex
    from kface.evaluation.groups import split_added

    index = load_dataset("csv", tmp_path, manifest=write_family_manifest(tmp_path, families=4))
    records = [index.record(row) for row in range(len(index))]
    joined = {"F001", "F002"}
    records = [replace(r, attributes={**r.attributes, "family": "F001+F002"}) if r.attributes["family"] in joined else r
               for r in records]
    merged = DatasetIndex.from_records(index.kind, index.root, records, index.problems, index.options, index.conditions)
    with pytest.raises(InputError, match="F001\\+F002 share a person"):
        split_added(merged, "family", {"F002"})
    assert len(split_added(merged, "family", {"F001", "F002"})[1]) == 2 * 3 * 4


def test_a_cut_run_scores_the_first_folds_as_dealt_for_all(tmp_path):
    from kface.evaluation.family_scoring import score_fixed_model
    from kface.evaluation.family_tables import markdown_table

    manifest = write_family_manifest(tmp_path, families=10)
    index = load_dataset("csv", tmp_path, manifest=manifest)
    whole = FamilyProtocol(folds=5, pairs_per_class=10, seed=1)
    cut = FamilyProtocol(folds=5, pairs_per_class=10, seed=1, scored_folds=2)
    folds = family_folds(index, cut)
    assert np.array_equal(folds, family_folds(index, whole))
    pairs = protocol_pairs(index, folds, cut)
    keep = pairs.folds < cut.scored
    from kface.evaluation.families import _subset

    row = score_fixed_model(ColourVerifier(), index, _subset(pairs, keep), cut, "colour")
    assert len(row["pair_kinds"]["cross-age"]["fold_accuracies"]) == 2
    assert "5-fold family-disjoint protocol (a cut run: the first 2 of its folds scored)" in markdown_table([row], cut)
    with pytest.raises(InputError, match="--scored-folds"):
        FamilyProtocol(folds=5, scored_folds=6)


def test_a_protocol_without_pairs_is_an_input_error():
    with pytest.raises(InputError, match="--pairs-per-class"):
        FamilyProtocol(pairs_per_class=0)


def test_edited_photos_train_only_the_folds_of_their_person_and_are_never_scored(tmp_path):
    from PIL import Image

    from kface.datasets import EDITED_COLUMN
    from kface.evaluation.family_run import prepare_data

    manifest = write_family_manifest(tmp_path, families=12)
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    protocol = FamilyProtocol(folds=5, pairs_per_class=10, seed=1)
    added_file = tmp_path / "added.txt"
    added_file.write_text("F010\nF011\n", encoding="utf-8")

    def data():
        return prepare_data("csv", str(tmp_path), {"manifest": str(manifest)}, protocol, groups_file=None,
                            exclude_file=None, added_file=str(added_file), distinct=True, progress=False,
                            log=lambda text: None)

    before = data()
    (tmp_path / "edited").mkdir()
    edits = []
    for number, row in enumerate(rows[::4]):  # one edit of each person's first photo
        path = f"edited/{number}.png"
        Image.new("RGB", (8, 8), (200, number % 256, number // 256)).save(tmp_path / path)
        edits.append({**row, "path": path, "age_class": "h", EDITED_COLUMN: row["path"]})
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], EDITED_COLUMN])
        writer.writeheader()
        writer.writerows([{**row, EDITED_COLUMN: ""} for row in rows] + edits)
    after = data()

    # The scored photos, their folds and pairs are those of the data without the edits.
    assert after.scored.paths == before.scored.paths and np.array_equal(after.image_folds, before.image_folds)
    assert np.array_equal(after.pairs.first, before.pairs.first) and np.array_equal(after.pairs.second,
                                                                                    before.pairs.second)
    assert [suffix for _, _, suffix in after.variants] == ["", "+added", "+added+edited"]
    index, folds, _ = after.variants[-1]
    fold_of_person = {after.scored.identity_names[code]: fold
                      for code, fold in zip(after.scored.identity_codes, after.image_folds)}
    edited = [row for row, path in enumerate(index.paths) if path.startswith("edited/")]
    assert len(edited) == len(edits) == after.dataset["edited"]["images"]
    for row in edited:
        person = index.identity_names[index.identity_codes[row]]
        # An added group's person trains every fold (-1); any other person's edits sit out the fold it is tested in.
        assert folds[row] == fold_of_person.get(person, -1)
        assert (folds[row] == -1) == person.startswith(("F010", "F011"))
    assert max(after.pairs.first.max(), after.pairs.second.max()) < len(after.scored) <= min(edited)


def test_edited_photos_make_no_pair_but_train_their_identity(tmp_path):
    from PIL import Image

    from kface.datasets import EDITED_COLUMN
    from kface.training.identity import train_identity_images

    manifest = write_family_manifest(tmp_path, families=10)
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    (tmp_path / "edited").mkdir()
    edits = []
    for number, row in enumerate(rows[::4]):
        path = f"edited/{number}.png"
        Image.new("RGB", (8, 8), (200, number, 0)).save(tmp_path / path)
        edits.append({**row, "path": path, EDITED_COLUMN: row["path"]})
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], EDITED_COLUMN])
        writer.writeheader()
        writer.writerows([{**row, EDITED_COLUMN: ""} for row in rows] + edits)
    index = load_dataset("csv", tmp_path, manifest=manifest)
    assert index.edited_mask().sum() == len(edits)
    pairs = sample_pairs(index, PairRequest(parse_ratio("4:6"), 200, (0.6, 0.2, 0.2), None, 0, group_by="family"))
    used = set(pairs.path_a) | set(pairs.path_b)
    assert used and not any(path.startswith("edited/") for path in used)
    assert pairs.manifest["sampler"]["edited_images"] == len(edits)
    images = train_identity_images(pairs, index)
    trained = {Path(path).name for path in images.paths if "/edited/" in path}
    train_people = set(pairs.select("train").identity_a) | set(pairs.select("train").identity_b)
    expected = {Path(edit["path"]).name for edit in edits if edit["identity"] in train_people}
    assert trained == expected and expected
