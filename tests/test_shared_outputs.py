"""Shared files other than galleries, written by several real processes at once: the face and embedding
cache, the training feature store, and a Parquet embedding dataset that two drivers point at (the second
is refused with one line; the first finishes with every image exactly once)."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import lfw_people, link_tree
from fault_helpers import kface, start_kface

TIMEOUT_S = 600


@pytest.mark.slow
def test_four_embeds_at_once_share_one_new_cache_and_agree(tmp_path):
    images = [str(path) for _, paths in lfw_people(6, 2) for path in paths]
    cache = tmp_path / "cache"
    reference = tmp_path / "reference.npz"
    assert kface("embed", *images, "--out", reference, "--no-cache", "--quiet", timeout=TIMEOUT_S).returncode == 0
    outs = [tmp_path / f"out-{i}.npz" for i in range(4)]
    processes = [start_kface("embed", *images, "--out", out, "--cache-dir", cache, "--quiet") for out in outs]
    for process in processes:
        _, err = process.communicate(timeout=TIMEOUT_S)
        assert process.returncode == 0 and "cache:" not in err, err  # no writer gave up on the cache
    with np.load(reference) as expected:
        for out in outs:
            with np.load(out) as done:
                np.testing.assert_allclose(done["embeddings"], expected["embeddings"], atol=1e-6)
    connection = sqlite3.connect(next(cache.glob("cache-v*.sqlite")))
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        faces = connection.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
        embeddings = connection.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    finally:
        connection.close()
    assert faces == embeddings == len(images)  # one entry per image, whoever wrote it


FEATURES = """
import sys
import numpy as np
from kface.training.store import FeatureSpec, FeatureStore
paths = sys.argv[3:]
store = FeatureStore(FeatureSpec(fallback="whole-image"), device="cpu", folder=sys.argv[1])
found = store.features(paths)
np.save(sys.argv[2], found.features)
"""


@pytest.mark.slow
def test_three_processes_fill_one_feature_store_at_once_and_read_the_same_rows(tmp_path):
    from kface.training.store import FeatureSpec, FeatureStore

    images = [str(path) for _, paths in lfw_people(6, 2) for path in paths]
    shared = tmp_path / "store"
    # Overlapping sets: each process computes some rows another one is computing too.
    parts = [images[:8], images[4:], images[::2]]
    processes = [subprocess.Popen([sys.executable, "-c", FEATURES, str(shared), str(tmp_path / f"f{i}.npy"), *part],
                                  stderr=subprocess.PIPE, text=True) for i, part in enumerate(parts)]
    for process in processes:
        _, err = process.communicate(timeout=TIMEOUT_S)
        assert process.returncode == 0, err
    alone = FeatureStore(FeatureSpec(fallback="whole-image"), device="cpu", folder=tmp_path / "alone")
    expected = dict(zip(images, alone.features(images).features))
    for i, part in enumerate(parts):
        np.testing.assert_allclose(np.load(tmp_path / f"f{i}.npy"), [expected[p] for p in part], atol=1e-5)
    store = FeatureStore(FeatureSpec(fallback="whole-image"), device="cpu", folder=shared)
    index = json.loads((store.folder / "index.json").read_text())
    row_bytes = int(np.prod(store.shape)) * store.dtype.itemsize
    assert len(index["rows"]) == len(images)  # each image once
    assert (store.folder / "rows.bin").stat().st_size == len(images) * row_bytes
    again = store.features(images)
    assert again.computed == 0
    np.testing.assert_allclose(again.features, [expected[p] for p in images], atol=1e-5)


@pytest.mark.slow
def test_a_second_driver_on_one_parquet_output_is_refused_and_the_first_writes_each_image_once(tmp_path):
    import pyarrow.parquet as pq

    from kface.embeddings.parquet import WRITER_LOCK, shard_files

    people = lfw_people(10, 2)
    tree = link_tree(people, tmp_path / "people")
    out = tmp_path / "faces.parquet"
    args = ["embed", "--dataset", "folder", "--root", tree, "--out", out, "--no-cache", "--quiet"]
    first = start_kface(*args)
    lock = out / WRITER_LOCK
    deadline = time.monotonic() + TIMEOUT_S
    while first.poll() is None and not (lock.exists() and lock.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    second = kface(*args, timeout=TIMEOUT_S)
    assert first.poll() is None, "the first driver ended before the second started"
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert second.returncode == 2 and len(errors) == 1 and "Traceback" not in second.stderr, second.stderr
    assert "kface embed (pid" in errors[0] and str(out) in errors[0]
    _, err = first.communicate(timeout=TIMEOUT_S)
    assert first.returncode == 0, err
    paths = [path for shard in shard_files(out) for path in pq.read_table(shard, columns=["path"])["path"].to_pylist()]
    assert sorted(paths) == sorted({path for path in paths}) and len(paths) == sum(len(p) for _, p in people)
    rerun = kface(*args, "--json", timeout=TIMEOUT_S)  # once the first is done, the folder is free again
    assert rerun.returncode == 0 and json.loads(rerun.stdout)["computed"] == 0, rerun.stderr
