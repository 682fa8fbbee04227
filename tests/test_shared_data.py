"""Where ../shared (the real faces) is missing, the tests that read it skip with the reason; under CI
(``CI=true``) they fail instead, so a CI run without the data cannot pass by skipping them."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

PROBE = "tests/test_datasets.py::test_folder_indexes_every_image_under_its_identity_and_reports_strays"


def run_probe(tmp_path, ci: bool) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env.update({"KFACE_TEST_SHARED": str(tmp_path / "no-shared"), **({"CI": "true"} if ci else {})})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", PROBE],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_missing_shared_data_skips_with_its_reason_and_fails_under_ci(tmp_path):
    skipped = run_probe(tmp_path, ci=False)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout
    assert "no-shared" in skipped.stdout and "is missing" in skipped.stdout
    failed = run_probe(tmp_path, ci=True)
    assert failed.returncode == 1 and "1 failed" in failed.stdout, failed.stdout
    assert "under CI (CI=true)" in failed.stdout
