"""Many writers on one gallery, with real processes: enrolments at once on a gallery that does not exist
yet, enrolments and removals interleaved, the server and the command line writing together, a writer
killed with kill -9. Every write that reported success is in the gallery afterwards, the final gallery is
the serial replay of the audit log, and the index file agrees with the SQLite store.

Faces come from the session cache (embedded once in this process), so each ``kface enroll`` process only
loads the model and writes."""
from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import lfw_people, link_tree
from serve_helpers import post

KFACE = [sys.executable, "-m", "kface"]
FACE_OPTIONS = ["--fallback", "whole-image"]
TIMEOUT_S = 600


def warm_cache(people) -> None:
    """Embed every photo once in this process, so the writers below find them in the shared cache."""
    from kface.api import FaceOptions, load_verifier

    verifier = load_verifier(options=FaceOptions(fallback="whole-image"))
    verifier.embed([str(image) for _, images in people for image in images])
    verifier.embedder.close()


def enroll_command(gallery: Path, name: str, images) -> list[str]:
    return KFACE + ["enroll", "--gallery", str(gallery), *map(str, images), "--identity", name, "-q", "--json",
                    "--workers", "0", *FACE_OPTIONS]


def start(commands: list[list[str]]) -> list[subprocess.Popen]:
    return [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for command in commands]


def finish(processes: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each process, in order."""
    results = []
    for process in processes:
        out, err = process.communicate(timeout=TIMEOUT_S)
        results.append((process.returncode, out, err))
    return results


def gallery_rows(path: Path) -> dict[str, set[str]]:
    """identity → the sha256 of each of its images, read straight from the SQLite file."""
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = connection.execute("SELECT identities.name, images.sha256 FROM identities "
                                  "LEFT JOIN images ON images.identity_id = identities.id").fetchall()
    finally:
        connection.close()
    people: dict[str, set[str]] = {}
    for name, sha in rows:
        people.setdefault(name, set())
        if sha is not None:
            people[name].add(sha)
    return people


def assert_index_agrees(path: Path) -> None:
    """The index file beside ``path`` is of the store's committed state and holds exactly its image ids."""
    import faiss

    from kface.galleries.index import VectorIndex, index_path
    from kface.galleries.store import GalleryStore

    store = GalleryStore.open(path)
    try:
        ids, _ = store.vectors()
        version, created = store.version(), store.meta()["created"]
    finally:
        store.close()
    index = VectorIndex.load(index_path(path))
    assert index is not None, "no readable index file beside the gallery"
    assert (index.generation, index.epoch, index.gallery) == (*version, created), "the index file is stale"
    assert sorted(faiss.vector_to_array(index.faiss_index.id_map).tolist()) == sorted(ids.tolist())


def sha_of(image: Path) -> str:
    from kface.faces.images import content_hash

    return content_hash(image.read_bytes())


def replay(audit: list[dict], start: dict[str, set[str]]) -> dict[str, set[str]]:
    """The gallery ``start`` after the audit log's changes, one after another."""
    people = {name: set(images) for name, images in start.items()}
    for line in audit:
        if line["event"] == "enroll":
            people.setdefault(line["identity"], set()).update(line["images"])
        else:
            assert line["event"] == "remove" and line["identity"] in people, line
            del people[line["identity"]]
    return people


@pytest.fixture(scope="module")
def faces():
    """20 LFW people with 2 photos each, embedded into the session cache."""
    people = lfw_people(20, 2)
    if len(people) < 20:
        pytest.skip(f"LFW has only {len(people)} people with 2 photos; these tests need 20")
    warm_cache(people)
    return people


@pytest.mark.slow
def test_sixteen_enrolments_at_once_on_a_new_gallery_all_land(faces, tmp_path):
    gallery = tmp_path / "new.kgallery"
    people = faces[:16]
    results = finish(start([enroll_command(gallery, name, images) for name, images in people]))
    assert [code for code, _, _ in results] == [0] * len(people), [err for code, _, err in results if code]
    assert gallery_rows(gallery) == {name: {sha_of(image) for image in images} for name, images in people}
    assert_index_agrees(gallery)
    from kface.galleries.audit import read_audit

    audit = read_audit(gallery)
    assert sorted(line["identity"] for line in audit) == sorted(name for name, _ in people)
    assert all(line["event"] == "enroll" and line["client"] == "local" for line in audit)


@pytest.mark.slow
def test_enrolments_and_removals_interleaved_equal_the_serial_replay_of_the_successful_writes(faces, tmp_path):
    from kface.galleries import Gallery
    from kface.galleries.audit import read_audit

    gallery = tmp_path / "busy.kgallery"
    settled, newcomers = faces[:6], faces[6:12]
    with Gallery.open(gallery, create=True, fallback="whole-image") as first:
        for name, images in settled:
            first.enroll([str(image) for image in images], name)
    before = gallery_rows(gallery)
    assert len(before) == len(settled)
    writes = []  # (kind, identity, command)
    for name, images in newcomers:
        writes.append(("enroll", name, enroll_command(gallery, name, images)))
    for name, _ in settled[:3] + newcomers[:3]:  # newcomers' removals race their own enrolments
        writes.append(("remove", name, KFACE + ["gallery", "remove", "--gallery", str(gallery), "--identity", name]))
    name, images = newcomers[0]  # a second photo set for one newcomer, racing both
    writes.append(("enroll", name, enroll_command(gallery, name, images[:1])))
    dataset = faces[12:14]  # a --dataset enrolment of two more people, and two index rebuilds, among them
    tree = link_tree(dataset, tmp_path / "dataset")
    writes.append(("dataset", "", KFACE + ["enroll", "--gallery", str(gallery), "--dataset", "folder", "--root",
                                           str(tree), "--batch", "2", "-q", "--json", *FACE_OPTIONS]))
    writes += [("rebuild", "", KFACE + ["gallery", "rebuild", "--gallery", str(gallery)])] * 2
    order = np.random.default_rng(0).permutation(len(writes))
    results = finish(start([writes[i][2] for i in order]))
    changed = []  # the writes that reported a change: removals that succeeded, enrolments that stored images
    for i, (code, out, err) in zip(order, results):
        kind, name, _ = writes[i]
        if code != 0:  # the one write that cannot happen here: removing someone not (or no longer) enrolled
            assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "no identity" in err, err
            assert kind == "remove" and name not in dict(settled[:3]), err
        elif kind == "dataset":
            changed += [("enroll", person) for person, _ in dataset]  # batches of 2: one person each
        elif kind == "remove" or (kind == "enroll" and json.loads(out)["enrolled"] > 0):
            changed.append((kind, name))
    audit = read_audit(gallery)[len(settled):]  # the lines of the writes above, in commit order
    assert sorted((line["event"], line["identity"]) for line in audit) == sorted(changed)
    assert gallery_rows(gallery) == replay(audit, before)
    assert_index_agrees(gallery)


def read_port(process: subprocess.Popen) -> int:
    """The port `kface serve --port 0` printed, read from its stderr."""
    deadline = time.monotonic() + TIMEOUT_S
    for line in process.stderr:
        if line.startswith("kface serve: http://"):
            return int(line.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        assert time.monotonic() < deadline, "kface serve did not start"
    raise AssertionError(f"kface serve exited with {process.wait()} before listening")


def post_enroll(port: int, name: str, image: Path) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        return post(connection, "/enroll", {"image": image.read_bytes()}, fields={"identity": name})
    finally:
        connection.close()


@pytest.mark.slow
def test_the_server_and_the_command_line_write_one_gallery_together(faces, tmp_path):
    """Enrolments through the server's /enroll, kface enroll with photos and with stored vectors at once."""
    from kface.galleries import Gallery
    from kface.galleries.audit import read_audit

    gallery = tmp_path / "shared.kgallery"
    first, by_cli, by_server, by_vectors = faces[0], faces[1:6], faces[6:11], faces[11:13]
    with Gallery.open(gallery, create=True, fallback="whole-image") as empty:
        empty.enroll([str(image) for image in first[1]], first[0])
    stored = tmp_path / "stored.parquet"  # vectors of two more people, enrolled with --embeddings below
    made = subprocess.run(KFACE + ["embed", "--dataset", "folder", "--root", str(link_tree(by_vectors, tmp_path / "v")),
                                   "--out", str(stored), "--quiet", *FACE_OPTIONS], capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert made.returncode == 0, made.stderr
    server = subprocess.Popen(KFACE + ["serve", "--port", "0", "--gallery", str(gallery), "--workers", "2",
                                       "--quiet", *FACE_OPTIONS], stderr=subprocess.PIPE, text=True)
    try:
        port = read_port(server)
        threading.Thread(target=server.stderr.read, daemon=True).start()  # keep its pipe drained
        answers: list[tuple[int, dict]] = []
        posts = [threading.Thread(target=lambda n=name, i=image: answers.append(post_enroll(port, n, i)))
                 for name, images in by_server for image in images]
        commands = start([enroll_command(gallery, name, images) for name, images in by_cli]
                         + [KFACE + ["enroll", "--gallery", str(gallery), "--embeddings", str(stored), "-q"]])
        for post in posts:
            post.start()
        results = finish(commands)
        for post in posts:
            post.join(TIMEOUT_S)
        assert [code for code, _, _ in results] == [0] * (len(by_cli) + 1), results
        assert sorted(status for status, _ in answers) == [200] * len(posts), answers
        expected = {name: {sha_of(image) for image in images}
                    for name, images in [first, *by_cli, *by_server, *by_vectors]}
        assert gallery_rows(gallery) == expected
        assert_index_agrees(gallery)
        # The server sees the CLI's writes.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/gallery", timeout=60) as response:
            assert json.loads(response.read())["images"] == sum(len(images) for images in expected.values())
        server_lines = [line for line in read_audit(gallery) if line["client"] != "local"]
        assert len(server_lines) == len(posts) and all(line["client"].startswith("127.0.0.1:") for line in server_lines)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_a_writer_killed_with_kill_9_costs_no_other_writer_anything(faces, tmp_path):
    gallery = tmp_path / "killed.kgallery"
    victims, others = lfw_people(32, 2)[20:], faces[12:18]  # the victim's faces are not cached: it runs a while
    tree = link_tree(victims, tmp_path / "victims")
    victim = subprocess.Popen(KFACE + ["enroll", "--gallery", str(gallery), "--dataset", "folder", "--root", str(tree),
                                       "--batch", "2", "--workers", "0", *FACE_OPTIONS],
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    reported = 0
    for line in victim.stderr:  # kill it once it has committed and is embedding the next batches
        if line.startswith("note: enrolled "):
            reported = int(line.split()[2])
            break
    writers = start([enroll_command(gallery, name, images) for name, images in others])
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "the victim ended before it was killed"
    results = finish(writers)
    assert [code for code, _, _ in results] == [0] * len(others), results
    rows = gallery_rows(gallery)
    for name, images in others:
        assert rows[name] == {sha_of(image) for image in images}
    assert sum(len(rows.get(name, ())) for name, _ in victims) >= reported
    # A last writer leaves the index current, whatever the victim left behind.
    name, images = faces[18]
    assert subprocess.run(enroll_command(gallery, name, images), timeout=TIMEOUT_S).returncode == 0
    assert_index_agrees(gallery)
