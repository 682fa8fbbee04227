"""kface serve's POST /enroll and POST /search: a gallery grown and searched through the API, bad uploads
answered with 4xx JSON, nothing but embeddings stored, another model's gallery refused at start."""
from __future__ import annotations

import pytest
from conftest import EXAMPLES, require

from kface.errors import InputError


def photo(name: str) -> bytes:
    return (require(EXAMPLES) / name).read_bytes()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from fastapi.testclient import TestClient

    from kface.api import FaceOptions, load_verifier
    from kface.galleries import Gallery
    from kface.serve.app import Pipeline, create_app

    path = tmp_path_factory.mktemp("served") / "people.kgallery"
    with Gallery.open(path, create=True) as gallery:
        gallery.enroll([str(EXAMPLES / "biden.jpg")], "biden")
    app = create_app([Pipeline(load_verifier(options=FaceOptions(cache=False)))], gallery=str(path))
    with TestClient(app) as client:
        yield client, path


def test_enroll_then_search_finds_the_person(served):
    client, _ = served
    enrolled = client.post("/enroll", files={"image": ("obama.jpg", photo("obama.jpg"), "image/jpeg")},
                           data={"identity": "obama"})
    assert enrolled.status_code == 200, enrolled.text
    assert enrolled.json()["enrolled"] == 1 and enrolled.json()["gallery"]["identities"] == 2
    again = client.post("/enroll", files={"image": ("obama.jpg", photo("obama.jpg"), "image/jpeg")},
                        data={"identity": "obama"})
    assert again.json()["already"] == 1
    found = client.post("/search?top=2", files={"image": ("q.jpg", photo("obama2.jpg"), "image/jpeg")})
    assert found.status_code == 200, found.text
    answer = found.json()
    assert [c["identity"] for c in answer["candidates"]] == ["obama", "biden"]
    assert answer["candidates"][0]["same_at_threshold"] and not answer["candidates"][1]["same_at_threshold"]
    assert answer["face"]["filename"] == "q.jpg"
    assert client.get("/health").json()["gallery"]["identities"] == 2


def test_only_the_embedding_is_stored(served):
    client, path = served
    client.post("/enroll", files={"image": ("obama3.jpg", photo("obama3.jpg"), "image/jpeg")},
                data={"identity": "obama"})
    upload = photo("obama3.jpg")
    stored = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.is_file())
    assert upload[1000:1064] not in stored  # no slice of the photo itself


@pytest.mark.parametrize("fields,status", [
    ({"files": {"image": ("blank.txt", b"not an image", "text/plain")}, "data": {"identity": "x"}}, 422),
    ({"files": {"image": ("b.jpg", b"", "image/jpeg")}}, 400),  # no identity field
    ({"files": {"image": ("b.jpg", None, "image/jpeg")}, "data": {"identity": " "}}, 422),
    ({"files": {"image": ("b.jpg", None, "image/jpeg")}, "data": {"identity": "someone else"}}, 409),
])
def test_bad_enrolments_are_4xx_and_change_nothing(served, fields, status):
    from kface.galleries.store import GalleryStore

    client, path = served
    for name, (filename, data, kind) in fields["files"].items():
        fields["files"][name] = (filename, photo("biden.jpg") if data is None else data, kind)
    store = GalleryStore.open(path)
    before = store.counts()
    response = client.post("/enroll", **fields)
    assert response.status_code == status, response.text
    assert set(response.json()) >= {"detail"}
    assert store.counts() == before
    store.close()


def test_a_gallery_of_another_model_is_refused(tmp_path):
    from kface.api import FaceOptions, load_verifier
    from kface.galleries.store import GalleryStore, ModelIdentity
    from kface.serve.app import Pipeline, create_app

    path = tmp_path / "other.kgallery"
    GalleryStore.create(path, ModelIdentity("korean@0123", "korean", "korean-v1", "euclidean", 0.5, 128),
                        (0.4, "test")).close()
    with pytest.raises(InputError, match="different vectors"):
        create_app([Pipeline(load_verifier(options=FaceOptions(cache=False)))], gallery=str(path))


def test_without_a_gallery_search_is_501(tmp_path):
    from fastapi.testclient import TestClient

    from kface.api import FaceOptions, load_verifier
    from kface.serve.app import Pipeline, create_app

    with TestClient(create_app([Pipeline(load_verifier(options=FaceOptions(cache=False)))])) as client:
        response = client.post("/search", files={"image": ("q.jpg", photo("obama.jpg"), "image/jpeg")})
        assert response.status_code == 501 and "--gallery" in response.json()["detail"]
