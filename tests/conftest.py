"""Shared fixtures: where the real faces live, and a private cache for the whole test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
LFW = SHARED / "data" / "lfw"
SAMPLES = SHARED / "data" / "samples"
EXAMPLES = REPO / "examples"


def require(path: Path) -> Path:
    """Skip the calling test with a clear reason when a shared data folder is missing."""
    if not path.exists():
        pytest.skip(f"{path} is missing: the real-face data lives in ../shared beside the checkout")
    return path


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every test uses one fresh cache folder, never the user's."""
    folder = tmp_path_factory.mktemp("kface-cache")
    old = os.environ.get("KFACE_CACHE_DIR")
    os.environ["KFACE_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("KFACE_CACHE_DIR", None)
    else:
        os.environ["KFACE_CACHE_DIR"] = old


@pytest.fixture
def lfw_dir() -> Path:
    return require(LFW)


@pytest.fixture
def samples_dir() -> Path:
    return require(SAMPLES)
