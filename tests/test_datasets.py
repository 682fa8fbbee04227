"""Dataset adapters on small trees built from real LFW faces in each layout (folder, kface, aging, aaf, csv).

The tree builders here are also used by test_pairs.py.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import SHARED, require
from PIL import Image

from kface.datasets import ADAPTERS, DatasetIndex, dataset_options, load_dataset
from kface.datasets.kface_layout import format_code_set, parse_code_set
from kface.datasets.records import Record
from kface.errors import InputError

LFW_IMAGES = SHARED / "data" / "lfw" / "images"
MEN = ["George_W_Bush", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder", "Ariel_Sharon",
       "Hugo_Chavez", "Junichiro_Koizumi", "Jean_Chretien", "John_Ashcroft"]
WOMEN = ["Serena_Williams", "Laura_Bush", "Jennifer_Capriati", "Gloria_Macapagal_Arroyo", "Megawati_Sukarnoputri"]
KFACE_COMBOS = list(itertools.product((1, 2), (1, 2, 3), (1, 2), (6, 7, 8)))  # S, L, E, C: 36 per subject


def lfw_faces(person: str) -> list[Path]:
    """The real LFW images of one person, sorted (skips the test when ../shared is absent)."""
    return sorted((require(LFW_IMAGES) / person).glob("*.jpg"))


def place(source: Path, target: Path) -> None:
    """Put a real face at ``target``: a hard link where the file system allows, else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def build_folder_tree(root: Path, sizes: dict[str, int]) -> Path:
    """``root/<person>/<file>.jpg`` with ``sizes[person]`` real images each."""
    for person, size in sizes.items():
        for face in lfw_faces(person)[:size]:
            place(face, root / person / face.name)
    return root


def build_kface_tree(root: Path, subjects: int = 8, combos=KFACE_COMBOS) -> Path:
    """``root/<ID>/S00s/Ll/E0e/Cc.jpg``: one LFW person per subject id, their faces spread over the codes."""
    for number, person in enumerate((MEN + WOMEN)[:subjects]):
        faces = itertools.cycle(lfw_faces(person))
        for s, light, e, c in combos:
            folder = root / f"1906{2421 + number:04d}" / f"S{s:03d}" / f"L{light}" / f"E{e:02d}"
            place(next(faces), folder / f"C{c}.jpg")
    return root


def build_aging_tree(root: Path, people: list[str], per_person: int = 6) -> Path:
    """``root/images/<stem>.png|jpg`` and ``root/labels/<stem>.json``, stems like 0001_1960_05_00000001_F."""
    for number, person in enumerate(people, start=1):
        gender = "female" if person in WOMEN else "male"
        birth = 1950 + number
        for index, face in enumerate(lfw_faces(person)[:per_person]):
            age = 5 + 12 * index
            stem = f"{number:04d}_{birth}_{age:02d}_{index + 1:08d}_{gender[0].upper()}"
            image = root / "images" / f"{stem}.{'png' if index % 2 else 'jpg'}"
            image.parent.mkdir(parents=True, exist_ok=True)
            if index % 2:
                Image.open(face).save(image)
            else:
                place(face, image)
            label = {"filename": image.name, "id": f"{number:04d}", "birth": birth, "age_now": 80,
                     "age_past": age, "format": image.suffix[1:], "imgsize": image.stat().st_size,
                     "width": 250, "height": 250, "device": "digital", "gender": gender,
                     "annotation": [{"box": {"x": 70.5, "y": 60.0, "w": 110.0, "h": 120.0},
                                     "landmark": [[100, 110], [150, 110], [125, 135], [105, 160], [145, 160]]}]}
            (root / "labels").mkdir(exist_ok=True)
            (root / "labels" / f"{stem}.json").write_text(json.dumps(label), encoding="utf-8")
    return root


def build_aaf_tree(root: Path, count: int = 12) -> Path:
    """``aligned faces/`` and ``original images/`` with NNNNNA<age>.jpg, plus ``image sets/`` lists."""
    faces = lfw_faces("Serena_Williams")[: count // 2] + lfw_faces("Colin_Powell")[: count - count // 2]
    lines = []
    for number, face in enumerate(faces):
        name = f"{number:05d}A{20 + number:02d}.jpg"
        place(face, root / "aligned faces" / name)
        place(face, root / "original images" / name)
        lines.append(f"{name[:-4]} {0 if number < count // 2 else 1}")
    (root / "image sets").mkdir()
    (root / "image sets" / "train.txt").write_text("\n".join(lines[::2]) + "\n")
    (root / "image sets" / "val.txt").write_text("\n".join(lines[1::2]) + "\n")
    return root


# -- folder -----------------------------------------------------------------------------------------
def test_folder_indexes_every_image_under_its_identity_and_reports_strays(tmp_path):
    root = build_folder_tree(tmp_path / "lfw", {"Tony_Blair": 4, "Laura_Bush": 3})
    (root / "stray.jpg").write_bytes(b"x")
    (root / "Tony_Blair" / "notes.txt").write_text("not an image")
    index = load_dataset("folder", root)
    assert len(index) == 7
    assert sorted(index.identity_names) == ["Laura_Bush", "Tony_Blair"]
    records = index.records
    assert all(isinstance(record, Record) for record in records)
    assert [record.path for record in records] == sorted(record.path for record in records)
    assert all(record.path.startswith(record.identity + "/") for record in records)
    assert all((root / record.path).is_file() for record in records)
    assert index.problems.counts == {"file outside an identity folder": 1, "file that is not an image": 1}
    assert index.problems.examples["file that is not an image"] == ["Tony_Blair/notes.txt"]


# -- kface ------------------------------------------------------------------------------------------
def test_kface_codes_become_attributes(tmp_path):
    root = build_kface_tree(tmp_path / "kface", subjects=2)
    index = load_dataset("kface", root)
    assert len(index) == 2 * len(KFACE_COMBOS)
    assert index.conditions == ("accessory", "lighting", "expression", "camera")
    record = next(r for r in index if r.path == "19062421/S002/L3/E01/C8.jpg")
    assert record.identity == "19062421"
    assert record.attributes == {"accessory": 2, "lighting": 3, "expression": 1, "camera": 8}


@pytest.mark.parametrize("options, expected", [
    ({"cameras": "frontal"}, lambda s, light, e, c: c == 7),
    ({"cameras": "frontal", "frontal_camera": "C6"}, lambda s, light, e, c: c == 6),
    ({"accessories": "S1", "lights": "L1~2"}, lambda s, light, e, c: s == 1 and light <= 2),
    ({"lights": "1,3", "expressions": "E2", "cameras": "C6-7"},
     lambda s, light, e, c: light in (1, 3) and e == 2 and c < 8),
])
def test_kface_filters_select_exactly_the_matching_codes(tmp_path, options, expected):
    root = build_kface_tree(tmp_path / "kface", subjects=2)
    index = load_dataset("kface", root, **options)
    wanted = sum(expected(*combo) for combo in KFACE_COMBOS) * 2
    assert len(index) == wanted
    for record in index:
        codes = record.attributes
        assert expected(codes["accessory"], codes["lighting"], codes["expression"], codes["camera"])


def test_kface_filter_matching_nothing_says_what_the_tree_holds(tmp_path):
    root = build_kface_tree(tmp_path / "kface", subjects=1)
    with pytest.raises(InputError, match=r"matches accessories S5.*accessories S1~2"):
        load_dataset("kface", root, accessories="S5")


def test_kface_root_above_resolution_folders_is_explained(tmp_path):
    build_kface_tree(tmp_path / "K-Face" / "High_Resolution", subjects=1)
    with pytest.raises(InputError, match="resolution variants.*High_Resolution"):
        load_dataset("kface", tmp_path / "K-Face")


def test_kface_label_files_give_boxes_and_bad_ones_are_reported(tmp_path):
    root = build_kface_tree(tmp_path / "kface", subjects=1)
    folder = root / "19062421" / "S001" / "L1" / "E01"
    (folder / "C7.txt").write_text("bbox 40 50 120 140\n" + "\n".join(f"{x} {x + 1}" for x in range(5)) + "\n")
    (folder / "C6.txt").write_text("no numbers here\n")
    (folder / "Thumbs.db").write_bytes(b"")
    index = load_dataset("kface", root)
    by_path = {record.path: record for record in index}
    frontal = by_path["19062421/S001/L1/E01/C7.jpg"]
    assert frontal.box == (40.0, 50.0, 120.0, 140.0)
    assert frontal.landmarks == tuple((float(x), float(x + 1)) for x in range(5))
    assert by_path["19062421/S001/L1/E01/C6.jpg"].box is None
    assert index.problems.counts == {"label file without a usable box": 1, "file that is not a C<n> image": 1}
    corners = {r.path: r for r in load_dataset("kface", root, box_format="xyxy")}
    assert corners["19062421/S001/L1/E01/C7.jpg"].box == (40.0, 50.0, 80.0, 90.0)
    ignored = {r.path: r for r in load_dataset("kface", root, box_format="none")}
    assert ignored["19062421/S001/L1/E01/C7.jpg"].box is None


def test_code_range_syntax():
    assert parse_code_set("S1~3,5", "S") == {1, 2, 3, 5}
    assert parse_code_set("L1~7,10~15", "L") == set(range(1, 8)) | set(range(10, 16))
    assert parse_code_set("E01", "E") == {1}
    assert parse_code_set("c6-8", "C") == {6, 7, 8}
    assert format_code_set({1, 2, 3, 5, 10, 11}, "L") == "L1~3,5,10~11"
    for bad in ["", "S", "x1", "L1~3", "0", "3~1", "1~", "1,,2"]:
        with pytest.raises(InputError, match="--accessories"):
            parse_code_set(bad, "S")


# -- aging ------------------------------------------------------------------------------------------
def test_aging_reads_identity_age_gender_box_and_landmarks(tmp_path):
    root = build_aging_tree(tmp_path / "aging", ["Tony_Blair", "Laura_Bush"], per_person=4)
    index = load_dataset("aging", root)
    assert len(index) == 8 and not index.problems
    assert index.identity_names == ["0001", "0002"]
    record = next(r for r in index if r.path == "images/0002_1952_17_00000002_F.png")
    assert record.identity == "0002"
    assert record.age == 17 and record.gender == "female"
    assert record.box == (70.5, 60.0, 110.0, 120.0)
    assert record.landmarks[2] == (125.0, 135.0)


def test_aging_dirt_is_counted_and_named(tmp_path):
    root = build_aging_tree(tmp_path / "aging", ["Tony_Blair", "Laura_Bush"], per_person=4)
    labels = root / "labels"
    (labels / "0001_1951_05_00000001_M.json").unlink()  # image without a label
    (labels / "0001_1951_17_00000002_M.json").write_text("{broken")  # unreadable label
    late = json.loads((labels / "0002_1952_29_00000003_F.json").read_text())
    late["age_past"] = 95  # a photo after the collection year
    (labels / "0002_1952_29_00000003_F.json").write_text(json.dumps(late))
    (labels / "0009_1990_10_00000001_M.json").write_text(json.dumps({"age_past": 10}))  # image missing
    index = load_dataset("aging", root)
    assert len(index) == 8
    assert index.problems.counts == {
        "image without a label file": 1, "unreadable label file": 1, "label file whose image is missing": 1,
        "age at photo after the collection (age left out)": 1}
    assert index.problems.examples["label file whose image is missing"] == ["labels/0009_1990_10_00000001_M.json"]
    by_path = {r.path: r for r in index}
    assert by_path["images/0001_1951_05_00000001_M.jpg"].age == 5  # from the file name
    assert by_path["images/0001_1951_05_00000001_M.jpg"].gender is None
    assert by_path["images/0002_1952_29_00000003_F.jpg"].age is None


# -- aaf --------------------------------------------------------------------------------------------
def test_aaf_ages_from_names_genders_from_lists_no_identities(tmp_path):
    root = build_aaf_tree(tmp_path / "aaf", count=12)
    with open(root / "image sets" / "val.txt", "a") as handle:
        handle.write("00099A33 1\nthis line is wrong\n")
    index = load_dataset("aaf", root)
    assert len(index) == 12
    assert index.identity_names == [""]
    record = next(r for r in index if r.path == "aligned faces/00007A27.jpg")
    assert record.age == 27 and record.gender == "male" and record.attributes["subset"] == "val"
    assert next(r for r in index if r.path.endswith("00002A22.jpg")).gender == "female"
    assert index.problems.counts == {"labelled image missing from disk": 1, "unreadable label line": 1}
    originals = load_dataset("aaf", root, aaf_images="original")
    assert all(r.path.startswith("original images/") for r in originals)


# -- csv manifest -----------------------------------------------------------------------------------
def test_manifest_rows_become_records_and_bad_rows_are_reported(tmp_path):
    root = build_folder_tree(tmp_path / "data", {"Tony_Blair": 2, "Laura_Bush": 2})
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "path,identity,age,gender\n"
        "Tony_Blair/Tony_Blair_0001.jpg,tb,50,M\n"
        f"{root}/Tony_Blair/Tony_Blair_0002.jpg,tb,,\n"
        "Laura_Bush/Laura_Bush_0001.jpg,lb,fifty,female\n"
        "Laura_Bush/Laura_Bush_0002.jpg,lb,40,robot\n"
        "Laura_Bush/missing.jpg,lb,40,F\n"
        "../outside.jpg,x,,\n"
        "Tony_Blair/Tony_Blair_0001.jpg,tb,50,M\n")
    index = load_dataset("csv", root, manifest=manifest)
    by_path = {r.path: r for r in index}
    assert sorted(by_path) == ["Laura_Bush/Laura_Bush_0001.jpg", "Laura_Bush/Laura_Bush_0002.jpg",
                               "Tony_Blair/Tony_Blair_0001.jpg", "Tony_Blair/Tony_Blair_0002.jpg"]
    assert by_path["Tony_Blair/Tony_Blair_0001.jpg"].attributes == {"age": 50, "gender": "male"}
    assert by_path["Laura_Bush/Laura_Bush_0001.jpg"].attributes == {"gender": "female"}
    assert index.problems.counts == {
        "age that is not a whole number of years": 1, "unknown gender value": 1, "image missing from disk": 1,
        "row whose path is empty or outside the root": 1, "repeated row (later copy ignored)": 1}
    assert index.options == {"manifest": str(manifest)}


def test_manifest_needs_its_columns(tmp_path):
    root = build_folder_tree(tmp_path / "data", {"Tony_Blair": 1})
    manifest = tmp_path / "list.csv"
    manifest.write_text("file,person\nTony_Blair/Tony_Blair_0001.jpg,tb\n")
    with pytest.raises(InputError, match="header lacks path, identity"):
        load_dataset("csv", root, manifest=manifest)
    with pytest.raises(InputError, match="needs --manifest"):
        load_dataset("csv", root)


# -- options and errors shared by every layout ------------------------------------------------------
def test_dataset_options_apply_only_where_they_belong():
    assert dataset_options("folder", lights=None, manifest=None) == {}
    with pytest.raises(InputError, match="--lights applies to --dataset kface only"):
        dataset_options("folder", lights="1~3")
    with pytest.raises(InputError, match="--manifest applies to --dataset csv only"):
        dataset_options("kface", manifest="x.csv")
    with pytest.raises(InputError, match="unknown dataset kind 'lfw'"):
        dataset_options("lfw")
    with pytest.raises(InputError, match="--lights: cannot read"):
        dataset_options("kface", lights="L1~x")
    assert dataset_options("kface", cameras="frontal", frontal_camera="C8") == {"cameras": {8}, "frontal_camera": 8}


def test_missing_root_is_an_input_error(tmp_path):
    for kind in ADAPTERS:
        with pytest.raises(InputError, match="no such dataset folder"):
            load_dataset(kind, tmp_path / "absent", **({"manifest": "m.csv"} if kind == "csv" else {}))


def test_index_is_the_same_whatever_the_listing_order(tmp_path):
    root = build_kface_tree(tmp_path / "kface", subjects=2)
    first = load_dataset("kface", root)
    again = DatasetIndex.from_records("kface", first.root, reversed(first.records))
    assert again.paths == first.paths
    assert list(again.identity_codes) == list(first.identity_codes)
    assert again.attributes == first.attributes
