"""`kface serve` end to end in a real browser: Debian's headless Chromium, driven by Playwright.

The test starts `kface serve` on a free loopback port, drops obama.jpg and obama2.jpg on the page and
reads "Same person"; switches the page to Korean and back; then drops a text file and reads the
server's error. It skips, saying why, where Chromium or Playwright is missing, except under CI
(CI=true), where .ci/run installs both and a skip would hide a broken page.

Run as a script, the same code takes the screenshot in docs/serve.md:

    .venv/bin/python tests/test_serve_browser.py --out docs/serve.png \\
        --distances results.csv --distances-split test --attributes-model runs/gender/model.pt
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
CHROMIUM = Path("/usr/bin/chromium")
# Headless, and quiet on a machine without a network: no background fetches, updates or sync.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT_S = 90
ANSWER_TIMEOUT_MS = 90_000


def require_browser() -> None:
    """Skip (fail under CI) when Chromium or Playwright is missing."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -e '.[test]')")
    if missing:
        reason = f"the browser test needs {' and '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; .ci/run installs them, so under CI this test must run")
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_server(*options: str) -> Iterator[str]:
    """`kface serve` in a subprocess on a free loopback port; yields its URL, stops it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen([sys.executable, "-m", "kface", "serve", "--port", str(port), "--quiet", *options],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"kface serve exited with {process.returncode}: {log.read()}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                        if response.status == 200:
                            break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"kface serve did not answer on {url} in {START_TIMEOUT_S} s") from None
                    time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def browser_page(language: str = "en-US") -> Iterator:
    """A Playwright page in Debian's Chromium (no browser of Playwright's own), collecting page errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(locale=language, viewport={"width": 1000, "height": 900})
            page = context.new_page()
            page.errors = []
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            yield page
        finally:
            browser.close()


def compare_on_page(page, url: str, image_a: Path, image_b: Path) -> str:
    """Open the page, drop both photos, wait for the verdict and return it."""
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.locator("#model")).to_contain_text("threshold")
    page.set_input_files("#file-a", str(image_a))
    page.set_input_files("#file-b", str(image_b))
    verdict = page.locator("#verdict")
    expect(verdict).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    return verdict.inner_text()


def write_distances(path: Path, seed: int = 0) -> Path:
    """A labelled-distance CSV for the page's plot (made-up distances: the page's drawing is tested, not a
    model): 200 same-person pairs around 0.4, 300 different-person pairs around 0.85."""
    rng = np.random.default_rng(seed)
    same, different = rng.normal(0.40, 0.07, 200), rng.normal(0.85, 0.08, 300)
    rows = [f"test,{label},{distance:.6f}" for label, values in ((1, same), (0, different)) for distance in values]
    path.write_text("split,label,distance\n" + "\n".join(rows) + "\n")
    return path


def test_page_says_same_person_then_shows_the_error_for_a_text_file(tmp_path):
    require_browser()
    from playwright.sync_api import expect

    distances = write_distances(tmp_path / "distances.csv")
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("these are notes, not a photo\n")
    with running_server("--model", "dlib", "--distances", str(distances)) as url, browser_page() as page:
        verdict = compare_on_page(page, url, EXAMPLES / "obama.jpg", EXAMPLES / "obama2.jpg")
        assert re.fullmatch("same person", verdict, re.IGNORECASE), verdict
        expect(page.locator("#verdict-detail")).to_contain_text("≤ threshold 0.6144")
        for chip in ("#chip-a", "#chip-b"):
            assert page.locator(chip).get_attribute("src").startswith("data:image/png;base64,")
            assert page.locator(chip).evaluate("image => image.naturalWidth") == 150
        for age in ("#age-a", "#age-b"):  # no attribute heads read stock dlib's vectors
            expect(page.locator(age)).to_be_hidden()
        expect(page.locator("#plot")).to_contain_text("this pair 0.")
        expect(page.locator("#plot")).to_contain_text("same person (n=200)")
        expect(page.locator("#plot-note")).to_contain_text("200 same-person and 300 different-person pairs")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        page.click("#language")
        expect(page.locator("#verdict")).to_have_text("같은 사람")
        expect(page.locator("h1")).to_have_text("kface: 같은 사람일까요?")
        page.click("#language")
        expect(page.locator("#verdict")).to_have_text("Same person")

        page.set_input_files("#file-b", str(not_an_image))
        error = page.locator("#verify-error")
        expect(error).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
        expect(error).to_have_text("Error: image_b (notes.txt): not an image file (or a format Pillow cannot read)")
        expect(page.locator("#verify-result")).to_be_hidden()
        # The shipped Korean attribute heads serve /analyze by default.
        expect(page.locator("#analyze-unavailable")).to_be_hidden()
        assert page.errors == []


def test_page_shows_each_faces_estimated_age_with_the_korean_model():
    require_browser()
    from playwright.sync_api import expect

    with running_server() as url, browser_page() as page:
        compare_on_page(page, url, EXAMPLES / "obama.jpg", EXAMPLES / "obama2.jpg")
        for age in ("#age-a", "#age-b"):
            expect(page.locator(age)).to_be_visible()
            expect(page.locator(age)).to_have_text(re.compile(r"age group \d+(-\d+|\+), expected age \d+"))
        assert_default_model_distributions_drawn(page)
        page.click("#language")
        expect(page.locator("#age-a")).to_have_text(re.compile(r"연령대 \d+(-\d+|\+), 예상 나이 \d+세"))
        assert page.errors == []


def assert_default_model_distributions_drawn(page) -> None:
    """The default model's card distributions are drawn (both curves with their val pair counts, not only the
    threshold), with its operating points, the threshold and one plain sentence about it."""
    from playwright.sync_api import expect

    from kface.models import card

    block = card("korean")["answers"]
    same = sum(block["val"]["pairs"][kind]["same"] for kind in ("cross-age", "same-age-hard"))
    different = sum(block["val"]["pairs"][kind]["different"] for kind in ("cross-age", "same-age-hard"))
    expect(page.locator("#plot")).to_contain_text(f"same person (n={same})")
    expect(page.locator("#plot")).to_contain_text(f"different people (n={different})")
    curves = page.locator("#plot path")
    assert curves.count() >= 3  # same, different and their overlap
    for index in range(2):  # each curve climbs away from the axis: many points, more than one height
        heights = {point.split(",")[1] for point in curves.nth(index).get_attribute("d").split("L")[1:-1]}
        assert len(heights) > 20, heights
    expect(page.locator("#plot")).to_contain_text("threshold 0.")
    expect(page.locator("#plot")).to_contain_text("far=1e-2")
    assert page.locator("#plot line.operating-point").count() == 2
    expect(page.locator("#model")).to_contain_text("never saw")
    expect(page.locator("#plot-note")).to_contain_text("the model card")


def take_screenshot(out: Path, distances: Optional[str], split: Optional[str], attributes_model: Optional[str]) -> None:
    """The screenshot in docs/serve.md: the page after comparing obama.jpg with obama2.jpg (and analyzing biden.jpg
    when an attribute model is given)."""
    from playwright.sync_api import expect

    options = ["--distances", distances] + (["--distances-split", split] if split else []) if distances else []
    options += ["--attributes-model", attributes_model] if attributes_model else []
    with running_server(*options) as url, browser_page() as page:
        print(f"verdict: {compare_on_page(page, url, EXAMPLES / 'obama.jpg', EXAMPLES / 'obama2.jpg')}")
        if attributes_model:
            page.set_input_files("#file-c", str(EXAMPLES / "biden.jpg"))
            expect(page.locator("#analyze-result")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        assert page.errors == [], page.errors
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=take_screenshot.__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "serve.png")
    parser.add_argument("--distances", help="labelled distances for the plot (kface serve --distances)")
    parser.add_argument("--distances-split", help="kface serve --distances-split")
    parser.add_argument("--attributes-model", help="kface serve --attributes-model")
    arguments = parser.parse_args()
    take_screenshot(arguments.out, arguments.distances, arguments.distances_split, arguments.attributes_model)
