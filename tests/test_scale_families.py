"""``kface benchmark families --ray``: each recipe's folds as Ray tasks give the same tables as the local run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from fault_helpers import assert_one_error, kface
from test_family_splits import write_family_manifest

#: A recipe that trains in seconds on the tiny families: a few epochs, a few pairs, half the training
#: families for val (which picks the epoch and the threshold).
FAST_RECIPE = {"head": "siamese", "epochs": 3, "fallback": "whole-image", "split": "0.5:0.5:0", "dataset_pairs": 40}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(root, manifest, recipe): 8 families of 3 people with 4 tiny images each, and the fast recipe."""
    root = tmp_path_factory.mktemp("families")
    manifest = write_family_manifest(root, families=8)
    recipe = root / "fast.json"
    recipe.write_text(json.dumps(FAST_RECIPE), encoding="utf-8")
    return root, manifest, recipe


def _benchmark(tiny, out: Path, **settings) -> list[dict]:
    from kface import toolkit

    root, manifest, recipe = tiny
    return toolkit.benchmark_families("csv", root, layout_options={"manifest": str(manifest)}, out=out,
                                      folds=2, pairs_per_class=10, recipes=[str(recipe)], device="cpu", **settings)


def test_ray_tasks_write_the_same_tables_as_the_local_run(tiny, ray_address, tmp_path):
    from kface.scale.families import ray_fold_runner

    _benchmark(tiny, tmp_path / "local")
    rows = _benchmark(tiny, tmp_path / "ray", fold_runner=ray_fold_runner(ray_address, quiet=True))
    assert [row["name"] for row in rows] == ["fast"] and len(rows[0]["pair_kinds"]["cross-age"]["fold_accuracies"]) == 2
    local, on_ray = (json.loads((tmp_path / side / "benchmark.json").read_text(encoding="utf-8"))
                     for side in ("local", "ray"))
    # Every figure the same; floats to 1e-9 (a worker's thread count may move a sum's last bit).
    assert on_ray == _approx(local)
    assert (tmp_path / "ray" / "benchmark.md").read_text() == (tmp_path / "local" / "benchmark.md").read_text()
    for fold in range(2):  # each task trained its fold where the local run does
        assert (tmp_path / "ray" / "runs" / "fast" / f"fold{fold}" / "done").is_file()


def _approx(value):
    if isinstance(value, dict):
        return {key: _approx(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_approx(item) for item in value]
    return pytest.approx(value, rel=1e-9, abs=1e-12) if isinstance(value, float) else value


def test_an_unreachable_ray_address_is_one_error_line(tiny, tmp_path):
    root, manifest, recipe = tiny
    result = kface("benchmark", "families", "--dataset", "csv", "--root", root, "--manifest", manifest, "--folds", "2",
                   "--recipe", recipe, "--out", tmp_path / "out", "--ray", "127.0.0.1:9", timeout=60)
    assert_one_error(result, 2, "--ray 127.0.0.1:9")
    assert not (tmp_path / "out" / "benchmark.json").exists()


def test_a_bad_recipe_inside_a_ray_task_is_the_error_itself(tiny, ray_address, tmp_path):
    from kface import toolkit
    from kface.errors import InputError
    from kface.scale.families import ray_fold_runner

    root, manifest, _ = tiny
    recipe = tmp_path / "bad.json"
    recipe.write_text(json.dumps({**FAST_RECIPE, "epochs": 0}), encoding="utf-8")
    with pytest.raises(InputError, match="epochs"):
        toolkit.benchmark_families("csv", root, layout_options={"manifest": str(manifest)}, out=tmp_path / "out",
                                   folds=2, pairs_per_class=10, recipes=[str(recipe)], device="cpu",
                                   fold_runner=ray_fold_runner(ray_address, quiet=True))
    assert not (tmp_path / "out" / "benchmark.json").exists()
