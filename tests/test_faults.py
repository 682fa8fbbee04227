"""Faults around the commands, in real processes: usage errors, unexpected exceptions, read-only output
and cache folders, corrupt cache rows and files, a locked cache, a full disk, crafted checkpoints.

Each gets one ``error:`` line (exit 2 for the user's input, 1 for the environment) or a ``note:`` and
a finished command; never a traceback, never a partial file under an output's name.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import default_embedding_size
from fault_helpers import EXAMPLES, assert_ok, assert_one_error, file_size_limit, kface, notes, read_only

from kface.util.cache import CacheSetting

IMAGES = [EXAMPLES / "obama.jpg", EXAMPLES / "biden.jpg"]


@pytest.fixture
def scratch(tmp_path):
    return tmp_path


def embed(out, cache, **options):
    return kface("embed", *IMAGES, "--out", out, "--cache-dir", cache, "--quiet", **options)


def embeddings(path) -> np.ndarray:
    with np.load(path) as data:
        return data["embeddings"]


# -- the last-resort handler ---------------------------------------------------------------------
@pytest.mark.parametrize("args, fragment", [
    (["--bogus"], "No such option '--bogus'"),
    (["embed"], "Missing option '--out'"),
    (["train", "--epochs", "many", "--out", "x"], "'--epochs'"),
    (["verify", "--detector", "sideways", "a.jpg", "b.jpg"], "'--detector'"),
])
def test_usage_errors_are_one_error_line_with_exit_2(args, fragment):
    result = kface(*args)
    line = assert_one_error(result, 2, fragment, "--help")
    assert "Usage:" not in result.stderr and line.startswith("error: ")


def test_a_bare_group_prints_its_help():
    for args in ([], ["gallery"]):
        result = kface(*args)
        assert result.returncode == 0 and result.stdout.startswith("Usage: kface") and not result.stderr


# A command that fails the way kface's own code never should: the handler still answers with one line.
FAILING_CLI = textwrap.dedent("""
    import errno, sqlite3, sys
    import click
    from kface.cli.errors import run

    @click.group()
    def cli():
        pass

    @cli.command()
    @click.argument("kind")
    def fail(kind):
        if kind == "bug":
            raise ValueError("an unexpected value")
        if kind == "permission":
            raise PermissionError(errno.EACCES, "Permission denied", "/root/secret.txt")
        if kind == "disk":
            raise OSError(errno.ENOSPC, "No space left on device", "/data/out.npz")
        if kind == "database":
            raise sqlite3.OperationalError("database is locked")

    run(cli, prog_name="kface")
""")


@pytest.mark.parametrize("kind, fragments", [
    ("bug", ["internal error (ValueError: an unexpected value)", "KFACE_DEBUG=1"]),
    ("permission", ["/root/secret.txt", "Permission denied"]),
    ("disk", ["/data/out.npz", "No space left on device", "free some space"]),
    ("database", ["database error (database is locked)", "--no-cache"]),
])
def test_any_exception_is_one_error_line_with_exit_1(kind, fragments):
    result = subprocess.run([sys.executable, "-c", FAILING_CLI, "fail", kind], capture_output=True, text=True,
                            timeout=60)
    assert_one_error(result, 1, *fragments)


def test_kface_debug_shows_the_traceback_then_the_error_line():
    result = subprocess.run([sys.executable, "-c", FAILING_CLI, "fail", "bug"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "KFACE_DEBUG": "1"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ValueError: an unexpected value" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: internal error (ValueError")


# -- folders and disks -----------------------------------------------------------------------------
def test_a_read_only_output_folder_is_one_error_naming_the_output(scratch):
    folder = scratch / "outputs"
    folder.mkdir()
    out = folder / "faces.npz"
    with read_only(folder):
        result = embed(out, scratch / "cache")
    assert_one_error(result, 1, str(out), "choose a folder you can write to")
    assert list(folder.iterdir()) == []


def test_make_pairs_into_a_read_only_folder_is_one_error(scratch, tmp_path):
    from conftest import lfw_people, link_tree

    tree = link_tree(lfw_people(30, 3), scratch / "tree")
    folder = scratch / "pairs"
    folder.mkdir()
    with read_only(folder):
        result = kface("make-pairs", "--dataset", "folder", "--root", tree, "--ratio", "1:1", "--pairs", "40",
                       "--out", folder / "p.csv", "--quiet")
    assert_one_error(result, 1, str(folder / "p.csv"))
    assert list(folder.iterdir()) == []


def test_a_read_only_cache_folder_is_a_note_and_the_command_finishes(scratch):
    cache = scratch / "cache"
    assert_ok(embed(scratch / "first.npz", cache))
    out = scratch / "second.npz"
    with read_only(cache):
        result = embed(out, cache)
    assert_ok(result)
    assert any("cache" in line for line in notes(result.stderr)), result.stderr
    np.testing.assert_allclose(embeddings(out), embeddings(scratch / "first.npz"), atol=1e-6)


def test_corrupt_cache_rows_are_misses_and_are_replaced(scratch):
    cache = scratch / "cache"
    first = scratch / "first.npz"
    assert_ok(embed(first, cache))
    database = cache / "cache-v1.sqlite"
    with sqlite3.connect(database) as db:
        db.execute("UPDATE embeddings SET value = x'504b0304deadbeef'")  # a zip header, then nothing
        db.execute("UPDATE faces SET value = x'00'")
    second = scratch / "second.npz"
    result = embed(second, cache)
    assert_ok(result)
    np.testing.assert_allclose(embeddings(second), embeddings(first), atol=1e-6)
    from kface.util.cache import unpack

    with sqlite3.connect(database) as db:
        for table in ("faces", "embeddings"):
            blobs = [blob for (blob,) in db.execute(f"SELECT value FROM {table}")]
            assert len(blobs) == 2 and all(unpack(blob) for blob in blobs)  # rewritten whole


def test_a_cache_file_that_is_not_a_database_is_a_note(scratch):
    cache = scratch / "cache"
    cache.mkdir()
    (cache / "cache-v1.sqlite").write_bytes(b"this is not an SQLite file" * 100)
    out = scratch / "faces.npz"
    result = embed(out, cache)
    assert_ok(result)
    assert any("carrying on without the cache" in line for line in notes(result.stderr)), result.stderr
    assert embeddings(out).shape == (2, default_embedding_size())


def test_a_full_disk_is_one_error_naming_the_output_and_leaves_nothing(scratch):
    # RLIMIT_FSIZE: every file this process writes stops at 1 KiB, the cache's too (a note), then the
    # output (the error). Works without privileges; a real small file system is tried below.
    folder = scratch / "outputs"
    folder.mkdir()
    out = folder / "faces.npz"
    result = embed(out, scratch / "cache", preexec_fn=file_size_limit(1024))
    assert_one_error(result, 1, str(out), "File too large")
    assert any("cache" in line for line in notes(result.stderr)), result.stderr
    assert list(folder.iterdir()) == []  # neither the output nor its temp file


@pytest.fixture
def small_file_system(scratch):
    """A 1 MiB tmpfs, where the machine lets this process mount one (root with CAP_SYS_ADMIN)."""
    mount_point = scratch / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not permitted'}); "
                    f"the RLIMIT_FSIZE test covers a full disk")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_tmpfs_is_one_error_naming_the_output(small_file_system, scratch):
    handle = os.open(small_file_system / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # fill it: writes stop with ENOSPC
        while os.write(handle, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(handle)
    out = small_file_system / "faces.npz"
    result = embed(out, small_file_system / "cache")
    assert_one_error(result, 1, str(out), "No space left on device")
    assert sorted(path.name for path in small_file_system.iterdir()) in (["filler"], ["cache", "filler"])


# -- the cache, in this process ------------------------------------------------------------------
def test_a_locked_cache_is_a_note_and_never_hides_the_real_error(scratch, monkeypatch, caplog):
    from PIL import Image

    from kface.embeddings.embedder import Embedder
    from kface.errors import NoFaceError
    from kface.util import cache as cache_module

    monkeypatch.setattr(cache_module, "LOCK_TIMEOUT_S", 0.2)
    folder = scratch / "cache"
    cache_module.Cache(folder).close()
    holder = sqlite3.connect(folder / "cache-v1.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing for longer than the lock timeout
    blank = scratch / "blank.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(blank)
    try:
        embedder = Embedder("dlib-resnet", detector="dlib", cache=CacheSetting(folder=folder))
        with caplog.at_level(logging.INFO, logger="kface"), pytest.raises(NoFaceError):
            embedder.embed([str(blank)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert any("cannot write" in record.getMessage() for record in caplog.records), caplog.text


# -- checkpoints -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    """A real model.pt from a short run on made-up features."""
    from test_train import synthetic_data

    from kface.training.run import TrainConfig, fit

    out = tmp_path_factory.mktemp("crafted") / "run"
    fit(TrainConfig(pairs="synthetic.csv", out=str(out), epochs=2, device="cpu"), synthetic_data())
    return out / "model.pt"


@pytest.mark.parametrize("tamper, fragment", [
    (lambda c: c["head"].update(embedding_size=10 ** 9), "head.embedding_size"),
    (lambda c: c["head"].update(dims=-3), "head.dims"),
    (lambda c: c.pop("head"), "'head' missing"),
    (lambda c: c["features"].update(shape=[10 ** 6, 10 ** 6]), "features.shape"),
    (lambda c: c["threshold"].update(value=float("nan")), "threshold.value"),
    (lambda c: c["head"]["state"].update(extra="not a tensor"), "head.state"),
])
def test_a_crafted_checkpoint_is_refused_before_any_model_is_built(trained_model, tmp_path, tamper, fragment):
    import torch

    from kface.errors import InputError
    from kface.training.checkpoints import load_checkpoint

    checkpoint = torch.load(trained_model, weights_only=True)
    tamper(checkpoint)
    crafted = tmp_path / "model.pt"
    torch.save(checkpoint, crafted)
    with pytest.raises(InputError, match="damaged or foreign kface-model checkpoint") as error:
        load_checkpoint(crafted)
    assert fragment in str(error.value)


def test_a_checkpoint_whose_tensors_do_not_fit_is_one_clear_error(trained_model, tmp_path):
    import torch

    from kface.errors import InputError
    from kface.training.checkpoints import load_checkpoint, pair_model_from_checkpoint

    checkpoint = torch.load(trained_model, weights_only=True)
    state = checkpoint["head"]["state"]
    name = next(key for key, value in state.items() if value.ndim == 2)
    state[name] = torch.zeros(3, 5)
    crafted = tmp_path / "model.pt"
    torch.save(checkpoint, crafted)
    with pytest.raises(InputError, match="does not fit the model"):
        pair_model_from_checkpoint(load_checkpoint(crafted))


def test_a_crafted_train_state_is_refused_on_resume(trained_model, tmp_path):
    import torch

    state = torch.load(trained_model.parent / "last.pt", weights_only=True)
    state["model"] = "weights"
    run = tmp_path / "run"
    run.mkdir()
    torch.save(state, run / "last.pt")
    result = kface("train", "--out", run, "--resume")
    assert_one_error(result, 2, "last.pt", "'model' missing or not a dict")


@pytest.mark.parametrize("text, fragment", [
    (b"\xff\xfe\x00\x81binary", "not a text file"),
    (b"1 1\nAnn 1 x\nBob 1 Cid 2\n", "image numbers must be whole numbers"),
])
def test_an_lfw_pairs_file_that_does_not_parse_is_an_input_error(tmp_path, text, fragment):
    from kface.errors import InputError
    from kface.evaluation.lfw import read_lfw_pairs

    (tmp_path / "images").mkdir()
    (tmp_path / "pairs.txt").write_bytes(text)
    with pytest.raises(InputError, match=fragment):
        read_lfw_pairs(tmp_path)


def test_train_feature_store_leaves_the_cache_with_no_cache_or_an_unwritable_cache(tmp_path, monkeypatch, caplog):
    from kface.training.data import _feature_store_folder

    cache = tmp_path / "cache"
    cache.mkdir()
    assert _feature_store_folder(CacheSetting(folder=cache)) is None  # the usual place: <cache>/features
    folder = _feature_store_folder(CacheSetting(enabled=False, folder=cache))
    assert folder.is_dir() and cache not in folder.parents
    (cache / "features").rmdir()
    with read_only(cache), caplog.at_level(logging.WARNING, logger="kface"):
        folder = _feature_store_folder(CacheSetting(folder=cache))
    assert folder.is_dir() and cache not in folder.parents
    assert "cannot write the feature store" in caplog.text
