"""Shared fixtures: where the real faces live, and a private cache for the whole test session."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The real-face data (``KFACE_TEST_SHARED`` moves it, e.g. to check what a checkout without it does).
SHARED = Path(os.environ.get("KFACE_TEST_SHARED") or REPO / ".." / "shared").resolve()


def default_embedding_size() -> int:
    """The length of the vectors ``embed`` writes by default (the default model's embedding)."""
    from kface.backbones import get_spec
    from kface.models import MODEL_FAMILIES, default_model

    return get_spec(MODEL_FAMILIES[default_model()]).embedding_size
LFW = SHARED / "data" / "lfw"
SAMPLES = SHARED / "data" / "samples"
EXAMPLES = REPO / "examples"


def require(path: Path) -> Path:
    """Skip the calling test with a clear reason when a shared data folder is missing; under CI
    (``CI=true``) fail it instead: there a missing ../shared is a broken setup, not a reason to pass."""
    if not path.exists():
        reason = f"{path} is missing: the real-face data lives in ../shared beside the checkout"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI (CI=true) the tests that read it must run", pytrace=False)
        pytest.skip(reason)
    return path


def lfw_people(count: int, images_each: int) -> list[tuple[str, list[Path]]]:
    """The first ``count`` LFW people (by name) with at least ``images_each`` images, each with its
    first ``images_each`` images; skips the calling test where LFW is missing."""
    images = require(LFW) / "images"
    people = [p for p in sorted(images.iterdir()) if p.is_dir() and len(os.listdir(p)) >= images_each][:count]
    return [(person.name, sorted(person.iterdir())[:images_each]) for person in people]


def link_tree(people: list[tuple[str, list[Path]]], root: Path) -> Path:
    """``root/<person>/<image>``: hard links to ``people``'s images (copies where links fail)."""
    for name, images in people:
        (root / name).mkdir(parents=True)
        for image in images:
            try:
                os.link(image, root / name / image.name)
            except OSError:
                shutil.copy(image, root / name / image.name)
    return root


def write_folder_pairs(tree: Path, out: Path, pairs: int, split: tuple) -> Path:
    """A 1:1 pair file of ``pairs`` pairs (seed 0) over the identity-folder ``tree``, written to ``out``."""
    from kface.datasets import load_dataset
    from kface.pairs import PairRequest, parse_ratio, sample_pairs, write_pairs

    write_pairs(sample_pairs(load_dataset("folder", tree), PairRequest(parse_ratio("1:1"), pairs, split, seed=0)), out)
    return out


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


@pytest.fixture(scope="session")
def ray_address():
    """One Ray instance for the whole test session (2 CPUs); its address, for processes that join it."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def lfw_dir() -> Path:
    return require(LFW)


@pytest.fixture
def samples_dir() -> Path:
    return require(SAMPLES)
