"""`kface serve`'s JSON API through Starlette's test client: verify, analyze, health, the distribution,
every bad upload (a 4xx JSON error, and the server keeps serving), nothing written to disk, and
requests worked on in parallel off the event loop.

The attribute model here has seeded random heads: these tests check the server's plumbing (keys, the
same answer as the Python API); what trained heads learn is tested in test_attributes.py.
"""
from __future__ import annotations

import base64
import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kface.api import FaceOptions, load_verifier
from kface.errors import InputError
from kface.serve.app import Pipeline, ServeLimits, create_app, load_distances

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
MAX_REQUEST_BYTES = 3 * 1024 * 1024
MAX_PIXELS = 20_000_000
VERIFY_KEYS = {"same", "distance", "threshold", "threshold_source", "backbone", "distance_metric", "faces"}
FACE_KEYS = {"path", "filename", "found", "stage", "box", "n_faces", "age"}  # age: None for stock dlib
ANALYZE_KEYS = {"age_group", "age_probs", "expected_age", "gender", "gender_prob", "gender_probs", "box", "stage",
                "found"}


def photo(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_attribute_model(path: Path, seed: int = 0) -> Path:
    """An attribute checkpoint with seeded random age and gender heads on dlib-resnet's 128-d embedding."""
    import torch

    from kface.attributes.heads import AttributeHeads, save_attribute_model
    from kface.attributes.labels import GENDERS, AgeBins

    bins = AgeBins()
    heads = AttributeHeads(128, {"age": len(bins), "gender": len(GENDERS)}, hidden=16, dropout=0.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in heads.heads.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    meta = {"tasks": ["age", "gender"], "classes": {"age": bins.labels, "gender": list(GENDERS)},
            "age_bins": list(bins.edges), "group_ages": bins.representative_ages(np.array([]), np.array([])),
            "embedding_size": 128, "backbone": "dlib-resnet", "config": {"hidden": 16, "dropout": 0.0}, "seed": seed}
    save_attribute_model(path, heads, meta)
    return path


@pytest.fixture(scope="module")
def verifier():
    return load_verifier("dlib",
                         options=FaceOptions(cache=False))  # stock dlib: the figures below are its LFW threshold


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory):
    from kface.attributes.model import load_analyzer

    model = write_attribute_model(tmp_path_factory.mktemp("attributes") / "model.pt")
    return load_analyzer(str(model), cache=False)


@pytest.fixture(scope="module")
def client(verifier, analyzer):
    from fastapi.testclient import TestClient

    app = create_app([Pipeline(verifier, analyzer)], ServeLimits(MAX_REQUEST_BYTES, MAX_PIXELS))
    with TestClient(app) as test_client:
        yield test_client


def post_verify(client, image_b: bytes, name_b: str = "b.jpg", image_a: bytes = None, **params):
    files = {"image_a": ("obama.jpg", image_a or photo("obama.jpg"), "image/jpeg"),
             "image_b": (name_b, image_b, "application/octet-stream")}
    return client.post("/verify", files=files, params=params)


# -- answers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("other, same", [("obama2.jpg", True), ("biden.jpg", False)])
def test_verify_answers_as_the_python_api_does(client, verifier, other, same):
    response = post_verify(client, photo(other), other)
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = verifier.verify(EXAMPLES / "obama.jpg", EXAMPLES / other).to_dict()
    assert VERIFY_KEYS <= set(answer) and set(expected) <= set(answer)
    assert answer["same"] is same and (answer["distance"] <= answer["threshold"]) is same
    assert answer["distance"] == pytest.approx(expected["distance"], abs=1e-6)
    assert answer["threshold"] == expected["threshold"] == pytest.approx(0.6144)
    assert [set(face) for face in answer["faces"]] == [FACE_KEYS, FACE_KEYS]
    assert [face["path"] for face in answer["faces"]] == ["image_a", "image_b"]
    assert [face["filename"] for face in answer["faces"]] == ["obama.jpg", other]
    assert [face["box"] for face in answer["faces"]] == [face["box"] for face in expected["faces"]]
    assert "chips" not in answer


def test_verify_chips_are_the_aligned_faces_as_png(client):
    answer = post_verify(client, photo("obama2.jpg"), chips="true").json()
    assert len(answer["chips"]) == 2
    for chip in answer["chips"]:
        prefix = "data:image/png;base64,"
        assert chip.startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(chip[len(prefix):]))) as image:
            assert image.size == (150, 150) and image.mode == "RGB"


def test_analyze_answers_as_the_python_api_does(client, analyzer):
    response = client.post("/analyze", files={"image": ("biden.jpg", photo("biden.jpg"), "image/jpeg")},
                           params={"chips": "true"})
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = analyzer.analyze(str(EXAMPLES / "biden.jpg"))
    assert ANALYZE_KEYS <= set(answer)
    assert answer["age_group"] in answer["age_probs"] and answer["gender"] in ("female", "male")
    assert answer["age_probs"] == pytest.approx(expected["age_probs"])
    assert answer["gender_prob"] == pytest.approx(expected["gender_prob"])
    assert answer["box"] == expected["box"] and answer["stage"] == "hog"
    assert answer["image"] == "image" and answer["filename"] == "biden.jpg"
    assert answer["chips"][0].startswith("data:image/png;base64,")


def test_analyze_all_faces_lists_the_faces(client):
    response = client.post("/analyze", files={"image": ("obama.jpg", photo("obama.jpg"))}, params={"all_faces": "1"})
    assert response.status_code == 200, response.text
    faces = response.json()["faces"]
    assert len(faces) == 1 and ANALYZE_KEYS <= set(faces[0])


def test_analyze_without_an_attribute_model_is_501_with_the_way_out(verifier):
    from fastapi.testclient import TestClient

    with TestClient(create_app([Pipeline(load_verifier(options=FaceOptions(cache=False)))])) as bare:
        response = bare.post("/analyze", files={"image": ("obama.jpg", photo("obama.jpg"))})
        assert response.status_code == 501 and "--attributes-model" in response.json()["detail"]
        assert bare.get("/health").json()["attributes"] is None


def test_health_names_the_model_threshold_rule_limits_and_versions(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["backbone"] == "dlib-resnet" and health["model"] is None
    assert health["threshold"] == pytest.approx(0.6144) and "LFW" in health["threshold_source"]
    assert health["limits"] == {"max_request_bytes": MAX_REQUEST_BYTES, "max_pixels": MAX_PIXELS, "workers": 1}
    assert health["attributes"]["tasks"] == ["age", "gender"]
    assert {"kface", "python", "fastapi", "uvicorn"} <= set(health["versions"])


def test_openapi_documents_the_uploads_and_docs_are_served_offline(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/verify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["image_a", "image_b"] and body["properties"]["image_b"]["format"] == "binary"
    assert {"200", "400", "413", "415", "422"} <= set(schema["paths"]["/verify"]["post"]["responses"])
    docs = client.get("/docs").text
    script = next(part.split('"')[1] for part in docs.split("<script src=")[1:])
    assert not script.startswith("http") and client.get(script).status_code == 200


def test_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text and client.get(asset).status_code == 200


# -- bad uploads -------------------------------------------------------------------------------------
def bad_requests():
    """(case, request keyword arguments for client.post('/verify'), status, words in the message)."""
    obama = ("obama.jpg", photo("obama.jpg"), "image/jpeg")
    blank = png(Image.new("RGB", (300, 300), (120, 130, 140)))
    huge = png(Image.new("L", (5000, 5000)))  # 25 MP, a few kB
    heavy = photo("obama.jpg") + bytes(MAX_REQUEST_BYTES)  # JPEG ignores what follows its end marker

    def two(image_b):
        return {"files": {"image_a": obama, "image_b": image_b}}

    return [
        ("text", two(("notes.txt", b"hello, not a photo", "text/plain")), 422,
         "image_b (notes.txt): not an image file"),
        ("empty", two(("empty.jpg", b"", "image/jpeg")), 422, "image_b (empty.jpg): empty file"),
        ("truncated", two(("cut.jpg", photo("obama2.jpg")[:5000], "image/jpeg")), 422,
         "image_b (cut.jpg): corrupt or truncated"),
        ("no face", two(("wall.png", blank, "image/png")), 422, "image_b (wall.png): no face found"),
        ("too many pixels", two(("huge.png", huge, "image/png")), 413, "25,000,000 pixels, over the server's limit"),
        ("too many bytes", two(("heavy.jpg", heavy, "image/jpeg")), 413, "over the limit of 3.0 MB"),
        ("wrong field", {"files": {"image_a": obama, "image": obama}}, 400, "unexpected field 'image'"),
        ("missing field", {"files": {"image_a": obama}}, 400, "missing file field(s) 'image_b'"),
        ("form fields", {"data": {"image_a": "x"}}, 415, "takes multipart/form-data"),
        ("json", {"json": {"image_a": "x"}}, 415, "takes multipart/form-data"),
        ("bad parameter", {**two(obama), "params": {"chips": "maybe"}}, 422, "bad request parameters: query.chips"),
    ]


@pytest.mark.parametrize("case, request_kwargs, status, words", bad_requests(), ids=[c[0] for c in bad_requests()])
def test_bad_upload_is_a_4xx_json_error_and_the_server_keeps_serving(client, case, request_kwargs, status, words):
    response = client.post("/verify", **request_kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in response.json()["detail"] and "Traceback" not in response.text
    assert client.get("/health").status_code == 200


def test_repeated_field_streamed_oversize_and_malformed_bodies_are_4xx(client):
    boundary = "kface-test"
    part = (f'--{boundary}\r\nContent-Disposition: form-data; name="image_a"; filename="a.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo("obama.jpg") + b"\r\n"
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    twice = client.post("/verify", content=part + part + f"--{boundary}--\r\n".encode(), headers=headers)
    assert twice.status_code == 400 and "'image_a' was sent twice" in twice.json()["detail"]

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        yield part
        for _ in range(MAX_REQUEST_BYTES // 65536 + 1):
            yield bytes(65536)

    streamed = client.post("/verify", content=chunks(), headers=headers)
    assert streamed.status_code == 413 and "over the limit" in streamed.json()["detail"]
    malformed = client.post("/verify", content=b"--other\r\nnot a part", headers=headers)
    assert malformed.status_code == 400 and "malformed multipart" in malformed.json()["detail"]
    analyze_wrong_field = client.post("/analyze", files={"image_a": ("a.jpg", photo("obama.jpg"))})
    assert analyze_wrong_field.status_code == 400 and "'image'" in analyze_wrong_field.json()["detail"]
    after = post_verify(client, photo("obama2.jpg"))
    assert after.status_code == 200 and after.json()["same"] is True


def test_unknown_routes_and_methods_are_json_errors(client):
    assert client.get("/nope").json() == {"detail": "Not Found"}
    assert client.get("/verify").status_code == 405


# -- privacy -----------------------------------------------------------------------------------------
#: Files opened for writing while a test records them (sys.audit "open" events; see below).
WRITTEN: list = []
RECORDING = threading.Event()
HOOKED: list = []


def record_writes(event: str, args: tuple) -> None:
    """An audit hook noting every file opened to write while RECORDING is set: named or not (a
    SpooledTemporaryFile's rollover makes an O_TMPFILE file that never shows in any folder), by
    ``open()``, ``os.open`` or ``tempfile`` alike, from any thread."""
    if not RECORDING.is_set():
        return
    if event == "open":
        path, mode, flags = args
        writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | getattr(os, "O_TMPFILE", 0)
        if (mode is not None and any(ch in mode for ch in "wax+")) or (mode is None and flags & writes):
            WRITTEN.append((event, path, mode, flags))
    elif event in ("tempfile.mkstemp", "tempfile.mkdtemp"):
        WRITTEN.append((event, *args))


def test_uploads_are_never_written_to_disk(client, tmp_path, monkeypatch):
    """A 2 MB upload (over Starlette's 1 MB spooling size) opens no file for writing, named or unnamed, and
    leaves no file in the temp or cache folders."""
    import sys
    import tempfile

    temp_dir, cache_dir = tmp_path / "tmp", tmp_path / "cache"
    temp_dir.mkdir()
    cache_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_dir))
    monkeypatch.setenv("KFACE_CACHE_DIR", str(cache_dir))
    padded = photo("obama2.jpg") + bytes(2 * 1024 * 1024)
    if not HOOKED:
        sys.addaudithook(record_writes)  # a hook stays for the process; this one only acts while RECORDING
        HOOKED.append(True)
    WRITTEN.clear()
    RECORDING.set()
    try:
        response = post_verify(client, padded, chips="true")
    finally:
        RECORDING.clear()
    assert response.status_code == 200 and response.json()["same"] is True
    assert WRITTEN == []
    assert list(temp_dir.iterdir()) == [] and list(cache_dir.iterdir()) == []


# -- concurrency -------------------------------------------------------------------------------------
class GatedVerifier:
    """The real verifier, whose verify waits at a gate: shows what runs while verifications are under way."""

    def __init__(self, inner):
        self._inner = inner
        self.inside = 0
        self.lock = threading.Lock()
        self.gate = threading.Event()

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def verify(self, image_a, image_b, **options):
        with self.lock:
            self.inside += 1
        self.gate.wait(30)
        return self._inner.verify(image_a, image_b, **options)


def test_verifications_run_in_parallel_off_the_event_loop():
    """Two pipelines (each its own models: dlib's detector is not thread-safe) work on two requests at once,
    and the page and /health answer meanwhile."""
    from fastapi.testclient import TestClient

    gated = [GatedVerifier(load_verifier(options=FaceOptions(cache=False))) for _ in range(2)]
    with TestClient(create_app([Pipeline(one) for one in gated])) as concurrent:
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(post_verify(concurrent, photo("obama2.jpg"))))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while sum(one.inside for one in gated) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [one.inside for one in gated] == [1, 1]  # both requests are inside verify at once
        started = time.monotonic()
        assert concurrent.get("/health").status_code == 200
        assert concurrent.get("/").status_code == 200
        assert time.monotonic() - started < 5  # answered while both verifications wait
        for one in gated:
            one.gate.set()
        for thread in threads:
            thread.join(60)
        assert [answer.status_code for answer in answers] == [200, 200]
        assert all(answer.json()["same"] for answer in answers)


# -- the distribution on the page ------------------------------------------------------------------
def write_scores(path: Path, threshold: float = 0.6144, seed: int = 0) -> Path:
    """A `kface verify --pairs --out` style CSV with made-up distances (the loader is tested, not a model)."""
    rng = np.random.default_rng(seed)
    lines = ["split,path_a,path_b,label,distance,same,threshold,found_a,found_b,error"]
    for split in ("val", "test"):
        for label, centre in ((1, 0.4), (0, 0.85)):
            for distance in rng.normal(centre, 0.07, 50):
                same = int(distance <= threshold)
                lines.append(f"{split},a.jpg,b.jpg,{label},{distance:.6f},{same},{threshold},1,1,")
    lines.append("test,a.jpg,bad.jpg,1,,,0.6144,1,0,bad.jpg: no face found")  # a failed pair: left out
    path.write_text("\n".join(lines) + "\n")
    return path


def test_distribution_from_scored_pairs_reaches_the_page(tmp_path):
    from fastapi.testclient import TestClient

    verifier = load_verifier("dlib", options=FaceOptions(cache=False))
    distribution = load_distances(write_scores(tmp_path / "scores.csv"), "test", verifier.threshold)
    assert distribution.same.size == 50 and distribution.different.size == 50 and distribution.notes == []
    with TestClient(create_app([Pipeline(verifier)], distribution=distribution)) as with_plot:
        body = with_plot.get("/distribution").json()
        assert with_plot.get("/health").json()["distribution"] is True
    assert body["available"] is True and body["n_same"] == 50 and body["n_diff"] == 50
    assert len(body["x"]) == len(body["same"]) == len(body["different"]) == 240
    assert body["x"][0] < 0.4 < 0.85 < body["x"][-1] and 0 <= body["overlap"] < 0.05
    peak_same = body["x"][int(np.argmax(body["same"]))]
    peak_different = body["x"][int(np.argmax(body["different"]))]
    assert abs(peak_same - 0.4) < 0.05 and abs(peak_different - 0.85) < 0.05
    assert body["source"] == "scores.csv (split test)" and body["threshold"] == pytest.approx(0.6144)


def test_distribution_without_scores_comes_from_the_model_card(client):
    body = client.get("/distribution").json()  # stock dlib's card holds its val pairs' histograms
    assert body["available"] is True and body["source"].startswith("the model card")
    assert client.get("/health").json()["distribution_source"] == body["source"]


def test_distribution_without_scores_or_card_says_how_to_get_one(verifier):
    import copy

    from fastapi.testclient import TestClient

    bare = copy.copy(verifier)
    bare.answers = None  # a model whose card has no answers block
    with TestClient(create_app([Pipeline(bare)])) as client:
        body = client.get("/distribution").json()
        assert body["available"] is False and "--distances" in body["note"]
        assert client.get("/health").json()["distribution_source"] is None


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    """A model trained (2 epochs) on made-up 128-d dlib-resnet features: identities 0-29 train, 30-44 val."""
    from kface.training.config import TrainConfig
    from kface.training.data import SplitPairs, TrainingData
    from kface.training.run import fit

    rng = np.random.default_rng(0)
    features = (np.repeat(rng.normal(0, 0.1, (45, 128)), 4, axis=0) + rng.normal(0, 0.03, (180, 128)))

    def split(count: int, first: int, last: int) -> SplitPairs:
        who = rng.integers(first, last, count)
        same = np.arange(count) % 2 == 0
        other = np.where(same, who, first + (who - first + rng.integers(1, last - first, count)) % (last - first))
        return SplitPairs(who * 4 + rng.integers(0, 2, count), other * 4 + rng.integers(2, 4, count),
                          same.astype(np.int8))

    data = TrainingData(features.astype(np.float32), split(200, 0, 30), split(120, 30, 45), 128,
                        {"pairs_sha256": "synthetic"})
    out = tmp_path_factory.mktemp("trained") / "run"
    fit(TrainConfig(pairs="synthetic.csv", out=str(out), epochs=2, device="cpu"), data)
    return out / "model.pt", data.val.labels


def test_trained_model_draws_its_val_distances_without_a_distances_file(trained_model, tmp_path):
    import torch
    from fastapi.testclient import TestClient

    model, val_labels = trained_model
    verifier = load_verifier(str(model), options=FaceOptions(cache=False))
    with TestClient(create_app([Pipeline(verifier)])) as served:
        body = served.get("/distribution").json()
        health = served.get("/health").json()
        assert post_verify(served, photo("obama2.jpg")).status_code == 200
    assert body["available"] is True and health["distribution"] is True
    assert body["source"].startswith("val pairs of the training run (epoch ")
    assert health["distribution_source"] == body["source"]
    assert (body["n_same"], body["n_diff"]) == (int((val_labels == 1).sum()), int((val_labels == 0).sum()))
    assert body["threshold"] == pytest.approx(verifier.threshold)
    # --distances still wins over what the model stores.
    scores = load_distances(write_scores(tmp_path / "scores.csv"), "test")
    with TestClient(create_app([Pipeline(verifier)], distribution=scores)) as overridden:
        assert overridden.get("/distribution").json()["source"] == "scores.csv (split test)"
    # A checkpoint written before val distances were stored serves as before, without the plot.
    old = torch.load(model, weights_only=True)
    del old["val_distances"]
    torch.save(old, tmp_path / "old.pt")
    with TestClient(create_app([Pipeline(load_verifier(str(tmp_path / "old.pt"),
                                                       options=FaceOptions(cache=False)))])) as old_served:
        body = old_served.get("/distribution").json()
        answer = post_verify(old_served, photo("obama2.jpg"))
    assert body["available"] is False and "--distances" in body["note"]
    assert answer.status_code == 200 and answer.json()["threshold"] == pytest.approx(verifier.threshold)


def test_distances_file_problems_are_clear(tmp_path):
    scores = write_scores(tmp_path / "scores.csv")
    other = load_distances(scores, None, threshold=0.5)
    assert other.same.size == 100 and "scored at threshold 0.6144" in other.notes[0]
    (tmp_path / "columns.csv").write_text("path,score\na.jpg,0.3\n")
    with pytest.raises(InputError, match="needs 'label' and 'distance' columns"):
        load_distances(tmp_path / "columns.csv")
    with pytest.raises(InputError, match="at least two distinct distances of each label in split train"):
        load_distances(scores, "train")
    (tmp_path / "nosplit.csv").write_text("label,distance\n1,0.3\n0,0.9\n")
    with pytest.raises(InputError, match="no 'split' column"):
        load_distances(tmp_path / "nosplit.csv", "test")


# -- the command ---------------------------------------------------------------------------------------
def test_only_loopback_addresses_count_as_this_machine():
    from kface.serve.app import is_loopback

    assert all(is_loopback(host) for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "192.168.0.10", "example.org"))


def test_serve_on_a_port_in_use_is_one_error_line_before_loading_models():
    import socket

    from click.testing import CliRunner

    from kface.cli import cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--port", str(port)])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port} (Address already in use)"
