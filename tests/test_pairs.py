"""The pair sampler and the pair-file format, on trees built from real LFW faces (and synthetic indexes)."""
from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_datasets import MEN, WOMEN, build_aaf_tree, build_aging_tree, build_folder_tree, build_kface_tree

from kface.cli import cli
from kface.datasets import DatasetIndex, ProblemReport, load_dataset
from kface.errors import InputError
from kface.pairs import HEADER, PairRequest, Ratio, parse_ratio, parse_split, read_pairs, sample_pairs, write_pairs

SPLIT = (0.5, 0.25, 0.25)


def check_pair_rules(pairs, request: PairRequest) -> None:
    """The rules every sample keeps: exact ratio per split, disjoint identities, no repeats or self-pairs."""
    negatives, positives = request.ratio.reduced
    assert len(pairs) == request.pairs
    for split, counts in pairs.counts().items():
        assert counts["different"] * positives == counts["same"] * negatives, split
    identities = {split: set(pairs.identity_a[pairs.split == split]) | set(pairs.identity_b[pairs.split == split])
                  for split in ("train", "val", "test")}
    for first, second in itertools.combinations(identities.values(), 2):
        assert not first & second
    assert np.all(pairs.path_a != pairs.path_b)
    unordered = {frozenset(pair) for pair in zip(pairs.path_a, pairs.path_b)}
    assert len(unordered) == len(pairs)
    assert np.array_equal(pairs.label == 1, pairs.identity_a == pairs.identity_b)
    for path in itertools.chain(pairs.abs_path_a, pairs.abs_path_b):
        assert Path(path).is_file()


@pytest.fixture
def kface_root(tmp_path):
    return build_kface_tree(tmp_path / "kface", subjects=8)


# -- the sampler on every layout --------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["kface", "aging", "folder", "csv"])
def test_pairs_keep_the_rules_on_every_layout(tmp_path, layout):
    if layout == "kface":
        index = load_dataset("kface", build_kface_tree(tmp_path / "kface", subjects=8))
    elif layout == "aging":
        index = load_dataset("aging", build_aging_tree(tmp_path / "aging", MEN[:6] + WOMEN[:2], per_person=6))
    else:
        root = build_folder_tree(tmp_path / "folder", {person: 6 for person in MEN[:4] + WOMEN[:4]})
        if layout == "folder":
            index = load_dataset("folder", root)
        else:
            manifest = tmp_path / "list.csv"
            rows = [f"{path},{path.split('/')[0]}" for path in load_dataset("folder", root).paths]
            manifest.write_text("path,identity\n" + "\n".join(rows) + "\n")
            index = load_dataset("csv", root, manifest=manifest)
    request = PairRequest(Ratio(4, 6), pairs=100, split=SPLIT, seed=7)
    pairs = sample_pairs(index, request)
    check_pair_rules(pairs, request)
    assert pairs.counts() == {"train": {"same": 30, "different": 20}, "val": {"same": 15, "different": 10},
                              "test": {"same": 15, "different": 10}}
    assert pairs.manifest["dataset"]["kind"] == layout
    assert pairs.manifest["seed"] == 7 and pairs.manifest["ratio"] == "4:6"


def test_kface_filters_are_honoured_in_the_pairs(kface_root):
    index = load_dataset("kface", kface_root, accessories="S1", cameras="frontal")
    pairs = sample_pairs(index, PairRequest(Ratio(4, 6), pairs=40, split=SPLIT, seed=1))
    for path in itertools.chain(pairs.path_a, pairs.path_b):
        assert path.split("/")[1] == "S001" and path.endswith("/C7.jpg")
    assert pairs.manifest["filters"]["accessories"] == "S1"
    assert pairs.manifest["filters"]["cameras"] == "C7"


def test_images_per_identity_takes_k_images_spread_over_the_conditions(kface_root):
    index = load_dataset("kface", kface_root)
    # 1:1 with 160 pairs uses every same-person pair of 5 images (10 per identity, 8 identities).
    request = PairRequest(Ratio(1, 1), pairs=160, split=SPLIT, images_per_identity=5, seed=3)
    pairs = sample_pairs(index, request)
    check_pair_rules(pairs, request)
    images: dict[str, set] = {}
    for path, identity in itertools.chain(zip(pairs.path_a, pairs.identity_a), zip(pairs.path_b, pairs.identity_b)):
        images.setdefault(identity, set()).add(path)
    assert len(images) == 8
    codes = {record.path: record.attributes for record in index}
    for paths in images.values():
        assert len(paths) == 5
        chosen = [codes[path] for path in paths]
        # 5 of 36 combinations: both accessories, all three lights, both expressions, all three cameras.
        assert {c["accessory"] for c in chosen} == {1, 2}
        assert {c["lighting"] for c in chosen} == {1, 2, 3}
        assert {c["expression"] for c in chosen} == {1, 2}
        assert {c["camera"] for c in chosen} == {6, 7, 8}


def test_images_per_identity_leaves_out_identities_with_fewer(tmp_path):
    sizes = {"Tony_Blair": 6, "Laura_Bush": 6, "Hugo_Chavez": 6, "Ariel_Sharon": 6, "Colin_Powell": 3}
    index = load_dataset("folder", build_folder_tree(tmp_path / "lfw", sizes))
    pairs = sample_pairs(index, PairRequest(Ratio(1, 1), pairs=8, split=(1, 0, 0), images_per_identity=5))
    assert "Colin_Powell" not in set(pairs.identity_a) | set(pairs.identity_b)
    assert pairs.manifest["sampler"]["identities_with_fewer_images"] == 1
    with pytest.raises(InputError, match="no identity has that many images"):
        sample_pairs(index, PairRequest(Ratio(1, 1), pairs=8, images_per_identity=7))


def test_same_seed_same_bytes_other_seed_other_file(kface_root, tmp_path):
    files = []
    for seed in (11, 11, 12):
        index = load_dataset("kface", kface_root)
        out = tmp_path / f"run{len(files)}" / "pairs.csv"
        write_pairs(sample_pairs(index, PairRequest(Ratio(3, 7), pairs=200, split=SPLIT, seed=seed)), out)
        files.append((out.read_bytes(), out.with_suffix(".json").read_bytes()))
    assert files[0] == files[1]
    assert files[0][0] != files[2][0]


def test_positives_are_spread_evenly_over_identities(tmp_path):
    sizes = {"George_W_Bush": 40, "Colin_Powell": 3, **{person: 5 for person in MEN[2:8]}}
    index = load_dataset("folder", build_folder_tree(tmp_path / "lfw", sizes))
    pairs = sample_pairs(index, PairRequest(Ratio(1, 3), pairs=84, split=(1, 0, 0), seed=5))
    per_identity = Counter(pairs.identity_a[pairs.label == 1])
    # 63 same-person pairs over 8 identities: Colin_Powell gives all 3 it has, the other 7 give 8 or 9 each
    # (George_W_Bush, with 780 pairs to offer, no more than the rest).
    assert per_identity["Colin_Powell"] == 3
    others = [count for person, count in per_identity.items() if person != "Colin_Powell"]
    assert len(others) == 7 and max(others) - min(others) <= 1 and sum(others) == 60


def test_hard_negatives_share_gender_and_age_band(tmp_path):
    root = build_aging_tree(tmp_path / "aging", MEN[:4] + WOMEN[:4], per_person=6)
    index = load_dataset("aging", root)
    request = PairRequest(Ratio(1, 1), pairs=60, split=(1, 0, 0), seed=2, hard_negatives=True)
    pairs = sample_pairs(index, request)
    check_pair_rules(pairs, request)
    attributes = {record.path: record for record in index}
    for a, b in zip(pairs.path_a[pairs.label == 0], pairs.path_b[pairs.label == 0]):
        assert attributes[a].gender == attributes[b].gender
        assert attributes[a].age // 10 == attributes[b].age // 10
    with pytest.raises(InputError, match="needs gender or age labels"):
        folder = load_dataset("folder", build_folder_tree(tmp_path / "lfw", {"Tony_Blair": 2, "Laura_Bush": 2}))
        sample_pairs(folder, PairRequest(Ratio(1, 1), pairs=2, split=(1, 0, 0), hard_negatives=True))


def test_all_age_faces_cannot_make_pairs(tmp_path):
    index = load_dataset("aaf", build_aaf_tree(tmp_path / "aaf"))
    with pytest.raises(InputError, match="every image is a different person"):
        sample_pairs(index, PairRequest(Ratio(4, 6), pairs=10))


def test_requests_the_data_cannot_meet_say_what_is_achievable(kface_root):
    index = load_dataset("kface", kface_root, cameras="frontal", accessories="S1")  # 8 ids x 6 images
    with pytest.raises(InputError, match=r"at most 200 pairs are achievable") as error:
        sample_pairs(index, PairRequest(Ratio(4, 6), pairs=1000, split=SPLIT))
    expected = "the val split's 2 identities (2 with two or more images) allow only 30 same-person pairs"
    assert expected in str(error.value)
    sample_pairs(index, PairRequest(Ratio(4, 6), pairs=200, split=SPLIT))  # the figure quoted is achievable
    with pytest.raises(InputError, match="multiple of 5"):
        sample_pairs(index, PairRequest(Ratio(4, 6), pairs=101, split=SPLIT))


# -- large synthetic indexes: every drawing strategy ----------------------------------------------------
def synthetic_index(sizes: list[int]) -> DatasetIndex:
    """An index of paths only (no files): identity i has sizes[i] images."""
    paths = [f"id{i:05d}/{j:05d}.jpg" for i, size in enumerate(sizes) for j in range(size)]
    codes = np.repeat(np.arange(len(sizes)), sizes)
    return DatasetIndex("folder", Path("/nowhere"), paths, codes, [f"id{i:05d}" for i in range(len(sizes))], {},
                        {}, {}, ProblemReport(), {})


def check_synthetic(pairs, request: PairRequest) -> None:
    negatives, positives = request.ratio.reduced
    assert len(pairs) == request.pairs
    for counts in pairs.counts().values():
        assert counts["different"] * positives == counts["same"] * negatives
    keys = {frozenset(pair) for pair in zip(pairs.path_a, pairs.path_b)}
    assert len(keys) == len(pairs) and np.all(pairs.path_a != pairs.path_b)
    assert np.array_equal(pairs.label == 1, pairs.identity_a == pairs.identity_b)


@pytest.mark.parametrize("sizes, ratio, count", [
    ([30] * 200, "6:4", 20_000),  # sparse draws on both sides
    ([3] * 40, "1:3", 160),  # every same-person pair taken (dense enumeration)
    ([2] * 10, "9:1", 100),  # half of all different-person pairs, every same-person pair (dense)
    ([3000] + [1] * 300, "10:1", 55_000),  # identity-first draws saturate; the uniform top-up finishes
])
def test_sampler_strategies_keep_the_rules(sizes, ratio, count):
    request = PairRequest(parse_ratio(ratio), pairs=count, split=(1, 0, 0), seed=4)
    check_synthetic(sample_pairs(synthetic_index(sizes), request), request)


# -- parsing ------------------------------------------------------------------------------------------------
def test_ratio_parsing():
    assert parse_ratio("4:6") == Ratio(4, 6) and parse_ratio("4:6").reduced == (2, 3)
    assert parse_ratio("0.4").reduced == (2, 3) and parse_ratio("2/5").reduced == (2, 3)
    assert parse_ratio("1:0") == Ratio(1, 0)
    for bad in ["", "a:b", "4:6:1", "-1:5", "0:0", "1.5", "4:", ":6", "4.5:5.5", "-0.2", "nan"]:
        with pytest.raises(InputError, match="--ratio"):
            parse_ratio(bad)


def test_split_parsing():
    assert parse_split("0.8:0.1:0.1") == pytest.approx((0.8, 0.1, 0.1))
    assert parse_split("8:1:1") == pytest.approx((0.8, 0.1, 0.1))
    for bad in ["0.8:0.2", "a:b:c", "0:0:0", "-1:1:1", "inf:1:1"]:
        with pytest.raises(InputError, match="--split"):
            parse_split(bad)


# -- the file format ----------------------------------------------------------------------------------------
def test_a_hand_written_pair_file_is_read(tmp_path):
    root = build_folder_tree(tmp_path / "faces", {"Tony_Blair": 2, "Laura_Bush": 1})
    hand = tmp_path / "faces" / "mine.csv"
    hand.write_bytes(b"\xef\xbb\xbfsplit,path_a,path_b,label,identity_a,identity_b\r\n"
                     b"test,Tony_Blair/Tony_Blair_0001.jpg,Tony_Blair/Tony_Blair_0002.jpg,1,,\r\n"
                     b"test,Tony_Blair/Tony_Blair_0001.jpg,Laura_Bush/Laura_Bush_0001.jpg,0,,\r\n")
    pairs = read_pairs(hand)
    assert pairs.root == root.resolve() and pairs.manifest == {}
    assert list(pairs.label) == [1, 0] and list(pairs.identity_a) == ["", ""]
    assert all(Path(path).is_file() for path in pairs.abs_path_a + pairs.abs_path_b)
    assert pairs.counts() == {"test": {"same": 1, "different": 1}}
    # Without identity columns, elsewhere, with --root.
    bare = tmp_path / "elsewhere" / "bare.csv"
    bare.parent.mkdir()
    bare.write_text("split,path_a,path_b,label\ntrain,Tony_Blair/Tony_Blair_0001.jpg,"
                    "Laura_Bush/Laura_Bush_0001.jpg,0\n")
    pairs = read_pairs(bare, root=root)
    assert Path(pairs.abs_path_b[0]).is_file() and list(pairs.identity_b) == [""]
    # A manifest beside it (written by hand too) names the root.
    bare.with_suffix(".json").write_text(json.dumps({"dataset": {"root": "../faces"}}))
    assert read_pairs(bare).root == root.resolve()


@pytest.mark.parametrize("body, message", [
    ("split,path_a,path_b\n", "header lacks label"),
    ("split,path_a,path_b,label\ntraining,a.jpg,b.jpg,1\n", r"x.csv:2: split 'training'"),
    ("split,path_a,path_b,label\ntrain,a.jpg,b.jpg,same\n", r"x.csv:2: label 'same'"),
    ("split,path_a,path_b,label\ntrain,,b.jpg,1\n", "empty image path"),
    ("split,path_a,path_b,label\n", "no pairs below the header"),
])
def test_malformed_pair_files_are_input_errors(tmp_path, body, message):
    (tmp_path / "x.csv").write_text(body)
    with pytest.raises(InputError, match=message):
        read_pairs(tmp_path / "x.csv")


def test_written_pairs_read_back_with_their_manifest(kface_root, tmp_path):
    index = load_dataset("kface", kface_root, lights="L1~2")
    written = sample_pairs(index, PairRequest(Ratio(2, 8), pairs=50, split=SPLIT, seed=9))
    manifest_path = write_pairs(written, tmp_path / "out" / "k.csv")
    assert manifest_path == tmp_path / "out" / "k.json"
    assert (tmp_path / "out" / "k.csv").read_text().splitlines()[0] == ",".join(HEADER)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["k.csv", "k.json"]  # no temp files left
    read = read_pairs(tmp_path / "out" / "k.csv")
    assert read.root == index.root
    for column in ("split", "path_a", "path_b", "label", "identity_a", "identity_b"):
        assert np.array_equal(getattr(read, column), getattr(written, column))
    manifest = read.manifest
    assert manifest["counts"]["train"] == {"same": 20, "different": 5, "identities": 4, "images": 96}
    assert manifest["dataset"]["root"] == str(kface_root.resolve())
    assert manifest["filters"]["lights"] == "L1~2" and manifest["kface_version"]
    val = read.select("val")
    assert set(val.split) == {"val"} and val.counts()["val"] == {
        key: manifest["counts"]["val"][key] for key in ("same", "different")}


def test_paths_with_commas_survive_the_round_trip(tmp_path):
    root = tmp_path / "odd"
    build_folder_tree(root, {"Tony_Blair": 2, "Laura_Bush": 2})
    (root / "Tony_Blair").rename(root / 'Blair, "Tony"')
    written = sample_pairs(load_dataset("folder", root), PairRequest(Ratio(1, 1), pairs=2, split=(1, 0, 0)))
    write_pairs(written, tmp_path / "odd.csv")
    read = read_pairs(tmp_path / "odd.csv")
    assert np.array_equal(read.path_a, written.path_a) and np.array_equal(read.identity_b, written.identity_b)
    assert 'Blair, "Tony"' in set(read.identity_a) | set(read.identity_b)


def test_a_json_out_name_is_refused(tmp_path):
    pairs = sample_pairs(synthetic_index([3] * 4), PairRequest(Ratio(1, 1), pairs=4, split=(1, 0, 0)))
    with pytest.raises(InputError, match="use .csv"):
        write_pairs(pairs, tmp_path / "pairs.json")


# -- the command line ---------------------------------------------------------------------------------------
def test_make_pairs_command_writes_pairs_under_pairs_by_default(kface_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["make-pairs", "--dataset", "kface", "--root", str(kface_root),
                                      "--ratio", "4:6", "--pairs", "80", "--split", "0.5:0.25:0.25",
                                      "--cameras", "frontal", "--images-per-identity", "4", "--seed", "3",
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["out"] == "pairs/kface-4-6-k4-seed3.csv"
    pairs = read_pairs(tmp_path / summary["out"])
    assert len(pairs) == 80 and pairs.manifest["images_per_identity"] == 4
    assert pairs.manifest["filters"]["cameras"] == "C7"


@pytest.mark.parametrize("arguments, message", [
    (["--ratio", "4:x"], "error: --ratio"),
    (["--ratio", "4:6", "--pairs", "5000"], "error: cannot make 5000 pairs"),
    (["--lights", "1~3"], "error: --lights applies to --dataset kface only"),
    (["--root", "/definitely/not/here"], "error: /definitely/not/here: no such dataset folder"),
    (["--dataset", "aaf"], "error: --dataset aaf: every image is a different person"),
    (["--pairs", "0"], "error: --pairs"),
])
def test_make_pairs_command_errors_exit_2_and_write_nothing(tmp_path, monkeypatch, arguments, message):
    root = build_folder_tree(tmp_path / "lfw", {person: 4 for person in MEN[:6]})
    monkeypatch.chdir(tmp_path)
    base = {"--dataset": "folder", "--root": str(root), "--ratio": "1:1", "--pairs": "10"}
    for flag, value in zip(arguments[::2], arguments[1::2]):
        base[flag] = value
    result = CliRunner().invoke(cli, ["make-pairs", *itertools.chain(*base.items())])
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "pairs").exists()
