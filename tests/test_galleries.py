"""Galleries without photos: the SQLite store, the faiss index kept from it, open-set figures, clustering.

Vectors here are synthetic (well-separated people), so these tests need no face data; the commands on
real photos and the fault tests with real processes are in test_galleries_cli.py.
"""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from kface.errors import InputError
from kface.evaluation.identification import IdentificationProtocol, split_identification
from kface.galleries import Gallery
from kface.galleries import index as gallery_index
from kface.galleries.clustering import bcubed, cluster
from kface.galleries.openset import fnir, identification_rates, ranks_of_mates, threshold_at_fpir
from kface.galleries.store import GalleryStore, ModelIdentity, NewImage

DIM = 16
MODEL = ModelIdentity("test@v1", "dlib", "dlib-resnet", "euclidean", 0.6, DIM)


def people(count: int, images: int, seed: int = 0, spread: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """``count`` people's centres far apart, ``images`` noisy vectors each: (vectors, person index)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, size=(count, DIM)).astype(np.float32)
    labels = np.repeat(np.arange(count), images)
    return (centres[labels] + rng.normal(0, spread, size=(len(labels), DIM))).astype(np.float32), labels


def make_gallery(path, count=20, images=3, model=MODEL) -> tuple[Gallery, np.ndarray, np.ndarray]:
    vectors, labels = people(count, images)
    store = GalleryStore.create(path, model, (0.5, "test"))
    store.add([NewImage(f"p{label}", f"{i:064x}", f"img{i}.jpg", "hog", vectors[i]) for i, label in enumerate(labels)],
              model.key)
    return Gallery(store), vectors, labels


def test_search_finds_the_nearest_person_and_says_no_one_for_a_stranger(tmp_path):
    gallery, vectors, labels = make_gallery(tmp_path / "g.kgallery")
    answers = gallery.search_vectors(vectors[[0, 10, 31]] + 0.01, top=3)
    assert [a.match for a in answers] == ["p0", "p3", "p10"]
    assert all(len(a.candidates) == 3 for a in answers)
    assert all(a.candidates[0].distance < a.candidates[1].distance for a in answers)
    assert answers[0].gallery_images == 60
    stranger = gallery.search_vectors(np.full((1, DIM), 5.0, np.float32))[0]
    assert stranger.match is None and stranger.candidates


def test_index_file_is_written_reused_and_rebuilt_when_deleted_corrupt_or_stale(tmp_path, caplog):
    path = tmp_path / "g.kgallery"
    gallery, vectors, _ = make_gallery(path)
    expected = gallery.search_vectors(vectors[:5])
    index_file = gallery_index.index_path(path)
    assert index_file.is_file()
    header = index_file.read_bytes().split(b"\n", 1)[0]
    assert b'"count": 60' in header

    index_file.unlink()  # deleted
    fresh = Gallery(GalleryStore.open(path))
    assert [a.to_dict() for a in fresh.search_vectors(vectors[:5])] == [a.to_dict() for a in expected]
    assert index_file.is_file()

    data = bytearray(index_file.read_bytes())  # corrupt: flip bytes in the faiss body
    data[-40:-20] = b"\xff" * 20
    index_file.write_bytes(bytes(data))
    caplog.set_level("INFO", logger="kface")
    again = Gallery(GalleryStore.open(path))
    assert [a.to_dict() for a in again.search_vectors(vectors[:5])] == [a.to_dict() for a in expected]
    assert "damaged index file" in caplog.text
    assert gallery_index.VectorIndex.load(index_file).count == 60

    newcomer = np.full(DIM, 3.0, np.float32)  # stale: another process enrolls after the file was written
    GalleryStore.open(path).add([NewImage("late", "f" * 64, "late.jpg", "hog", newcomer)], MODEL.key)
    assert again.search_vectors(newcomer[None, :])[0].match == "late"


def test_approximate_index_past_the_size_threshold(tmp_path, monkeypatch):
    monkeypatch.setattr(gallery_index, "APPROXIMATE_FROM", 100)
    gallery, vectors, labels = make_gallery(tmp_path / "g.kgallery", count=60, images=4)
    answers = gallery.search_vectors(vectors + 0.01, top=1)
    assert gallery._index.kind == "ivf"
    assert np.mean([a.match == f"p{label}" for a, label in zip(answers, labels)]) >= 0.99


def test_remove_deletes_the_embeddings_from_the_file_and_the_index(tmp_path):
    path = tmp_path / "g.kgallery"
    gallery, vectors, labels = make_gallery(path)
    gallery.search_vectors(vectors[:1])
    secret = [vectors[i].tobytes() for i in np.flatnonzero(labels == 4)]
    assert gallery.remove("p4") == 3
    gallery.close()
    remaining = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert not any(blob in remaining for blob in secret)
    reopened = Gallery(GalleryStore.open(path))
    assert "p4" not in [p["identity"] for p in reopened.identities()]
    assert reopened.search_vectors(vectors[labels == 4][:1])[0].candidates[0].identity != "p4"
    with pytest.raises(InputError, match="no identity 'p4'"):
        reopened.remove("p4")


def test_not_a_gallery_and_empty_gallery_are_input_errors(tmp_path):
    junk = tmp_path / "junk.kgallery"
    junk.write_bytes(b"not a database at all")
    with pytest.raises(InputError, match="not a kface gallery"):
        GalleryStore.open(junk)
    other = tmp_path / "other.sqlite"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE things (x)")
    connection.commit()
    connection.close()
    with pytest.raises(InputError, match="not a kface gallery"):
        GalleryStore.open(other)
    with pytest.raises(InputError, match="no such gallery"):
        GalleryStore.open(tmp_path / "missing.kgallery")
    empty = Gallery(GalleryStore.create(tmp_path / "empty.kgallery", MODEL, (0.5, "test")))
    with pytest.raises(InputError, match="empty"):
        empty.search_vectors(np.zeros((1, DIM), np.float32))


def test_another_model_is_refused(tmp_path):
    gallery, _, _ = make_gallery(tmp_path / "g.kgallery")
    with pytest.raises(InputError, match="different vectors: use --model"):
        gallery._check_model(ModelIdentity("korean@abc", "korean", "korean-v1", "euclidean", 0.5, DIM))
    # the same model name with another file (a shipped model rebuilt since the gallery was made)
    rebuilt = ModelIdentity(f"{MODEL.name}@0123456789abcdef", MODEL.name, MODEL.backbone, "euclidean", 0.5, DIM)
    with pytest.raises(InputError, match="another version of model .*enroll the photos again"):
        gallery._check_model(rebuilt)


def test_enrolment_of_known_content_is_skipped(tmp_path):
    gallery, vectors, _ = make_gallery(tmp_path / "g.kgallery", count=2, images=1)
    again = gallery.store.add([NewImage("p0", f"{0:064x}", "img0.jpg", "hog", vectors[0])], MODEL.key)
    assert (again.added, again.already) == (0, 1) and gallery.store.counts() == (2, 2)
    # the same content under another name is a conflict, decided inside the write transaction
    other = gallery.store.add([NewImage("p9", f"{0:064x}", "img0.jpg", "hog", vectors[0])], MODEL.key)
    assert other.added == 0 and other.conflicts == {f"{0:064x}": "p0"} and gallery.store.counts() == (2, 2)


def test_threshold_at_fpir_and_fnir():
    nonmated = np.array([0.9, 0.5, 0.7, 0.8, 0.6, 1.0, 1.1, 1.2, 1.3, 1.4])
    assert threshold_at_fpir(nonmated, 0.1) == pytest.approx(0.6, abs=1e-9) and threshold_at_fpir(nonmated, 0.1) < 0.6
    assert np.mean(nonmated <= threshold_at_fpir(nonmated, 0.1)) == pytest.approx(0.1)
    assert threshold_at_fpir(nonmated, 0.01) < 0.5  # no false match allowed at all
    ranks = np.array([1, 1, 2, 1])
    best = np.array([0.3, 0.7, 0.2, 0.4])
    assert fnir(ranks, best, 0.5) == pytest.approx(0.5)  # one too far, one not at rank 1
    figures = identification_rates(ranks, best, nonmated, 0.6, fpir=0.1)
    assert figures["rank1"] == 0.75 and figures["rank5"] == 1.0
    assert figures["fpir_achieved"] <= 0.1


def test_ranks_of_mates():
    distances = np.array([[0.1, 0.5, 0.3], [0.4, 0.2, 0.9], [0.8, 0.7, 0.6]])
    gallery_labels = np.array([0, 1, 0])
    ranks, best = ranks_of_mates(distances, gallery_labels, np.array([0, 0, 7]))
    assert ranks.tolist() == [1, 2, 3] and best.tolist() == [0.1, 0.2, 0.6]


@pytest.mark.parametrize("method", ["chinese-whispers", "components", "agglomerative"])
def test_clustering_separates_people(method):
    from kface.distances import get_distance

    vectors, labels = people(12, 5, seed=1)
    found = cluster(vectors, get_distance("euclidean"), 0.6, method, seed=0)
    assert bcubed(found, labels)["f1"] == pytest.approx(1.0)
    assert np.array_equal(found, cluster(vectors, get_distance("euclidean"), 0.6, method, seed=0))


def test_bcubed_penalises_merges_and_splits():
    truth = np.array([0, 0, 1, 1])
    assert bcubed(np.array([0, 0, 0, 0]), truth)["precision"] == pytest.approx(0.5)
    assert bcubed(np.array([0, 1, 2, 3]), truth)["recall"] == pytest.approx(0.5)


def test_identification_split_is_seeded_and_disjoint():
    from kface.datasets import DatasetIndex
    from kface.datasets.records import Record

    records = [Record(f"p{p}/{a}{i}.jpg", f"p{p}",
                      {"age_class": a}) for p in range(30) for a in "abc" for i in range(2)]
    records += [Record(f"q{p}/a0.jpg", f"q{p}", {"age_class": "a"}) for p in range(5)]  # one age class only
    index = DatasetIndex.from_records("csv", __import__("pathlib").Path("/"), records)
    protocol = IdentificationProtocol(unenrolled_share=0.2, seed=3)
    split = split_identification(index, protocol)
    again = split_identification(index, protocol)
    assert np.array_equal(split.gallery, again.gallery) and np.array_equal(split.nonmated, again.nonmated)
    ages = index.attributes["age_class"]
    assert {ages[r] for r in split.gallery} == {"a"}  # youngest class
    assert not {ages[r] for r in split.mated} & {"a"}
    codes = index.identity_codes
    assert not set(codes[split.gallery]) & set(codes[split.nonmated])
    assert set(codes[split.mated]) <= set(codes[split.gallery])
    assert len(set(codes[split.gallery])) == 24 and len(set(codes[split.nonmated])) == 11


def test_an_index_of_an_older_state_never_replaces_the_file_and_one_from_before_a_removal_is_deleted(tmp_path):
    """Two writers (two connections, as two processes): the index file only ever holds the committed state;
    an index made before someone's removal (it holds their vectors) is never written, and such a file
    found later is deleted."""
    path = tmp_path / "g.kgallery"
    gallery, vectors, _ = make_gallery(path)
    before = gallery.refresh_index(save=True)  # this writer's index: before the removal below
    other = Gallery(GalleryStore.open(path))
    assert other.remove("p0") == 3
    header = gallery_index.read_header(gallery_index.index_path(path))
    assert (header["epoch"], header["count"]) == (1, 57)
    gallery._index = before
    gallery._save_index()  # refused: not the committed state
    assert gallery_index.read_header(gallery_index.index_path(path))["count"] == 57
    before.save(gallery_index.index_path(path))  # as if written by a writer that did not check
    gallery._save_index()
    assert not gallery_index.index_path(path).exists()  # it held p0's vectors
    answer = gallery.search_vectors(vectors[:1] + 0.01)[0]  # the next search rebuilds it without p0
    assert answer.candidates[0].identity != "p0" and answer.gallery_images == 57
    assert gallery_index.read_header(gallery_index.index_path(path))["count"] == 57
    other.close()
