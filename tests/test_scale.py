"""Parquet embedding datasets on one machine and on Ray Data: one row per input (bad files and faceless
photos as rows with their error), the same rows and vectors on every path, resumable exactly once under a
killed Ray worker and a driver killed with kill -9."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHARED, require
from fault_helpers import assert_one_error, kface, start_kface

KOREAN = SHARED / "data" / "korean_family"
#: Real images per test dataset: enough for several shards and both actors, small for a 2-core machine.
IMAGES = 30


def _manifest_rows(count: int) -> list[list[str]]:
    lines = (require(KOREAN) / "identities.csv").read_text(encoding="utf-8").splitlines()
    return [line.split(",") for line in lines[: count + 1]]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path, int]:
    """(root, manifest, rows): ``IMAGES`` linked real photos plus a truncated JPEG, a non-image file and a
    faceless photo, with a manifest in the korean_family layout."""
    from PIL import Image

    rows = _manifest_rows(IMAGES)
    root = tmp_path_factory.mktemp("scale-data")
    (root / "images").mkdir()
    header, body = rows[0], rows[1:]
    for row in body:
        os.symlink(KOREAN / row[0], root / row[0])
    first = (KOREAN / body[0][0]).read_bytes()
    (root / "images" / "truncated.jpg").write_bytes(first[: len(first) // 3])
    (root / "images" / "notes.jpg").write_text("not an image", encoding="utf-8")
    Image.new("RGB", (200, 200), (120, 130, 140)).save(root / "images" / "blank.png")
    bad = ("truncated.jpg", "notes.jpg", "blank.png")
    extra = [[f"images/{name}", "X0001_D", "X0001", *body[0][3:]] for name in bad]
    manifest = root / "identities.csv"
    manifest.write_text("\n".join(",".join(row) for row in [header, *body, *extra]) + "\n", encoding="utf-8")
    return root, manifest, len(body) + len(extra)


def _items(dataset):
    from kface.scale.batches import dataset_items

    root, manifest, _ = dataset
    return dataset_items("csv", root, {"manifest": str(manifest)})


def _table(out: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kface.embeddings.parquet import shard_files

    return pa.concat_tables([pq.read_table(shard) for shard in shard_files(out)])


def _by_path(out: Path) -> dict[str, dict]:
    rows = _table(out).to_pylist()
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)), "a path has several rows"
    return {row["path"]: row for row in rows}


@pytest.fixture(scope="module")
def single(dataset, tmp_path_factory) -> Path:
    """The dataset embedded by the single-process path (no cache: every vector computed here)."""
    from kface.scale.batches import EmbedSettings, embed_dataset

    out = tmp_path_factory.mktemp("single") / "k.parquet"
    summary = embed_dataset(_items(dataset), out, EmbedSettings(), cache=False, shard_rows=8)
    assert summary["computed"] == summary["rows"] == dataset[2]
    return out


def test_every_input_is_one_row_and_bad_files_are_rows_with_their_error(dataset, single):
    rows = _by_path(single)
    assert len(rows) == dataset[2]
    kinds = {Path(path).name: row["error_kind"] for path, row in rows.items() if row["error"]}
    assert kinds == {"truncated.jpg": "truncated", "notes.jpg": "not-an-image", "blank.png": "no-face"}
    good = [row for row in rows.values() if not row["error"]]
    assert len(good) == IMAGES and all(row["found"] and row["embedding"] is not None for row in good)
    assert all(row["identity"] and row["family"] and row["sha256"] for row in good)
    assert rows["images/blank.png"]["stage"] == "none" and rows["images/blank.png"]["embedding"] is None


def test_cli_summary_and_a_rerun_computes_nothing(dataset, single, tmp_path):
    import shutil

    out = tmp_path / "k.parquet"
    shutil.copytree(single, out)
    root, manifest, count = dataset
    result = kface("embed", "--dataset", "csv", "--root", root, "--manifest", manifest, "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    import json

    summary = json.loads(result.stdout)
    assert summary["computed"] == 0 and summary["rows"] == count and summary["found"] == IMAGES
    assert summary["errors"] == {"no-face": 1, "not-an-image": 1, "truncated": 1}


def test_strict_aborts_with_one_error_line(dataset, tmp_path):
    root, manifest, _ = dataset
    result = kface("embed", "--dataset", "csv", "--root", root, "--manifest", manifest, "--out",
                   tmp_path / "s.parquet", "--strict", "--no-cache")
    assert_one_error(result, 2, "images/")


def test_ray_gives_the_same_rows_and_vectors_as_one_process(dataset, single, ray_address, tmp_path):
    from kface.scale.batches import EmbedSettings
    from kface.scale.embed import embed_dataset_ray

    out = tmp_path / "r.parquet"
    summary = embed_dataset_ray(_items(dataset), out, EmbedSettings(), address=ray_address, workers=2, shard_rows=8)
    assert summary["computed"] == dataset[2]
    ours, theirs = _by_path(out), _by_path(single)
    assert ours.keys() == theirs.keys()
    for path, row in ours.items():
        other = theirs[path]
        for column in ("sha256", "found", "stage", "box", "error_kind", "identity", "model", "precision"):
            assert row[column] == other[column], (path, column)
        if row["embedding"] is None:
            assert other["embedding"] is None
        else:
            assert np.abs(np.array(row["embedding"]) - np.array(other["embedding"])).max() <= 1e-6
    again = embed_dataset_ray(_items(dataset), out, EmbedSettings(), address=ray_address, workers=1)
    assert again["computed"] == 0 and again["rows"] == dataset[2]


# -- kills ----------------------------------------------------------------------------------------------------
def _ray_run(dataset, out: Path, address: str):
    root, manifest, _ = dataset
    return start_kface("embed", "--dataset", "csv", "--root", root, "--manifest", manifest, "--out", out,
                       "--ray", address, "--ray-workers", "2", "--shard-rows", "2", "-q")


def _wait_for_shards(process, out: Path, timeout: float = 120) -> int:
    from kface.embeddings.parquet import shard_files

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shards = len(shard_files(out))
        if shards:
            return shards
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.05)
    raise AssertionError("no shard was written in time")


def _actor_pids() -> list[int]:
    """The embedding actors of this test session's Ray instance: processes below this one (its raylet
    started them) titled as the actors, never another user's on the same machine."""
    parents, titles = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            titles[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    ours, grew = {os.getpid()}, True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in ours} - ours
        ours |= below
        grew = bool(below)
    return sorted(pid for pid in ours if titles.get(pid, "").startswith("ray::") and "EmbedActor" in titles[pid])


def _rows_now(out: Path) -> int:
    from kface.embeddings.parquet import summarize

    return summarize(out)["rows"]


def test_a_ray_worker_killed_mid_run_leaves_every_image_exactly_once(dataset, ray_address, tmp_path):
    out = tmp_path / "w.parquet"
    process = _ray_run(dataset, out, ray_address)
    try:
        _wait_for_shards(process, out)
        pids = _actor_pids()
        assert pids, "no embedding actor process found"
        written = _rows_now(out)
        os.kill(pids[0], signal.SIGKILL)
        assert process.poll() is None and written < dataset[2], "the kill landed after the run"
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert not Path(f"/proc/{pids[0]}").exists() or pids[0] not in _actor_pids()
    assert len(_by_path(out)) == dataset[2]


def test_a_driver_killed_with_kill_9_then_rerun_finishes_with_every_image_exactly_once(dataset, ray_address, tmp_path):
    out = tmp_path / "d.parquet"
    process = _ray_run(dataset, out, ray_address)
    try:
        _wait_for_shards(process, out)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    before = _rows_now(out)
    assert 0 < before < dataset[2], "the kill did not land mid-run"
    root, manifest, count = dataset
    result = kface("embed", "--dataset", "csv", "--root", root, "--manifest", manifest, "--out", out, "--ray",
                   ray_address, "--ray-workers", "2", "--json")
    assert result.returncode == 0, result.stderr
    import json

    assert json.loads(result.stdout)["computed"] == count - before
    assert len(_by_path(out)) == count


# -- bad environments -----------------------------------------------------------------------------------------
def test_an_unreachable_ray_address_is_one_error_line_within_30_s(dataset, tmp_path):
    root, manifest, _ = dataset
    started = time.monotonic()
    result = kface("embed", "--dataset", "csv", "--root", root, "--manifest", manifest, "--out",
                   tmp_path / "u.parquet", "--ray", "ray://127.0.0.1:1", timeout=60)
    assert time.monotonic() - started < 30
    assert_one_error(result, 2, "ray://127.0.0.1:1")
    assert not (tmp_path / "u.parquet").exists()


def test_without_ray_installed_the_error_names_the_package(dataset, tmp_path, monkeypatch):
    import sys

    from kface.cli import cli

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    root, manifest, _ = dataset
    result = CliRunner().invoke(cli, ["embed", "--dataset", "csv", "--root", str(root), "--manifest", str(manifest),
                                      "--out", str(tmp_path / "n.parquet"), "--ray", "local"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ray[data]" in errors[0], result.output


# -- stored vectors, used instead of recomputed -------------------------------------------------------------
def test_a_gallery_enrolled_from_stored_vectors_answers_search_as_one_enrolled_from_the_images(dataset, single,
                                                                                                tmp_path):
    import json

    root, manifest, _ = dataset
    from_vectors, from_images = tmp_path / "v.kgallery", tmp_path / "i.kgallery"
    enrolled = kface("enroll", "--gallery", from_vectors, "--embeddings", single, "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    assert json.loads(enrolled.stdout)["enrolled"] == IMAGES
    enrolled = kface("enroll", "--gallery", from_images, "--dataset", "csv", "--root", root, "--manifest", manifest,
                     "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    assert json.loads(enrolled.stdout)["enrolled"] == IMAGES
    probes = [root / row[0] for row in _manifest_rows(IMAGES)[1::10]]
    for probe in probes:
        answers = []
        for gallery in (from_vectors, from_images):
            searched = kface("search", probe, "--gallery", gallery, "--json")
            assert searched.returncode == 0, searched.stderr
            answer = json.loads(searched.stdout)
            for candidate in answer["candidates"]:
                candidate.pop("image")  # the row's dataset path against the file's path: the same photo
            answers.append(answer)
        assert answers[0] == answers[1]


def test_stored_vectors_are_used_and_only_the_rest_is_embedded(dataset, single):
    from kface.embeddings.stored import StoredVerifier
    from kface.scale.batches import EmbedSettings

    root, manifest, _ = dataset
    files = [str(root / row[0]) for row in _manifest_rows(IMAGES)[1:]]
    direct = EmbedSettings().verifier(cache=False, workers=0)
    stored = StoredVerifier(EmbedSettings().verifier(cache=False, workers=0), single)
    vectors, result = stored.embed(files + [str(root / "images" / "blank.png")], on_error="skip")
    assert stored.reused == IMAGES and stored.computed == 1  # the faceless photo has no stored vector
    assert list(result.errors) == [str(root / "images" / "blank.png")]
    expected, _ = direct.embed(files)
    assert np.abs(vectors[:IMAGES] - expected).max() <= 1e-6


def test_cluster_from_stored_vectors_groups_as_from_the_images(dataset, single, tmp_path):
    import json

    root, manifest, _ = dataset
    from_vectors = kface("cluster", "--embeddings", single, "--out", tmp_path / "v.csv", "--json")
    from_images = kface("cluster", "--dataset", "csv", "--root", root, "--manifest", manifest, "--out",
                        tmp_path / "i.csv", "--json")
    assert from_vectors.returncode == 0 and from_images.returncode == 0, from_vectors.stderr + from_images.stderr
    ours, theirs = json.loads(from_vectors.stdout), json.loads(from_images.stdout)
    assert ours["faces"] == theirs["faces"] == IMAGES
    assert (ours["clusters"], ours["bcubed"]) == (theirs["clusters"], theirs["bcubed"])


def test_training_reads_stored_vectors_as_its_frozen_features(dataset, single, tmp_path):
    from kface.scale.batches import EmbedSettings
    from kface.training.store import FeatureSpec, FeatureStore
    from kface.training.stored import import_stored_vectors

    root, _, _ = dataset
    files = [str(root / row[0]) for row in _manifest_rows(IMAGES)[1:]]
    backbone = EmbedSettings().verifier(cache=False).embedder.spec.name  # the default model's network
    store = FeatureStore(FeatureSpec(backbone=backbone, detector="auto"), folder=tmp_path)
    assert import_stored_vectors(store, single) == IMAGES
    features = store.features(files)
    assert features.computed == 0 and features.ok.all()
    expected, _ = EmbedSettings().verifier(cache=False, workers=0).embed(files)
    assert np.abs(features.features - expected).max() <= 1e-6
