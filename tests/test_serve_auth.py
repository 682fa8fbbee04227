"""A ``kface serve`` a team can share: bearer tokens (full and read-only), the refusal to listen beyond
loopback without one, the gallery's audit log of changes, and the per-client rate limit."""
from __future__ import annotations

import hashlib
import os

import pytest
from fault_helpers import EXAMPLES, assert_one_error, kface
from serve_helpers import Server, post

FULL_TOKEN = "full-token-" + "a" * 24
READ_TOKEN = "read-token-" + "b" * 24
PHOTO = {"image": (EXAMPLES / "obama2.jpg").read_bytes()}
PAIR = {"image_a": (EXAMPLES / "obama.jpg").read_bytes(), "image_b": (EXAMPLES / "obama2.jpg").read_bytes()}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A server with a gallery (biden), a full token file and a read-only token file."""
    from kface.galleries import Gallery

    folder = tmp_path_factory.mktemp("shared")
    gallery = folder / "team.kgallery"
    with Gallery.open(gallery, "dlib", create=True) as new:
        new.enroll([str(EXAMPLES / "biden.jpg")], "biden")
    full, read = folder / "full.token", folder / "read.token"
    for path, token in ((full, FULL_TOKEN), (read, READ_TOKEN)):
        path.write_text(f"# the team's token\n{token}\n")
        path.chmod(0o600)
    server = Server("--gallery", gallery, "--token-file", full, "--read-token-file", read, "--quiet")
    yield server, gallery
    server.stop()


@pytest.mark.slow
def test_every_api_route_needs_a_token_but_the_page_and_health(shared):
    server, _ = shared
    for path in ("/", "/static/app.js", "/health"):
        connection = server.connection()
        connection.request("GET", path)
        assert connection.getresponse().status == 200, path
        connection.close()
    for path in ("/gallery", "/distribution"):
        status, answer = server.get(path)
        assert status == 401 and "token" in answer["detail"], (path, answer)
    for headers in ({}, bearer("not-the-token-" + "c" * 20), {"Authorization": FULL_TOKEN}):
        for path, files in (("/verify", PAIR), ("/search", PHOTO), ("/enroll", PHOTO)):
            status, answer = post(server.connection(), path, files, headers, fields={"identity": "obama"})
            assert status == 401 and "Bearer" in answer["detail"], (path, headers, answer)


@pytest.mark.slow
def test_a_read_token_searches_but_cannot_enroll_and_the_full_token_can(shared):
    server, _ = shared
    status, answer = post(server.connection(), "/verify", PAIR, bearer(READ_TOKEN))
    assert status == 200 and answer["same"], answer
    status, answer = post(server.connection(), "/search", PHOTO, bearer(READ_TOKEN))
    assert status == 200 and answer["candidates"][0]["identity"] == "biden", answer
    status, answer = post(server.connection(), "/enroll", PHOTO, bearer(READ_TOKEN), fields={"identity": "obama"})
    assert status == 403 and "write token" in answer["detail"], answer
    status, answer = post(server.connection(), "/enroll", PHOTO, bearer(FULL_TOKEN), fields={"identity": "obama"})
    assert status == 200 and answer["enrolled"] == 1, answer
    assert server.get("/gallery", bearer(READ_TOKEN))[1]["identities"] == 2


@pytest.mark.slow
def test_the_audit_log_has_one_line_per_change_with_the_token_id_and_no_image(shared):
    from kface.galleries.audit import audit_path, read_audit
    from kface.serve.auth import Token

    server, gallery = shared
    before = len(read_audit(gallery))
    photo = (EXAMPLES / "obama3.jpg").read_bytes()
    for _ in range(2):  # the second is no change: no line
        status, _ = post(server.connection(), "/enroll", {"image": photo}, bearer(FULL_TOKEN),
                         fields={"identity": "obama"})
        assert status == 200
    lines = read_audit(gallery)[before:]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["event"] == "enroll" and line["identity"] == "obama"
    assert line["images"] == [hashlib.sha256(photo).hexdigest()]
    assert line["client"].startswith("127.0.0.1:") and line["token_id"] == Token(FULL_TOKEN.encode(), True).id
    logged = audit_path(gallery).read_bytes()
    assert FULL_TOKEN.encode() not in logged and photo[1000:1064] not in logged
    assert oct(audit_path(gallery).stat().st_mode & 0o777) == "0o600"


def test_listening_beyond_loopback_needs_a_token(tmp_path):
    result = kface("serve", "--host", "0.0.0.0", "--port", "0", timeout=120)
    assert_one_error(result, 2, "--token-file", "--no-token")
    short = tmp_path / "short.token"
    short.write_text("tooshort\n")
    assert_one_error(kface("serve", "--token-file", short, timeout=120), 2, "at least 16 characters")
    empty = tmp_path / "empty.token"
    empty.write_text("# nothing yet\n")
    assert_one_error(kface("serve", "--read-token-file", empty, timeout=120), 2, "no token")
    assert_one_error(kface("serve", "--host", "0.0.0.0", env={"KFACE_TOKEN": "x"}, timeout=120), 2, "KFACE_TOKEN")


def test_tokens_come_from_files_and_the_environment(tmp_path, monkeypatch):
    from kface.serve.auth import load_tokens

    full = tmp_path / "full.token"
    full.write_text(f"{FULL_TOKEN}\n\n{FULL_TOKEN[::-1]}\n")
    monkeypatch.setenv("KFACE_TOKEN", READ_TOKEN)
    assert [t.writes for t in load_tokens(full=str(full)).tokens] == [True, True]  # the file wins over the variable
    tokens = load_tokens(read=str(full))
    assert [(t.secret.decode(), t.writes) for t in tokens.tokens] == [(READ_TOKEN, True), (FULL_TOKEN, False),
                                                                      (FULL_TOKEN[::-1], False)]
    assert tokens.match(FULL_TOKEN.encode()).writes is False and tokens.match(b"other") is None
    assert tokens.match(b"") is None
    monkeypatch.delenv("KFACE_TOKEN")
    assert not load_tokens()


def test_the_rate_limit_answers_429_past_it_per_client():
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from kface.serve.auth import RateLimit, TokenGuard, TokenSet

    async def ok(request):
        return JSONResponse({"ok": True})

    app = TokenGuard(Starlette(routes=[Route("/search", ok), Route("/health", ok)]), TokenSet(), rate_per_minute=3)
    client = TestClient(app)
    assert [client.get("/search").status_code for _ in range(4)] == [200, 200, 200, 429]
    refused = client.get("/search")
    assert int(refused.headers["retry-after"]) >= 1 and "at most 3 a minute" in refused.json()["detail"]
    assert client.get("/health").status_code == 200  # the page and /health are not counted
    now = [0.0]
    limit = RateLimit(60, clock=lambda: now[0])
    assert all(limit.take("a") == 0 for _ in range(60)) and limit.take("a") > 0
    assert limit.take("b") == 0  # another client has its own bucket
    now[0] += 1.0  # one request a second comes back
    assert limit.take("a") == 0 and limit.take("a") > 0


def test_a_token_file_readable_by_others_gets_a_warning(tmp_path, capsys):
    from kface.serve.auth import read_token_file

    path = tmp_path / "open.token"
    path.write_text(FULL_TOKEN)
    os.chmod(path, 0o644)
    assert read_token_file(path, writes=True)[0].secret == FULL_TOKEN.encode()
    assert "chmod 600" in capsys.readouterr().err


@pytest.mark.slow
def test_the_page_asks_for_the_token_once_and_keeps_it_for_the_tab(tmp_path):
    import re

    from playwright.sync_api import expect
    from test_serve_browser import ANSWER_TIMEOUT_MS, browser_page, compare_on_page, require_browser, running_server

    require_browser()
    token_file = tmp_path / "team.token"
    token_file.write_text(FULL_TOKEN + "\n")
    token_file.chmod(0o600)
    with running_server("--model", "dlib", "--token-file", str(token_file)) as url, browser_page() as page:
        page.goto(url)
        dialog = page.locator("#token-dialog")
        expect(dialog).to_be_visible(timeout=ANSWER_TIMEOUT_MS)  # the page's first API call was refused
        page.fill("#token-input", "wrong-token-" + "d" * 20)
        page.click("#token-ok")
        expect(page.locator("#token-message")).to_contain_text("not accepted")
        page.fill("#token-input", FULL_TOKEN)
        page.click("#token-ok")
        expect(dialog).to_be_hidden()
        verdict = compare_on_page(page, url, EXAMPLES / "obama.jpg", EXAMPLES / "obama2.jpg")
        assert re.fullmatch("same person", verdict, re.IGNORECASE), verdict
        assert page.evaluate("sessionStorage.getItem('kface-token')") == FULL_TOKEN
        assert page.evaluate("localStorage.length") == 0
        page.reload()  # the same tab: no second question
        verdict = compare_on_page(page, url, EXAMPLES / "obama.jpg", EXAMPLES / "biden.jpg")
        assert re.fullmatch("different (people|person)", verdict, re.IGNORECASE), verdict
        expect(dialog).to_have_count(0)
        assert page.errors == []
