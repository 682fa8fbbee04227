"""kill -9 at seeded random moments of real ``kface`` processes, then a rerun or ``--resume``: the result
equals an uninterrupted run's, and no partial file is ever left under an output's final name.

Covers ``train`` (with ``--dataset``: a resume never samples its pairs.csv again, even when the dataset
grew), whose moments are drawn from its own uninterrupted duration, measured in the same test, so they
land in every phase (start-up, features, epochs, commit) on a fast or a slow machine. ``make-pairs``,
``embed`` and ``enroll`` finish in about a second, where a moment drawn at random lands before the output
exists or after it is whole; they are killed inside their writing phase instead (tests/paused_writer.py
holds them there), and each test fails unless the kill landed there and the process died of it.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from conftest import LFW, lfw_people, link_tree, require
from fault_helpers import assert_ok, kface, kill_mid_write, start_kface

pytestmark = pytest.mark.slow
KILLS = 2  # per command: each kill costs a start and a rerun of a process (torch's import alone is ~3 s)
TRAIN_ARGS = ["--dataset", "folder", "--dataset-pairs", "240", "--ratio", "1:1", "--split", "0.6:0.2:0.2",
              "--epochs", "40", "--upsample", "0", "--workers", "0", "--device", "cpu", "--quiet"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kill_at(args: list, moment: float, after: Callable[[], bool] = lambda: True) -> None:
    """Start ``kface ARGS`` and SIGKILL it ``moment`` seconds after ``after()`` first holds (if it is
    still running then)."""
    process = start_kface(*args)
    while not after() and process.poll() is None:
        time.sleep(0.005)
    try:
        process.wait(timeout=moment)
    except subprocess.TimeoutExpired:  # still running, as meant
        process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)


def timed(args: list) -> float:
    started = time.perf_counter()
    assert_ok(kface(*args))
    return time.perf_counter() - started


def moments(duration: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return sorted(rng.uniform(0.05, 1.0) * duration for _ in range(KILLS))


def hidden_temps(folder: Path) -> list[str]:
    """Temp files left in ``folder`` (a run folder's lock file is not one)."""
    from kface.training.config import RUN_LOCK

    return sorted(path.name for path in folder.glob(".*") if path.is_file() and path.name != RUN_LOCK)


# -- train ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return link_tree(lfw_people(24, 4), tmp_path_factory.mktemp("kill-tree") / "people")


@pytest.fixture(scope="module")
def reference_train(tree, tmp_path_factory) -> tuple[Path, float, float]:
    """An uninterrupted run; how long one takes once the feature store is full (as it is after it); and
    how long it ran after its first commit (epoch 0's last.pt): the time its epochs take."""
    run = tmp_path_factory.mktemp("kill-reference") / "run"
    started = time.perf_counter()
    process = start_kface("train", "--root", tree, "--out", run, *TRAIN_ARGS, "--json")
    while not (run / "last.pt").exists() and process.poll() is None:
        time.sleep(0.005)
    committed = time.perf_counter()
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    ended = time.perf_counter()
    return run, ended - started - json.loads(stdout)["timing"]["features_s"], ended - committed


def check_whole(run: Path, reference: Path) -> None:
    """Whatever exists under a final name is a whole file."""
    from kface.training.checkpoints import load_checkpoint

    if (run / "last.pt").exists():
        load_checkpoint(run / "last.pt", expected="kface-train-state")
    if (run / "model.pt").exists():
        load_checkpoint(run / "model.pt")
    if (run / "history.json").exists():
        json.loads((run / "history.json").read_text())
    if (run / "pairs.csv").exists():
        assert sha256(run / "pairs.csv") == sha256(reference / "pairs.csv")


def same_run(run: Path, reference: Path) -> None:
    import torch

    done, expected = (torch.load(path / "last.pt", weights_only=True) for path in (run, reference))
    assert done["epoch"] == expected["epoch"] == 40
    for name, weight in expected["model"].items():
        assert torch.allclose(done["model"][name], weight, rtol=0, atol=1e-6), name
    assert ([r["val_loss"] for r in done["history"]]
            == pytest.approx([r["val_loss"] for r in expected["history"]], abs=1e-6))
    model, expected_model = (torch.load(path / "model.pt", weights_only=True) for path in (run, reference))
    assert model["epoch"] == expected_model["epoch"]
    for name, weight in expected_model["head"]["state"].items():
        assert torch.allclose(model["head"]["state"][name], weight, rtol=0, atol=1e-6), name
    assert sha256(run / "pairs.csv") == sha256(reference / "pairs.csv")
    assert hidden_temps(run) == []


def test_train_killed_at_random_moments_resumes_to_the_uninterrupted_result(tree, reference_train, tmp_path):
    reference, duration, epochs_s = reference_train
    # One kill anywhere in the run (start-up, features, epoch 0 mostly), one while epochs are being
    # trained and committed: after the first last.pt, within the time the epochs take.
    schedule = [(moments(duration, seed=20)[0], "start"), (moments(epochs_s, seed=21)[0], "epochs")]
    for round_, (moment, phase) in enumerate(schedule):
        run = tmp_path / f"run-{round_}"
        args = ["train", "--root", tree, "--out", run, *TRAIN_ARGS]
        kill_at(args, moment, after=(run / "last.pt").exists if phase == "epochs" else lambda: True)
        check_whole(run, reference)
        if phase == "epochs":
            assert (run / "last.pt").exists()
        if (run / "last.pt").exists():
            before = (sha256(run / "pairs.csv"), (run / "pairs.csv").stat().st_mtime_ns)
            # Someone joins the dataset meanwhile: sampling again would draw other pairs (and then refuse
            # them as changed); the resume reads the run's own pairs.csv instead.
            name, images = lfw_people(25, 4)[-1]
            link_tree([(name, images)], tree)
            try:
                assert_ok(kface(*args, "--resume"))
            finally:
                shutil.rmtree(tree / name)
            assert (sha256(run / "pairs.csv"), (run / "pairs.csv").stat().st_mtime_ns) == before
        else:
            assert_ok(kface(*args))  # killed before the first commit: a fresh start is accepted
        same_run(run, reference)


def test_a_second_train_into_a_running_runs_folder_refuses_and_leaves_the_first_intact(tree, reference_train,
                                                                                      tmp_path):
    from kface.training.config import RUN_LOCK

    reference, _, _ = reference_train
    run = tmp_path / "run"
    args = ["train", "--root", tree, "--out", run, *TRAIN_ARGS]
    first = start_kface(*args)
    lock = run / RUN_LOCK
    while first.poll() is None and not (lock.exists() and lock.read_text()):  # the first holds the folder
        time.sleep(0.01)
    second = kface(*args)
    assert first.poll() is None, "the first run ended before the second started"
    error = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert second.returncode == 2 and len(error) == 1 and "Traceback" not in second.stderr, second.stderr
    assert "kface train (pid" in error[0] and str(run) in error[0]
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    same_run(run, reference)  # the first's outputs are whole and its own


# -- make-pairs ------------------------------------------------------------------------------------
def test_make_pairs_killed_while_writing_leaves_nothing_partial(tmp_path):
    images = require(LFW) / "images"
    args = ["make-pairs", "--dataset", "folder", "--root", images, "--ratio", "1:1", "--pairs", "20000", "--quiet"]
    reference = tmp_path / "reference" / "pairs.csv"
    assert_ok(kface(*args, "--out", reference))
    out = tmp_path / "killed" / "pairs.csv"
    kill_mid_write([*args, "--out", out], tmp_path / "writing")
    assert hidden_temps(out.parent), "no temp file: the kill did not land while the output was written"
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert_ok(kface(*args, "--out", out))
    for name in ("pairs.csv", "pairs.json"):
        assert sha256(out.parent / name) == sha256(reference.parent / name), name


# -- embed ---------------------------------------------------------------------------------------------
def test_embed_killed_while_writing_reruns_to_the_same_embeddings(tmp_path):
    images = [path for _, paths in lfw_people(8, 2) for path in paths]
    reference = tmp_path / "reference.npz"
    assert_ok(kface("embed", *images, "--out", reference, "--cache-dir", tmp_path / "cache", "--quiet"))
    out = tmp_path / "killed" / "faces.npz"
    args = ["embed", *images, "--out", out, "--cache-dir", tmp_path / "cache", "--quiet"]
    kill_mid_write(args, tmp_path / "writing")
    assert hidden_temps(out.parent), "no temp file: the kill did not land while the output was written"
    assert not out.exists()
    assert_ok(kface(*args))
    with np.load(out) as done, np.load(reference) as expected:
        np.testing.assert_allclose(done["embeddings"], expected["embeddings"], atol=1e-6)
        assert list(done["paths"]) == list(expected["paths"])


# -- enroll --------------------------------------------------------------------------------------------
def gallery_contents(gallery: Path, probe: Path) -> tuple[list, list]:
    """(identity, image count) per person, and a search's candidates: the rows and the index agree."""
    from kface.galleries import Gallery

    with Gallery.open(gallery) as opened:
        people = [(row["identity"], row["images"]) for row in opened.identities()]
        candidates = [(row["identity"], round(row["distance"], 5), row["image"])
                      for row in opened.search(str(probe)).to_dict()["candidates"]]
    return people, candidates


def test_enroll_killed_inside_a_commit_keeps_the_committed_batches_and_reruns_to_the_same_gallery(tmp_path):
    from kface.galleries.store import GalleryStore

    people = link_tree(lfw_people(10, 2), tmp_path / "people")
    probe = sorted((people / sorted(p.name for p in people.iterdir())[0]).iterdir())[0]
    args = ["enroll", "--dataset", "folder", "--root", people, "--model", "dlib", "--detector", "dlib",
            "--batch", "4", "--quiet", "--cache-dir", tmp_path / "cache"]
    reference = tmp_path / "reference.kgallery"
    assert_ok(kface(*args, "--gallery", reference))
    expected = gallery_contents(reference, probe)
    gallery = tmp_path / "killed" / "faces.kgallery"
    # Killed inside its second batch's transaction: rows inserted, not committed.
    kill_mid_write([*args, "--gallery", gallery], tmp_path / "writing", hook="commit:2")
    store = GalleryStore.open(gallery)
    try:
        assert store.counts()[1] == 4, "the gallery holds more (or less) than the one committed batch"
        assert store.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        store.close()
    assert_ok(kface(*args, "--gallery", gallery))  # finishes what the killed run had not committed
    assert gallery_contents(gallery, probe) == expected
